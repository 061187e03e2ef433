"""Which settings a saved run and the one asked for disagree on: one wording for every resume check.

No torch here: the evaluation checks its settings before any model is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def changed_settings(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """`name: saved -> wanted` for every name whose values differ (a missing one reads None), sorted."""
    return sorted(
        f"{name}: {saved.get(name)!r} -> {wanted.get(name)!r}"
        for name in saved.keys() | wanted.keys()
        if saved.get(name) != wanted.get(name)
    )

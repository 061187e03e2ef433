"""Writes requirements.txt into pyproject.toml's static [project].dependencies.

requirements.txt is the one source of the node pack's runtime dependencies (ComfyUI-Manager
installs it); the Comfy Registry reads only a static dependency list in pyproject.toml
(`comfy node publish` sends it). Run this after every edit of requirements.txt; the unit
test tests/unit/test_registry_metadata.py fails until you do.

    .venv/bin/python scripts/sync_pyproject.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from m2chat_core.atomic_files import atomic_path  # noqa: E402 - the one atomic writer

# comfy-cli's and pip's comment rule: `#` starts a comment at a line start or after blanks.
INLINE_COMMENT = re.compile(r"(^|\s+)#.*$")
DEPENDENCIES_BLOCK = re.compile(r"^dependencies = \[.*?^\]\n", re.MULTILINE | re.DOTALL)


class RequirementsError(ValueError):
    """A requirements.txt line that pyproject.toml's dependency list cannot hold."""


def requirement_lines(requirements: Path) -> list[str]:
    """The requirement specifiers of a requirements file, comments and blanks left out."""
    lines = []
    for number, raw in enumerate(requirements.read_text(encoding="utf-8").splitlines(), 1):
        line = INLINE_COMMENT.sub("", raw).strip()
        if not line:
            continue
        if line.startswith("-"):
            raise RequirementsError(
                f"{requirements.name}:{number}: pip option {line!r} has no place in pyproject.toml's "
                "[project].dependencies; keep requirements.txt to plain requirement specifiers "
                "(put pip options on the pip command line instead).")
        lines.append(line)
    return lines


def dependencies_block(requirements: list[str]) -> str:
    body = "".join(f"    {json.dumps(requirement)},\n" for requirement in requirements)  # a TOML string
    return f"dependencies = [\n{body}]\n"


def synced_pyproject(pyproject_text: str, requirements: list[str]) -> str:
    """pyproject.toml's text with its dependency list replaced by `requirements`."""
    if not DEPENDENCIES_BLOCK.search(pyproject_text):
        raise RequirementsError("pyproject.toml has no multi-line `dependencies = [` ... `]` block in "
                                "[project] to write into; add an empty one and run this again.")
    return DEPENDENCIES_BLOCK.sub(lambda _match: dependencies_block(requirements), pyproject_text, count=1)


def sync(root: Path = REPO) -> bool:
    """Rewrites root/pyproject.toml from root/requirements.txt; True when it changed."""
    pyproject = root / "pyproject.toml"
    old = pyproject.read_text(encoding="utf-8")
    new = synced_pyproject(old, requirement_lines(root / "requirements.txt"))
    if new != old:
        with atomic_path(pyproject) as temporary:
            temporary.write_text(new, encoding="utf-8")
    return new != old


def main() -> int:
    try:
        changed = sync()
    except RequirementsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("pyproject.toml: dependencies " + ("updated from requirements.txt" if changed else "already match"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a run keeps what it generated, so that a rerun skips it:

    <output_dir>/settings.json               what shaped the generations (a resume must match)
    <output_dir>/images/<system>/<item>.png  one image per item that drew one
    <output_dir>/texts/<system>.jsonl        what the VLM said per item (VLM systems)

No torch here: the settings are checked before any model is imported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from m2chat_core.atomic_files import atomic_path

from ..settings_changes import changed_settings
from .config import EvaluateConfig

SETTINGS_FILE = "settings.json"


class OutputDirError(ValueError):
    """The output folder holds generations made with other settings."""


@dataclass(frozen=True)
class TextRecord:
    """What a VLM system said for one item (answer y_res, caption ŷ_cap)."""

    item_id: str
    answer: str
    caption: str
    draws_image: bool


def generation_settings(config: EvaluateConfig) -> dict[str, Any]:
    """Everything that changes what is generated (not batch size, systems or sample count)."""
    models, data, generation = config.models, config.data, config.generation
    return {
        "models": {"vlm": models.vlm, "adapter": models.adapter, "sdxl": models.sdxl, "dtype": models.dtype},
        "data": {"kind": data.kind, "path": data.path, "image_root": data.image_root},
        "generation": {
            name: getattr(generation, name)
            for name in ("resolution", "steps", "cfg", "seed", "max_new_tokens", "draw_mode", "gate_mode")
        },
    }


class GenerationStore:
    """The generated images and texts of a run, on disk."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Record `settings` in a new folder; in a used one, refuse different ones."""
        path = self.output_dir / SETTINGS_FILE
        if path.is_file():
            changed = changed_settings(_flat(json.loads(path.read_text())), _flat(settings))
            if changed:
                raise OutputDirError(
                    f"{self.output_dir} holds generations made with other settings ({'; '.join(changed)}). "
                    "Choose another output_dir, or delete that folder to start over."
                )
            return
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(settings, indent=2, sort_keys=True))

    def image_path(self, system: str, item_id: str) -> Path:
        return self.output_dir / "images" / system / f"{item_id}.png"

    def _texts_path(self, system: str) -> Path:
        return self.output_dir / "texts" / f"{system}.jsonl"

    def read_texts(self, system: str) -> dict[str, TextRecord]:
        """The stored texts of `system` by item id (a later line replaces an earlier one)."""
        path = self._texts_path(system)
        if not path.is_file():
            return {}
        records = [TextRecord(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
        return {record.item_id: record for record in records}

    def add_text(self, system: str, record: TextRecord) -> None:
        path = self._texts_path(system)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as file:
            file.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")

    def save_image(self, system: str, item_id: str, png: bytes) -> None:
        path = self.image_path(system, item_id)
        with atomic_path(path) as temporary:  # a killed run leaves no half image a resume would keep
            temporary.write_bytes(png)


def _flat(settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`section.name` -> value."""
    return {f"{section}.{name}": value for section, values in settings.items() for name, value in values.items()}

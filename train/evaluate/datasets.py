"""Evaluation sets, read and checked before any model loads. Three layouts:

coco      COCO captions JSON (captions_val2014.json): {"annotations": [{"image_id": 1,
          "caption": "..."}, ...], "images": [{"id": 1, "file_name": "x.jpg"}, ...]};
          "images" and the files are optional, needed only for FID.
cc3m      caption and image path per row: a .tsv ("caption<TAB>path", optional header
          "caption<TAB>image") or a .jsonl ({"caption": "...", "image": "path"}).
mmdialog  one dialogue per JSONL line, the stage-2 layout (train/data/dialogue.py) with
          an optional reference image per turn: {"task": "multimodal_dialogue", "turns":
          [{"user_text": "...", "images": ["in.jpg"], "answer": "...", "caption": "...",
          "target_image": "out.jpg" or null}, ...]}; a record-level "target_image" is the
          last turn's, so a stage-2 file is an evaluation set as it is.

Image paths are relative to data.image_root (default: the set file's folder). Every turn
of a dialogue is one generation, after the reference turns before it (the usual
teacher-forced context of dialogue evaluation).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2chat_core.tasks import TASKS

from .config import DataConfig

logger = logging.getLogger(__name__)

LAYOUTS = {
    "coco": 'a COCO captions JSON object: {"annotations": [{"image_id": 1, "caption": "..."}, ...], '
    'optionally "images": [{"id": 1, "file_name": "x.jpg"}, ...]}',
    "cc3m": 'a .tsv with "caption<TAB>image path" rows (optional header "caption<TAB>image") '
    'or a .jsonl with {"caption": "...", "image": "path"} per line',
    "mmdialog": 'a .jsonl with one dialogue per line: {"task": "multimodal_dialogue", "turns": [{"user_text": "...", '
    '"images": ["in.jpg"], "answer": "...", "caption": "...", "target_image": "out.jpg" or null}, ...]}',
}
CAPTION_TASK = "text_to_image"
DIALOGUE_TASK = "multimodal_dialogue"


class EvaluationSetError(ValueError):
    """The evaluation set is missing, in another layout, or names missing images."""


@dataclass(frozen=True)
class ReferenceTurn:
    """A turn as the set gives it: what the user says and shows, and the reference
    answer, caption and image (R_T, ŷ_cap, R_V)."""

    user_text: str
    user_images: tuple[Path, ...] = ()
    answer: str = ""
    caption: str = ""
    image: Path | None = None


@dataclass(frozen=True)
class EvaluationItem:
    """One generation: `turn` after the reference turns in `history`. `number` (position in
    the set) seeds it, so results do not depend on batching or resuming."""

    item_id: str
    number: int
    dialogue: int
    task: str
    turn: ReferenceTurn
    history: tuple[ReferenceTurn, ...] = ()


@dataclass(frozen=True)
class EvaluationSet:
    kind: str
    path: Path
    items: tuple[EvaluationItem, ...]
    num_dialogues: int  # caption sets: one per caption

    @property
    def reference_images(self) -> list[Path]:
        """The distinct reference images, in item order (FID's real set)."""
        return list(dict.fromkeys(item.turn.image for item in self.items if item.turn.image is not None))


def load_evaluation_set(config: DataConfig) -> EvaluationSet:
    """Read and check the set `config` names; raises EvaluationSetError naming the path and
    the expected layout."""
    path = Path(config.path)
    image_root = Path(config.image_root) if config.image_root else path.parent
    reader = {"coco": _read_coco, "cc3m": _read_cc3m, "mmdialog": _read_mmdialog}[config.kind]
    try:
        items, num_dialogues = reader(path, image_root, config.num_samples)
    except _LayoutError as problem:
        raise EvaluationSetError(f"{path}: {problem}. Expected {LAYOUTS[config.kind]}.") from None
    except UnicodeDecodeError:
        raise EvaluationSetError(f"{path} is not UTF-8 text. Expected {LAYOUTS[config.kind]}.") from None
    if not items:
        raise EvaluationSetError(f"{path} holds no samples. Expected {LAYOUTS[config.kind]}.")
    evaluation_set = EvaluationSet(config.kind, path, tuple(items), num_dialogues)
    logger.info(
        "Evaluation set %s (%s): %d generations in %d %s, %d reference images",
        path, config.kind, len(items), num_dialogues, "dialogues" if config.kind == "mmdialog" else "samples",
        len(evaluation_set.reference_images),
    )
    return evaluation_set


class _LayoutError(Exception):
    """What is wrong with the file; the caller adds the path and the expected layout."""


def _image(image_root: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise _LayoutError(f"{where} must be an image path, got {value!r}")
    image = image_root / value
    if not image.is_file():
        raise _LayoutError(f"{where} names {image}, which does not exist (image paths start at {image_root})")
    return image


def _caption_item(number: int, caption: str, image: Path | None) -> EvaluationItem:
    turn = ReferenceTurn(user_text=caption, caption=caption, image=image)
    return EvaluationItem(f"{number:06d}", number, number, CAPTION_TASK, turn)


def _read_coco(path: Path, image_root: Path, limit: int) -> tuple[list[EvaluationItem], int]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise _LayoutError(f"not JSON ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("annotations"), list):
        raise _LayoutError('no "annotations" list')
    annotations = payload["annotations"][:limit] if limit else payload["annotations"]
    files = {}
    for entry in payload.get("images", []):
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            raise _LayoutError(f'an "images" entry is not {{"id": ..., "file_name": "..."}}: {entry!r}')
        files[entry["id"]] = image_root / entry["file_name"]
    captions = []
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            raise _LayoutError(f"annotation {index} has no image_id: {annotation!r}")
        if not isinstance(annotation.get("caption"), str) or not annotation["caption"].strip():
            raise _LayoutError(f"annotation {index} has no caption text: {annotation!r}")
        captions.append((annotation["caption"].strip(), files.get(annotation["image_id"])))
    found = [image is not None and image.is_file() for _, image in captions]
    if any(found) and not all(found):
        absent = next(image for (_, image), exists in zip(captions, found) if not exists)
        raise _LayoutError(
            f"{found.count(False)} of the {len(captions)} captions have no image file (e.g. {absent}); "
            "give all images under data.image_root for FID, or none"
        )
    with_images = all(found)
    if not with_images:
        logger.info("No COCO images found under %s: FID is skipped, CLIP is scored.", image_root)
    items = [
        _caption_item(number, caption, image if with_images else None)
        for number, (caption, image) in enumerate(captions)
    ]
    return items, len(items)


def _read_cc3m(path: Path, image_root: Path, limit: int) -> tuple[list[EvaluationItem], int]:
    if path.suffix == ".jsonl":
        rows = []
        for line_number, line in _jsonl_lines(path, limit):
            if not isinstance(line, dict):
                raise _LayoutError(f"line {line_number} is not an object")
            rows.append((line_number, line.get("caption"), line.get("image")))
    elif path.suffix == ".tsv":
        with open(path, encoding="utf-8", newline="") as file:
            reader = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
            lines = [(line_number, row) for line_number, row in enumerate(reader, start=1) if row]
        if lines and [cell.strip().lower() for cell in lines[0][1]] == ["caption", "image"]:
            lines = lines[1:]
        lines = lines[:limit] if limit else lines
        rows = [(line_number, *(row if len(row) == 2 else (None, None))) for line_number, row in lines]
    else:
        raise _LayoutError(f"unknown suffix {path.suffix!r}")
    items = []
    for number, (line_number, caption, image) in enumerate(rows):
        if not isinstance(caption, str) or not caption.strip():
            raise _LayoutError(f"row {line_number} is not a caption and an image path")
        items.append(_caption_item(number, caption.strip(), _image(image_root, image, f"row {line_number}'s image")))
    return items, len(items)


def _jsonl_lines(path: Path, limit: int) -> list[tuple[int, Any]]:
    lines = []
    with open(path, encoding="utf-8") as file:
        for line_number, text in enumerate(file, start=1):
            if not text.strip():
                continue
            try:
                lines.append((line_number, json.loads(text)))
            except json.JSONDecodeError as error:
                raise _LayoutError(f"line {line_number} is not JSON ({error})") from None
            if limit and len(lines) == limit:
                break
    return lines


def _read_mmdialog(path: Path, image_root: Path, limit: int) -> tuple[list[EvaluationItem], int]:
    if path.suffix != ".jsonl":
        raise _LayoutError(f"unknown suffix {path.suffix!r}")
    items: list[EvaluationItem] = []
    lines = _jsonl_lines(path, limit)
    for dialogue, (line_number, record) in enumerate(lines):
        if not isinstance(record, dict) or not isinstance(record.get("turns"), list) or not record["turns"]:
            raise _LayoutError(f'line {line_number} has no "turns" list')
        task = record.get("task", DIALOGUE_TASK)
        if task not in TASKS:
            raise _LayoutError(f"line {line_number} has task {task!r}, not one of {sorted(TASKS)}")
        turns = [
            _dialogue_turn(turn, image_root, f"line {line_number}, turn {index}")
            for index, turn in enumerate(record["turns"])
        ]
        if record.get("target_image") is not None:
            last = turns[-1]
            last_image = _image(image_root, record["target_image"], f"line {line_number}'s target_image")
            turns[-1] = ReferenceTurn(last.user_text, last.user_images, last.answer, last.caption, last_image)
        for index, turn in enumerate(turns):
            number = len(items)
            item_id = f"{dialogue:06d}-{index:02d}"
            items.append(EvaluationItem(item_id, number, dialogue, task, turn, history=tuple(turns[:index])))
    return items, len(lines)


def _dialogue_turn(turn: Any, image_root: Path, where: str) -> ReferenceTurn:
    if not isinstance(turn, dict):
        raise _LayoutError(f"{where} is not an object")
    texts = {name: turn.get(name, "") for name in ("user_text", "answer", "caption")}
    for name, value in texts.items():
        if not isinstance(value, str):
            raise _LayoutError(f"{where}: {name} must be a string, got {value!r}")
    images = turn.get("images", [])
    if not isinstance(images, list):
        raise _LayoutError(f"{where}: images must be a list of paths, got {images!r}")
    user_images = tuple(_image(image_root, image, f"{where}'s images") for image in images)
    if not texts["user_text"].strip() and not user_images:
        raise _LayoutError(f"{where} has neither user_text nor images")
    target = turn.get("target_image")
    image = None if target is None else _image(image_root, target, f"{where}'s target_image")
    return ReferenceTurn(
        texts["user_text"].strip(), user_images, texts["answer"].strip(), texts["caption"].strip(), image
    )

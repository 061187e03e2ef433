"""Stage-2 instruction and dialogue data: JSONL, one training example per line.

    {"task": "multimodal_dialogue",            # a task of m2chat_core.tasks.TASKS
     "turns": [{"user_text": "...", "images": ["in.jpg"], "answer": "...", "caption": "..."},
               ...],                           # oldest first; the LAST turn is trained
     "target_image": "out.jpg"}                # the image the last turn's caption describes

Image paths are relative to the JSONL file (or absolute). Earlier turns are the dialogue
history ŷ of Eq. 1 (at most `max_history_turns` of them are kept).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from m2chat_core.session import ChatTurn, SessionFormatError, image_to_png

from .images import prepare_target_image
from .samples import DataFileSpan, SkippedSample, TrainingSample, sample_rng

logger = logging.getLogger(__name__)

DEFAULT_TASK = "multimodal_dialogue"


class _BadRecord(Exception):
    """A record that cannot be used; the message is the skip reason."""


def _line_offsets(path: Path) -> list[int]:
    """Byte offset of every non-blank line."""
    offsets, position = [], 0
    with open(path, "rb") as file:
        for line in file:
            if line.strip():
                offsets.append(position)
            position += len(line)
    return offsets


class DialogueRecords:
    """Map-style dataset over JSONL files; `load` returns a TrainingSample or a SkippedSample."""

    def __init__(
        self, jsonl_paths: list[Path], *, resolution: int, crop: str, seed: int, max_history_turns: int
    ) -> None:
        self.resolution, self.crop, self.seed = resolution, crop, seed
        self.max_history_turns = max_history_turns
        self.spans: list[DataFileSpan] = []
        self._lines: list[tuple[int, int]] = []  # (file number, byte offset)
        for file_number, path in enumerate(jsonl_paths):
            offsets = _line_offsets(path)
            self.spans.append(DataFileSpan(path=path, start=len(self._lines), count=len(offsets)))
            self._lines += [(file_number, offset) for offset in offsets]
        logger.info("Indexed %d records in %d JSONL files", len(self._lines), len(jsonl_paths))

    def __len__(self) -> int:
        return len(self._lines)

    def load(self, index: int, *, decode_target: bool) -> TrainingSample | SkippedSample:
        file_number, offset = self._lines[index]
        path = self.spans[file_number].path
        key = f"{path.name}/{index - self.spans[file_number].start}"
        try:
            with open(path, "rb") as file:
                file.seek(offset)
                record = json.loads(file.readline())
            return self._sample(key, record, path.parent, decode_target)
        except ValueError:
            return SkippedSample(key, "invalid JSON")
        except _BadRecord as reason:
            return SkippedSample(key, str(reason))

    def _sample(self, key: str, record: Any, folder: Path, decode_target: bool) -> TrainingSample:
        if not isinstance(record, dict) or not isinstance(record.get("turns"), list) or not record["turns"]:
            raise _BadRecord("no turns")
        task = record.get("task", DEFAULT_TASK)
        turns = [self._turn(turn, task, folder) for turn in record["turns"]]
        if not turns[-1].caption.strip():
            raise _BadRecord("missing caption")
        if not turns[-1].user_text.strip() and not turns[-1].images:
            raise _BadRecord("empty text")
        history = tuple(turns[:-1][-self.max_history_turns :]) if self.max_history_turns else ()
        sample = TrainingSample(key=key, turn=turns[-1], history=history)
        if not decode_target:
            return sample
        target_path = record.get("target_image")
        if not isinstance(target_path, str) or not target_path:
            raise _BadRecord("missing target image")
        with _open_image(folder / target_path) as image:
            target = prepare_target_image(image, self.resolution, self.crop, sample_rng(self.seed, key))
        return TrainingSample(key=key, turn=sample.turn, history=sample.history, target=target)

    def _turn(self, turn: Any, task: str, folder: Path) -> ChatTurn:
        if not isinstance(turn, dict):
            raise _BadRecord("a turn is not an object")
        images = turn.get("images", [])
        if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
            raise _BadRecord("a turn's images are not a list of paths")
        pngs = []
        for image_path in images:
            with _open_image(folder / image_path) as image:
                pngs.append(image_to_png(image))
        try:
            return ChatTurn(
                user_text=turn.get("user_text", ""),
                images=tuple(pngs),
                answer=turn.get("answer", ""),
                caption=turn.get("caption", ""),
                task=task,
            )
        except SessionFormatError as error:
            raise _BadRecord(f"invalid turn ({error})") from None


def _open_image(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise _BadRecord("missing image file") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise _BadRecord("unreadable image") from None
    return image

"""Convert the MMDialog release (Feng et al., 2022) into stage-2 JSONL (train/data/dialogue.py):

    python -m train.data.mmdialog conversations.json [...] --images DIR --out mmdialog.jsonl \\
        [--captions captions.jsonl] [--max-history-turns 4]

MMDialog dialogues are {"conversation": [{"turn": [{"__TEXT__": "..."}, {"__MEDIA__": "<key>"}, ...]}, ...]}
with images at DIR/<key>.jpg; input files hold a JSON list of dialogues, one dialogue, or
one dialogue per line. The release has no image captions: give them with --captions
(a .json object {key: caption} or .jsonl lines {"media_key": ..., "caption": ...}) or as a
"caption" field next to "__MEDIA__".

Every turn after the first that shares an image becomes one record: the previous turn is
the user's (text and images), this turn's text is the answer, its first image the target
and that image's caption the caption; earlier turns, paired, are the history. The report
says how many dialogues were kept and why the others were dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2chat_core.atomic_files import atomic_path

logger = logging.getLogger(__name__)

TEXT, MEDIA = "__TEXT__", "__MEDIA__"


@dataclass(frozen=True)
class Turn:
    text: str
    media: tuple[str, ...]


@dataclass
class ConversionReport:
    dialogues: int = 0
    kept_dialogues: int = 0
    records: int = 0
    dropped_dialogues: Counter = field(default_factory=Counter)  # reason -> dialogues
    dropped_replies: Counter = field(default_factory=Counter)  # reason -> image replies not converted

    def summary(self) -> str:
        dropped = sum(self.dropped_dialogues.values())
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.dropped_dialogues.most_common()) or "none"
        replies = ", ".join(f"{reason}: {count}" for reason, count in self.dropped_replies.most_common()) or "none"
        return (
            f"kept {self.kept_dialogues} of {self.dialogues} dialogues ({self.records} records); "
            f"dropped {dropped} dialogues ({reasons}); image replies not converted: {replies}"
        )


class _Dropped(Exception):
    """A reply or dialogue that cannot be converted; the message is the reason."""


def read_dialogues(path: Path) -> Iterator[Any]:
    """Dialogues of a file: a JSON list, a single JSON object, or JSON lines."""
    text = path.read_text(encoding="utf-8")
    try:
        content = json.loads(text)
    except json.JSONDecodeError:
        for line in text.splitlines():
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    yield None
        return
    yield from content if isinstance(content, list) else [content]


def read_captions(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        return {str(entry["media_key"]): str(entry["caption"]) for entry in entries}
    return {str(key): str(value) for key, value in json.loads(text).items()}


def parse_turns(dialogue: Any, captions: dict[str, str]) -> list[Turn]:
    """The dialogue's turns; captions found next to media keys are added to `captions`."""
    if not isinstance(dialogue, Mapping) or not isinstance(dialogue.get("conversation"), list):
        raise _Dropped("malformed dialogue")
    turns = []
    for entry in dialogue["conversation"]:
        items = entry.get("turn") if isinstance(entry, Mapping) else None
        if not isinstance(items, list):
            raise _Dropped("malformed dialogue")
        texts = [str(item[TEXT]) for item in items if isinstance(item, Mapping) and TEXT in item]
        media = []
        for item in items:
            if isinstance(item, Mapping) and MEDIA in item:
                media.append(str(item[MEDIA]))
                if isinstance(item.get("caption"), str) and item["caption"].strip():
                    captions.setdefault(media[-1], item["caption"])
        turns.append(Turn(" ".join(text.strip() for text in texts).strip(), tuple(media)))
    return turns


class Converter:
    def __init__(self, images: Path, out: Path, captions: dict[str, str], max_history_turns: int) -> None:
        self.images, self.out, self.captions = images, out, captions
        self.max_history_turns = max_history_turns

    def image_path(self, key: str) -> str:
        path = self.images / f"{key}.jpg"
        if not path.is_file():
            raise _Dropped("image file missing")
        return os.path.relpath(path.resolve(), self.out.parent.resolve())

    def exchange(self, user: Turn, reply: Turn, *, need_caption: bool) -> dict[str, Any]:
        caption = self.captions.get(reply.media[0], "").strip() if reply.media else ""
        if need_caption and not caption:
            raise _Dropped("no caption for the reply's image")
        return {
            "user_text": user.text,
            "images": [self.image_path(key) for key in user.media],
            "answer": reply.text,
            "caption": caption,
        }

    def records(self, turns: list[Turn], report: ConversionReport) -> list[dict[str, Any]]:
        """One record per image reply; raises _Dropped with the first reason when none converts."""
        records, reasons = [], []
        for index in range(1, len(turns)):
            reply, user = turns[index], turns[index - 1]
            if not reply.media:
                continue
            try:
                if not user.text and not user.media:
                    raise _Dropped("empty user turn")
                history = [
                    self.exchange(turns[start], turns[start + 1], need_caption=False)
                    for start in range(index - 3, -1, -2)[: self.max_history_turns]
                ][::-1]
                last = self.exchange(user, reply, need_caption=True)
                records.append({"task": "multimodal_dialogue", "turns": [*history, last],
                                "target_image": self.image_path(reply.media[0])})
            except _Dropped as reason:
                reasons.append(str(reason))
                report.dropped_replies[str(reason)] += 1
        if not records:
            raise _Dropped(reasons[0] if reasons else "no image reply after the first turn")
        return records


def convert(
    inputs: list[Path], images: Path, out: Path, captions_file: Path | None = None, max_history_turns: int = 4
) -> ConversionReport:
    """Write the stage-2 JSONL to `out` (atomically) and return the report."""
    captions = read_captions(captions_file)
    converter = Converter(images, out, captions, max_history_turns)
    report = ConversionReport()
    with atomic_path(out) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            for path in inputs:
                for dialogue in read_dialogues(path):
                    report.dialogues += 1
                    try:
                        records = converter.records(parse_turns(dialogue, captions), report)
                    except _Dropped as reason:
                        report.dropped_dialogues[str(reason)] += 1
                        continue
                    report.kept_dialogues += 1
                    report.records += len(records)
                    file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.data.mmdialog", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="MMDialog conversation files")
    parser.add_argument("--images", type=Path, required=True, help="folder with <media_key>.jpg")
    parser.add_argument("--out", type=Path, required=True, help="stage-2 JSONL to write")
    parser.add_argument("--captions", type=Path, help="captions of the images: JSON {key: caption} or JSONL")
    parser.add_argument("--max-history-turns", type=int, default=4)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = convert(arguments.inputs, arguments.images, arguments.out, arguments.captions, arguments.max_history_turns)
    logger.info("%s: %s", arguments.out, report.summary())
    return 0 if report.records else 1


if __name__ == "__main__":
    sys.exit(main())

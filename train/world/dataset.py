"""Writes the world's data in the formats train/ reads, for the train, validation and test splits:

    <out>/<split>/shards/world-NNNNN.tar   stage 1: img2dataset layout (key.png, key.txt,
                                           key.json with the caption and the scene)
    <out>/<split>/text_to_image.jsonl      stage 2: a request in varied phrasing -> caption
    <out>/<split>/dialogue.jsonl           three-turn dialogues, one record per turn
    <out>/<split>/editing.jsonl            input image + instruction -> edited image
    <out>/<split>/stories.jsonl            4-panel stories, one record per panel
    <out>/<split>/images/                  the images the JSONL files name
    <out>/manifest.json                    the settings, held-out pairs and record counts

Every sample draws from its own random stream, fixed by (seed, split, kind, index), so
the same seed gives the same bytes. The train split never shows a held-out (colour,
shape) pair, nor does the validation split (other scenes of the same pairs, to choose
training settings on); every test sample's target shows one. The folder is written
beside the target and renamed into place when complete.
"""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from m2chat_core.atomic_files import atomic_path
from m2chat_core.prompt import panel_prompt

from . import language
from .config import DataConfig
from .render import png_bytes, render
from .scenes import Edit, Scene, apply_edit, edit_start, in_split, possible_edits, random_edit, random_scene
from .vocabulary import HELD_OUT_PAIRS, SCENE_SPLIT, SPLITS

logger = logging.getLogger(__name__)

DIALOGUE_TURNS = 3
STORY_PANELS = 4


@dataclass(frozen=True)
class SplitSizes:
    images: int  # stage-1 image-caption pairs (and as many text-to-image requests)
    dialogues: int
    edits: int
    stories: int


def sample_rng(seed: int, split: str, kind: str, index: int) -> random.Random:
    return random.Random(f"world:{seed}:{split}:{kind}:{index}")


def write_data(config: DataConfig) -> Path:
    """`python -m train.world data`: every split, validation and test each `test_fraction` of the train split's size."""
    train = SplitSizes(config.images, config.dialogues, config.edits, config.stories)
    held = SplitSizes(*(max(1, round(n * config.test_fraction)) for n in astuple(train)))
    return write_dataset(Path(config.out), config.seed, {"train": train, "validation": held, "test": held},
                         config.shard_size)


def write_dataset(out: Path, seed: int, sizes: dict[str, SplitSizes], shard_size: int) -> Path:
    """Write every split under `out` (replacing it); returns `out`."""
    with atomic_path(out) as staging:
        counts = {split: _write_split(staging / split, seed, split, sizes[split], shard_size) for split in SPLITS}
        manifest = {
            "seed": seed,
            "held_out_pairs": sorted(HELD_OUT_PAIRS),
            "sizes": {split: asdict(sizes[split]) for split in SPLITS},
            "records": counts,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("Wrote the shapes world's data to %s", out)
    return out


def _write_split(folder: Path, seed: int, split: str, sizes: SplitSizes, shard_size: int) -> dict[str, int]:
    (folder / "images").mkdir(parents=True)
    progress = tqdm(desc=f"world data ({split})", total=sizes.images * 2 + sizes.dialogues + sizes.edits + sizes.stories)
    writer, scenes = _ImageWriter(folder), SCENE_SPLIT[split]  # the random streams are the split's own
    _write_shards(folder / "shards", seed, split, sizes.images, shard_size, progress)
    counts = {
        "text_to_image": _write_jsonl(folder / "text_to_image.jsonl", progress, (
            _text_to_image(sample_rng(seed, split, "request", i), scenes, writer, i) for i in range(sizes.images))),
        "dialogue": _write_jsonl(folder / "dialogue.jsonl", progress, (
            _dialogue(sample_rng(seed, split, "dialogue", i), scenes, writer, i) for i in range(sizes.dialogues))),
        "editing": _write_jsonl(folder / "editing.jsonl", progress, (
            _editing(sample_rng(seed, split, "edit", i), scenes, writer, i) for i in range(sizes.edits))),
        "stories": _write_jsonl(folder / "stories.jsonl", progress, (
            _story(sample_rng(seed, split, "story", i), scenes, writer, i) for i in range(sizes.stories))),
    }
    progress.close()
    return {"shard_samples": sizes.images, **counts}


def _write_shards(folder: Path, seed: int, split: str, count: int, shard_size: int, progress: tqdm) -> None:
    folder.mkdir()
    for first in range(0, count, shard_size):
        with tarfile.open(folder / f"world-{first // shard_size:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(first, min(first + shard_size, count)):
                scene = random_scene(sample_rng(seed, split, "image", index), SCENE_SPLIT[split])
                text = language.caption(scene)
                key = f"{index:08d}"
                _add_member(tar, f"{key}.png", png_bytes(render(scene)))
                _add_member(tar, f"{key}.txt", text.encode())
                _add_member(tar, f"{key}.json", json.dumps({"caption": text, "scene": scene.to_dict()}).encode())
                progress.update()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # fixed metadata (mtime 0, root, 0644): same bytes every run
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_jsonl(path: Path, progress: tqdm, records_per_sample) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as file:
        for records in records_per_sample:
            for record in records:
                file.write(json.dumps(record) + "\n")
                count += 1
            progress.update()
    return count


class _ImageWriter:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, name: str, scene: Scene) -> str:
        relative = f"images/{name}.png"
        (self.folder / relative).write_bytes(png_bytes(render(scene)))
        return relative


def _turn(user_text: str, caption: str, answer: str = "", images: tuple[str, ...] = ()) -> dict:
    return {"user_text": user_text, "images": list(images), "answer": answer, "caption": caption}


def _record(task: str, turns: list[dict], target_image: str, scene: Scene) -> dict:
    return {"task": task, "turns": turns, "target_image": target_image, "target_scene": scene.to_dict()}


def _text_to_image(rng: random.Random, split: str, write_image, index: int) -> list[dict]:
    scene = random_scene(rng, split)
    image = write_image(f"request-{index:06d}", scene)
    return [_record("text_to_image", [_turn(language.request(rng, scene), language.caption(scene))], image, scene)]


def _dialogue(rng: random.Random, split: str, write_image, index: int) -> list[dict]:
    """Request -> answer <|IC|> caption, then follow-ups about "it" that need the context;
    each follow-up shows the previous picture. One record per turn whose picture is in
    the split (the record's last turn is the one trained; the earlier ones are history)."""
    scene = edit_start(rng, split, max_objects=1)
    turns, records, previous_image = [], [], None
    for turn_number in range(DIALOGUE_TURNS):
        if turn_number == 0:
            user_text, answer = language.request(rng, scene), language.answer(rng, scene)
        else:
            edit = random_edit(rng, scene, split)  # test: every follow-up keeps or makes a held-out pair
            scene = apply_edit(scene, edit)
            user_text, answer = language.edit_instruction(rng, edit), language.edit_answer(edit, scene)
        image = write_image(f"dialogue-{index:06d}-{turn_number + 1}", scene)
        images = (previous_image,) if previous_image else ()
        turns.append(_turn(user_text, language.caption(scene), answer, images))
        if in_split(scene, split):
            records.append(_record("multimodal_dialogue", list(turns), image, scene))
        previous_image = image
    return records


def _editing(rng: random.Random, split: str, write_image, index: int) -> list[dict]:
    source = edit_start(rng, split)
    edit = random_edit(rng, source, split)
    target = apply_edit(source, edit)
    source_image = write_image(f"edit-{index:06d}-source", source)
    target_image = write_image(f"edit-{index:06d}-target", target)
    turn = _turn(language.edit_instruction(rng, edit), language.caption(target), language.edit_answer(edit, target),
                 (source_image,))
    return [{**_record("image_editing", [turn], target_image, target), "source_scene": source.to_dict()}]


def _story(rng: random.Random, split: str, write_image, index: int) -> list[dict]:
    """One object changing or moving across 4 panels; one record per panel."""
    scene = random_scene(rng, split, max_objects=1)
    premise = language.story_premise(scene)
    turns, records, edit = [], [], None
    for panel in range(STORY_PANELS):
        if panel:
            edit = rng.choice(_story_edits(scene, split))
            scene = apply_edit(scene, edit)
        image = write_image(f"story-{index:06d}-{panel + 1}", scene)
        turns.append(_turn(panel_prompt(premise, panel, STORY_PANELS), language.caption(scene),
                           language.story_sentence(edit, scene)))
        records.append(_record("storytelling", list(turns), image, scene))
    return records


def _story_edits(scene: Scene, split: str) -> list[Edit]:
    return [e for e in possible_edits(scene) if e.kind in language.STORY_EDIT_KINDS
            and in_split(apply_edit(scene, e), split)]

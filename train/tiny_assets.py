"""Build everything the tiny training configs point to:

    python -m train.tiny_assets .artifacts/tiny-train [--seed 0]

writes `vlm/` (tiny LLaVA), `sdxl/` (tiny diffusers SDXL), stage-1 shards in img2dataset's
layout (`shards/train-*.tar` with three deliberately bad samples, `shards/heldout-*.tar`)
and stage-2 JSONL (`dialogue/train.jsonl`, `dialogue/validation.jsonl`, images beside).
Captions are short template sentences, images flat colours with a shape, all seeded.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import sys
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

from m2chat_core.tiny.vlm import build_tiny_vlm

from .tiny_sdxl import build_tiny_sdxl_diffusers

logger = logging.getLogger(__name__)

COLOURS = {"red": (200, 40, 40), "blue": (40, 60, 200), "green": (40, 160, 60), "yellow": (220, 200, 40),
           "purple": (130, 50, 160), "orange": (230, 130, 30), "white": (235, 235, 235), "black": (20, 20, 20)}
ANIMALS = ("cat", "dog", "fox", "owl", "horse", "duck", "bear", "whale", "tiger", "rabbit")
PLACES = ("forest", "garden", "beach", "city", "river", "castle", "kitchen", "meadow")
TRAIN_PAIRS_PER_SHARD, TRAIN_SHARDS, HELDOUT_PAIRS = 24, 2, 16
BAD_SAMPLES = ("unreadable image", "missing caption", "empty caption")


def caption(rng: random.Random) -> str:
    return f"a {rng.choice(list(COLOURS))} {rng.choice(ANIMALS)} in the {rng.choice(PLACES)}"


def draw(text: str, rng: random.Random) -> Image.Image:
    """A flat image in the caption's colour with a random ellipse, of a random size."""
    colour = next((value for name, value in COLOURS.items() if f" {name} " in f" {text} "), (128, 128, 128))
    size = (rng.choice((64, 80, 96)), rng.choice((64, 72, 96)))
    image = Image.new("RGB", size, colour)
    left, top = rng.randint(0, size[0] // 2), rng.randint(0, size[1] // 2)
    ImageDraw.Draw(image).ellipse((left, top, left + size[0] // 3, top + size[1] // 3), fill=(255 - colour[0], 90, 255 - colour[2]))
    return image


def captioned_pictures(rng: random.Random, count: int) -> list[tuple[str, Image.Image]]:
    """`count` (caption, picture) pairs for stage-1 shards."""
    return [(text, draw(text, rng)) for text in (caption(rng) for _ in range(count))]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    archive.addfile(info, io.BytesIO(data))


def write_shard(path: Path, pairs: list[tuple[str, Image.Image]], bad: tuple[str, ...] = ()) -> None:
    """img2dataset layout: <key>.png, <key>.txt, <key>.json per sample; `bad` appends broken samples."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for index, (text, image) in enumerate(pairs):
            key = f"{index:09d}"
            _add(archive, f"{key}.png", _png(image))
            _add(archive, f"{key}.txt", text.encode())
            _add(archive, f"{key}.json", json.dumps({"key": key, "caption": text, "width": image.width, "height": image.height}).encode())
        for offset, reason in enumerate(bad):
            key = f"{len(pairs) + offset:09d}"
            good_png = _png(Image.new("RGB", (64, 64)))
            if reason == "unreadable image":
                _add(archive, f"{key}.jpg", b"\xff\xd8 this is not a jpeg")
                _add(archive, f"{key}.txt", b"a broken picture")
            elif reason == "missing caption":
                _add(archive, f"{key}.png", good_png)
            else:
                _add(archive, f"{key}.png", good_png)
                _add(archive, f"{key}.txt", b"   ")


def write_dialogue(folder: Path, name: str, count: int, rng: random.Random) -> Path:
    """Stage-2 JSONL mixing text-to-image, image-editing and dialogue records."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)

    def image_file(text: str) -> str:
        path = images / f"{name}-{len(list(images.iterdir())):04d}.png"
        draw(text, rng).save(path)
        return str(path.relative_to(folder))

    lines = []
    for index in range(count):
        before, after = caption(rng), caption(rng)
        kind = index % 3
        if kind == 0:
            record = {"task": "text_to_image", "turns": [{"user_text": f"Draw {after}", "caption": after}]}
        elif kind == 1:
            colour = after.split()[1]
            record = {"task": "image_editing", "turns": [{
                "user_text": f"Make it {colour}", "images": [image_file(before)],
                "answer": f"I made it {colour}.", "caption": after}]}
        else:
            record = {"task": "multimodal_dialogue", "turns": [
                {"user_text": "Look at my pet", "images": [image_file(before)], "answer": "What a lovely animal!", "caption": before},
                {"user_text": "Show me another one", "answer": f"Here is {after}.", "caption": after}]}
        record["target_image"] = image_file(after)
        lines.append(json.dumps(record))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_tiny_assets(out_dir: str | Path, *, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    build_tiny_vlm(out_dir / "vlm", seed=seed)
    build_tiny_sdxl_diffusers(out_dir / "sdxl", seed=seed)
    shards = out_dir / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for number in range(TRAIN_SHARDS):
        write_shard(shards / f"train-{number:06d}.tar", captioned_pictures(rng, TRAIN_PAIRS_PER_SHARD),
                    BAD_SAMPLES if number == 0 else ())
    write_shard(shards / "heldout-000000.tar", captioned_pictures(rng, HELDOUT_PAIRS))
    write_dialogue(out_dir / "dialogue", "train", 12, rng)
    write_dialogue(out_dir / "dialogue", "validation", 6, rng)
    logger.info("Built the tiny training assets in %s", out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.tiny_assets", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write (e.g. .artifacts/tiny-train)")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_tiny_assets(arguments.out_dir, seed=arguments.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

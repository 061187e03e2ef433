"""Where the world UNet's objects go wrong: each object of fresh scenes drawn from their
canonical captions by the UNet training loop's sampler (train/world/unet_training.py: DDIM,
classifier-free guidance against the empty caption) and, as the ceiling any UNet on these
latents has, the scenes' own pictures through the VAE (encode, decode); every picture read
by the judge. Colour, shape and both right, per kind of object: the object of a one-object
scene, the first and the second object of a two-object scene (in the test split the first
object is a held-out (colour, shape) pair and the second a seen one; in the validation
split both are seen pairs); "per case" is bench_world.py's colour_and_shape (each scene's
share of objects right, averaged). train/world/RESULTS.md ("Where the objects go wrong")
is this script's output.

    .venv/bin/python bench/bench_world_objects.py [--scenes 128] [--guidance 5 ...] [--steps 20]
        [--weights DIR]   (the world's models in the shipped layout; default: the shipped ones)
        [--caption-order reversed]   (two-object scenes drawn from captions that name their
                                      second object first; each object keeps its kind)
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2chat_core.cpu_units import CPU_HAS_BF16_UNITS  # noqa: E402
from train.world.judge import Judge, compare, read_scenes, to_tensor  # noqa: E402
from train.world.layout import SHIPPED, WeightsLayout  # noqa: E402
from train.world.render import render  # noqa: E402
from train.world.scenes import Scene, random_scene  # noqa: E402
from train.world.sdxl import GUIDANCE, SAMPLER_STEPS, build_text_encoders, load_unet  # noqa: E402
from train.world.taesd import load_taesd  # noqa: E402
from train.world.training import load_judge  # noqa: E402
from train.world.unet_training import DdimSampler  # noqa: E402


KINDS = ("one object", "two objects: first", "two objects: second")
CAPTION_ORDERS = ("scene", "reversed")
SPLITS = {"test": "test", "validation": "train"}  # the table's split -> the scenes' pairs (random_scene's split)
BATCH = 32


def scenes_of(split: str, count: int) -> list[Scene]:
    rng = random.Random(f"bench-world-objects:{split}")
    return [random_scene(rng, SPLITS[split]) for _ in range(count)]


def captioned_as(scene: Scene, order: str) -> Scene:
    """The scene whose canonical caption the sampler draws from: the same objects, named in
    the scene's order or the reverse (the picture is the same either way: each object has its
    own cell)."""
    return replace(scene, objects=scene.objects[::-1]) if order == "reversed" else scene


def object_accuracy(judge: Judge, images: torch.Tensor, scenes: list[Scene]) -> dict[str, dict[str, float]]:
    """Per kind of object: the share drawn in the right colour, the right shape, and both, in
    its own cell; and "per case": the judge's colour_and_shape of each scene, averaged."""
    counts = {kind: {"objects": 0, "colour": 0, "shape": 0, "both": 0} for kind in KINDS}
    per_case = []
    for seen, truth in zip(read_scenes(judge, images), scenes, strict=True):
        drawn = {o.cell: o for o in seen.objects}
        for index, wanted in enumerate(truth.objects):
            kind = KINDS[0] if len(truth.objects) == 1 else KINDS[1 + index]
            got = drawn.get(wanted.cell)
            colour = got is not None and got.colour == wanted.colour
            shape = got is not None and got.shape == wanted.shape
            count = counts[kind]
            count["objects"] += 1
            count["colour"] += colour
            count["shape"] += shape
            count["both"] += colour and shape
        per_case.append(compare(seen, truth)["colour_and_shape"])
    figures = {kind: {name: value / count["objects"] for name, value in count.items() if name != "objects"}
               for kind, count in counts.items() if count["objects"]}
    return {**figures, "per case": {"both": sum(per_case) / len(per_case)}}


def table_row(split: str, source: str, figures: dict[str, dict[str, float]]) -> str:
    cells = [" / ".join(f"{figures[kind][name]:.3f}" for name in ("colour", "shape", "both")) if kind in figures
             else "–" for kind in KINDS]
    return f"| {split} | {source} | " + " | ".join(cells) + f" | {figures['per case']['both']:.3f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=128, help="scenes per split")
    parser.add_argument("--guidance", type=float, nargs="+", default=[GUIDANCE],
                        help="classifier-free guidance scales to draw at (default: the tables' protocol's)")
    parser.add_argument("--steps", type=int, default=SAMPLER_STEPS, help="DDIM steps per picture")
    parser.add_argument("--weights", type=Path, default=SHIPPED.root,
                        help="the world's models, in the shipped layout (default: the shipped ones)")
    parser.add_argument("--caption-order", choices=CAPTION_ORDERS, default="scene",
                        help="reversed: each two-object scene's caption names its second object first (the "
                             "objects keep their kinds), to tell where in the sentence an object is from which "
                             "object it is")
    options = parser.parse_args(argv)
    if options.scenes < 1 or options.steps < 1 or min(options.guidance) <= 0:
        parser.error("--scenes and --steps must be at least 1 and --guidance above 0.")
    world = WeightsLayout(options.weights)
    judge, vae = load_judge(world.judge), load_taesd(world.vae).eval()
    sampler = DdimSampler(load_unet(world.unet), build_text_encoders(), vae, CPU_HAS_BF16_UNITS)
    print(f"{options.scenes} scenes per split; each kind: colour / shape / both right\n")
    print("| split | pictures | " + " | ".join(KINDS) + " | per case |")
    print("|---" * (len(KINDS) + 3) + "|")
    for split in SPLITS:
        scenes = scenes_of(split, options.scenes)
        with torch.no_grad():
            round_trip = vae.decoder(vae.encoder(to_tensor([render(scene) for scene in scenes]))).float().clamp(0, 1)
        print(table_row(split, "VAE round trip", object_accuracy(judge, round_trip, scenes)), flush=True)
        captioned = [captioned_as(scene, options.caption_order) for scene in scenes]
        reversed_note = ", caption reversed" if options.caption_order == "reversed" else ""
        for guidance in options.guidance:
            drawn = torch.cat([sampler(captioned[first:first + BATCH], options.steps, guidance, seed=first)
                               for first in range(0, len(scenes), BATCH)])
            source = f"UNet, guidance {guidance:g}{reversed_note}"
            print(table_row(split, source, object_accuracy(judge, drawn, scenes)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

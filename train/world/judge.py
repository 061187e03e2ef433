"""The judge: a small CNN that reads a scene back from an image, so generated pictures
can be scored without a person. For each of the 9 grid cells it predicts the shape (or
"empty"), the colour and the size of the object there; for the image, the background."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .render import render
from .scenes import ANY, Scene, WorldObject, random_scene
from .vocabulary import BACKGROUNDS, COLOURS, GRID, SHAPES, SIZES

CELL_CLASSES = ("empty", *SHAPES)
_COLOUR_NAMES, _SIZE_NAMES, _BACKGROUND_NAMES = list(COLOURS), list(SIZES), list(BACKGROUNDS)
_HEAD_WIDTHS = (len(CELL_CLASSES), len(COLOURS), len(SIZES))
CELL_LOGITS = sum(_HEAD_WIDTHS)  # per cell: shape or empty, colour, size
ATTRIBUTES = ("position", "shape", "colour", "size", "background")
SCORES = (*ATTRIBUTES, "colour_and_shape")  # colour_and_shape: both right on the same object


class Judge(nn.Module):
    """(B, 3, H, W) in [0, 1] -> per-cell logits (B, 9, 6+8+2) and background logits (B, 3)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        def block(n_in: int, n_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(n_in, n_out, 3, stride, 1), nn.GroupNorm(8, n_out), nn.SiLU())
        self.features = nn.Sequential(  # 128² -> 64² -> 8² features, a receptive field of ~110 px
            nn.AvgPool2d(2), block(3, width // 2, 2), block(width // 2, width, 2), block(width, width, 1),
            block(width, 2 * width, 2), block(2 * width, 2 * width, 1), block(2 * width, 2 * width, 1),
        )
        self.cells = nn.Sequential(nn.AdaptiveAvgPool2d(GRID), nn.Conv2d(2 * width, CELL_LOGITS, 1))
        self.cell_bias = nn.Parameter(torch.zeros(CELL_LOGITS, GRID, GRID))  # per-position offset
        self.background = nn.Linear(2 * width, len(BACKGROUNDS))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(images * 2 - 1)
        cells = (self.cells(features) + self.cell_bias).flatten(2).transpose(1, 2)
        return cells, self.background(features.mean(dim=(2, 3)))


@dataclass(frozen=True)
class SceneLabels:
    """Targets of a batch: cell class (B, 9), colour and size (B, 9; -100 where empty), background (B,)."""

    cell: torch.Tensor
    colour: torch.Tensor
    size: torch.Tensor
    background: torch.Tensor


def scene_labels(scenes: list[Scene]) -> SceneLabels:
    cell = torch.zeros(len(scenes), GRID * GRID, dtype=torch.long)
    colour = torch.full_like(cell, -100)
    size = torch.full_like(cell, -100)
    for row, scene in enumerate(scenes):
        for obj in scene.objects:
            index = obj.row * GRID + obj.column
            cell[row, index] = CELL_CLASSES.index(obj.shape)
            colour[row, index] = _COLOUR_NAMES.index(obj.colour)
            size[row, index] = _SIZE_NAMES.index(obj.size)
    background = torch.tensor([_BACKGROUND_NAMES.index(scene.background) for scene in scenes])
    return SceneLabels(cell, colour, size, background)


def judge_loss(judge: Judge, images: torch.Tensor, labels: SceneLabels) -> torch.Tensor:
    return scene_loss(*judge(images), labels)


def scene_loss(cells: torch.Tensor, background: torch.Tensor, labels: SceneLabels) -> torch.Tensor:
    """Cross-entropy of per-cell logits (B, 9, CELL_LOGITS) and background logits (B, 3)."""
    shape_logits, colour_logits, size_logits = cells.float().split(_HEAD_WIDTHS, dim=-1)
    return (F.cross_entropy(shape_logits.flatten(0, 1), labels.cell.flatten())
            + F.cross_entropy(colour_logits.flatten(0, 1), labels.colour.flatten(), ignore_index=-100)
            + F.cross_entropy(size_logits.flatten(0, 1), labels.size.flatten(), ignore_index=-100)
            + F.cross_entropy(background.float(), labels.background))


@torch.no_grad()
def read_scenes(judge: Judge, images: torch.Tensor) -> list[Scene]:
    """What the judge sees in each image (object offsets are not read: (0, 0))."""
    return scenes_from_logits(*judge(images))


def scenes_from_logits(cells: torch.Tensor, background: torch.Tensor) -> list[Scene]:
    shape_logits, colour_logits, size_logits = cells.float().split(_HEAD_WIDTHS, dim=-1)
    shapes, colours, sizes = shape_logits.argmax(-1), colour_logits.argmax(-1), size_logits.argmax(-1)
    scenes = []
    for row in range(cells.shape[0]):
        objects = tuple(
            WorldObject(_COLOUR_NAMES[colours[row, index]], CELL_CLASSES[shapes[row, index]],
                        _SIZE_NAMES[sizes[row, index]], index // GRID, index % GRID)
            for index in range(GRID * GRID) if shapes[row, index] != 0
        )
        scenes.append(Scene(_BACKGROUND_NAMES[background[row].argmax()], objects))
    return scenes


def compare(seen: Scene, truth: Scene) -> dict[str, float]:
    """Per-attribute agreement of a read scene with the truth: position = the same cells
    are occupied; shape, colour, size = fraction of true objects read right in their cell."""
    read = {o.cell: o for o in seen.objects}
    objects = truth.objects
    def fraction(attribute: str) -> float:
        return sum(o.cell in read and getattr(read[o.cell], attribute) == getattr(o, attribute)
                   for o in objects) / len(objects)
    colour_and_shape = sum(o.cell in read and read[o.cell].pair == o.pair for o in objects) / len(objects)
    return {
        "position": float({o.cell for o in seen.objects} == {o.cell for o in objects}),
        "shape": fraction("shape"), "colour": fraction("colour"), "size": fraction("size"),
        "colour_and_shape": colour_and_shape,
        "background": float(seen.background == truth.background),
    }


def accuracy(judge: Judge, images: torch.Tensor, truths: list[Scene]) -> dict[str, float]:
    """Mean per-attribute agreement over a batch, plus `all` (every attribute right)."""
    return scene_accuracy(read_scenes(judge, images), truths)


def scene_accuracy(seen: list[Scene], truths: list[Scene]) -> dict[str, float]:
    scores = [compare(scene, truth) for scene, truth in zip(seen, truths)]
    means = {name: float(np.mean([score[name] for score in scores])) for name in SCORES}
    means["all"] = float(np.mean([all(value == 1.0 for value in score.values()) for score in scores]))
    return means


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> (B, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(image, dtype=np.float32) for image in images])).permute(0, 3, 1, 2) / 255


def scene_batch(rng: random.Random, count: int, split: str = ANY) -> tuple[torch.Tensor, list[Scene]]:
    scenes = [random_scene(rng, split) for _ in range(count)]
    return to_tensor([render(scene) for scene in scenes]), scenes


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur, noise and a colour cast of random strength, so the judge also reads the soft,
    imperfect pictures a VAE or a diffusion model draws."""
    sigma = float(torch.rand((), generator=generator)) * 1.5
    if sigma > 0.3:
        radius = 3
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-x**2 / (2 * sigma**2))
        kernel = (kernel / kernel.sum()).to(images.dtype)
        channels = images.shape[1]
        images = F.conv2d(F.pad(images, (radius,) * 4, mode="replicate"),
                          kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
        images = F.conv2d(images, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    noise = torch.randn(images.shape, generator=generator) * float(torch.rand((), generator=generator)) * 0.06
    cast = (torch.rand(images.shape[0], 3, 1, 1, generator=generator) - 0.5) * 0.08
    return (images + noise + cast).clamp(0, 1)

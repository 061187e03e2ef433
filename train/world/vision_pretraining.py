"""Pretraining the world VLM's vision tower, the world's stand-in for LLaVA's pretrained
CLIP ViT (LLaVA-1.5 keeps that tower frozen; so does the VLM phase after this one).

The tower's patch features (one patch per grid cell; the features the projector reads:
the chosen layer, class token dropped) learn to tell the scene, through linear heads
that are thrown away afterwards: each cell's patch gives the judge's per-cell read-out
(shape or empty, colour, size) and the patches' mean the background, trained and read
with the judge's own labels, loss and scoring (judge.py). Without this phase, the
language-model loss alone taught the tower the background only: the world VLM described
every picture as the same object.

Two levers, off in the shipped recipe: `vision_grey` shows that fraction of the phase's
pictures in shades of grey (random channel weights; their colour is not asked), so the
tower reads shape from contrast, not from the (colour, shape) pairs it saw;
`cell_identity` asks each patch feature for its own grid cell too, so every image token
says where it is. With `projector_vision_weight` > 0 the language phase trains a second
set of heads on the projector's output (the image tokens the language model reads), the
tower frozen.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from m2chat_core.vlm import LoadedVLM

from .dataset import sample_rng
from .judge import CELL_LOGITS, scene_accuracy, scene_labels, scene_loss, scenes_from_logits
from .render import render
from .scenes import Scene, random_scene
from .vocabulary import BACKGROUNDS, GRID


class VisionHeads(nn.Module):
    """(B, 9, width) patch features -> the judge's cell logits (B, 9, CELL_LOGITS) and background
    logits (B, 3); with `cell_identity`, a third head guesses each feature's own cell (B, 9, 9)."""

    def __init__(self, width: int, cell_identity: bool = False) -> None:
        super().__init__()
        self.cells = nn.Linear(width, CELL_LOGITS)
        self.background = nn.Linear(width, len(BACKGROUNDS))
        self.cell_identity = nn.Linear(width, GRID * GRID) if cell_identity else None

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cells(features), self.background(features.mean(dim=1))


def pictures(scenes: list[Scene], grey: list[np.ndarray | None] | None = None) -> list[Image.Image]:
    """The scenes' pictures; where `grey` gives channel weights (summing to 1), in shades of
    grey: that mix of the channels, copied to all three."""
    images = [render(scene) for scene in scenes]
    weights = grey or [None] * len(images)
    return [image if mix is None else _grey(image, mix) for image, mix in zip(images, weights)]


def grey_draws(seed: int, step: int, count: int, fraction: float) -> list[np.ndarray | None]:
    """Step `step`'s channel weights for each of its `count` pictures (None: kept in colour)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    chosen = torch.rand(count, generator=generator) < fraction
    weights = torch.rand(count, 3, generator=generator)
    return [(w / w.sum()).numpy() if keep else None for w, keep in zip(weights, chosen)]


def _grey(image: Image.Image, weights: np.ndarray) -> Image.Image:
    luminance = np.asarray(image, dtype=np.float32) @ weights
    return Image.fromarray(np.repeat(luminance[..., None], 3, axis=-1).round().astype(np.uint8))


def patch_features(vlm: LoadedVLM, images: list[Image.Image]) -> torch.Tensor:
    """(N, 9, width) the tower's features of the pictures, in patch (row-major cell) order."""
    pixels = vlm.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    hidden = vlm.model.model.vision_tower(pixels.to(vlm.device), output_hidden_states=True).hidden_states
    return hidden[vlm.model.config.vision_feature_layer][:, 1:]  # the "default" strategy drops the class token


def training_scenes(seed: int, step: int, count: int) -> list[Scene]:
    """Step `step`'s train-split scenes (no held-out pair): a pure function of the arguments."""
    return [random_scene(sample_rng(seed, "train", "vision", step * 100_003 + index), "train") for index in range(count)]


def test_scenes(seed: int, count: int) -> list[Scene]:
    rng = random.Random(f"world:{seed}:test:vision")
    return [random_scene(rng, "test") for _ in range(count)]


def projected_features(vlm: LoadedVLM, scenes: list[Scene]) -> torch.Tensor:
    """(N, 9, hidden) the projector's output: the image tokens the language model reads."""
    return vlm.model.model.multi_modal_projector(patch_features(vlm, pictures(scenes)))


def vision_loss(heads: VisionHeads, features: torch.Tensor, scenes: list[Scene],
                colourless: list[bool] | None = None) -> torch.Tensor:
    """The judge's loss of the heads' read-out (no colour asked where `colourless`), plus the
    cross-entropy of each feature's own cell when the heads have `cell_identity`."""
    labels = scene_labels(scenes)
    if colourless is not None:
        labels.colour[torch.tensor(colourless)] = -100
    loss = scene_loss(*heads(features), labels)
    if heads.cell_identity is None:
        return loss
    cells = torch.arange(GRID * GRID).repeat(len(scenes))
    return loss + F.cross_entropy(heads.cell_identity(features).flatten(0, 1).float(), cells)


@torch.no_grad()
def vision_accuracy(vlm: LoadedVLM, heads: VisionHeads, scenes: list[Scene]) -> dict[str, float]:
    """The judge's scores of what the heads read from the tower's features, as `vision_<score>`
    (and `vision_cell_identity`, the share of features that know their cell, where asked)."""
    features = patch_features(vlm, pictures(scenes))
    read = scenes_from_logits(*heads(features))
    scores = {f"vision_{name}": value for name, value in scene_accuracy(read, scenes).items()}
    if heads.cell_identity is not None:
        guesses = heads.cell_identity(features).argmax(-1)
        scores["vision_cell_identity"] = float((guesses == torch.arange(GRID * GRID)).float().mean())
    return scores

"""Pretraining the world VLM's vision tower, the world's stand-in for LLaVA's pretrained
CLIP ViT (LLaVA-1.5 keeps that tower frozen; so does the VLM phase after this one).

The tower's patch features (one patch per grid cell; the features the projector reads:
the chosen layer, class token dropped) learn to tell the scene, through linear heads
that are thrown away afterwards: each cell's patch gives the judge's per-cell read-out
(shape or empty, colour, size) and the patches' mean the background, trained and read
with the judge's own labels, loss and scoring (judge.py). Without this phase, the
language-model loss alone taught the tower the background only: the world VLM described
every picture as the same object.

With `projector_vision_weight` > 0 the language phase trains a second set of heads on the
projector's output (the image tokens the language model reads), the tower frozen.
"""

from __future__ import annotations

import random

import torch
from torch import nn

from m2chat_core.vlm import LoadedVLM

from .dataset import sample_rng
from .judge import CELL_LOGITS, scene_accuracy, scene_labels, scene_loss, scenes_from_logits
from .render import render
from .scenes import Scene, random_scene
from .vocabulary import BACKGROUNDS


class VisionHeads(nn.Module):
    """(B, 9, width) patch features -> the judge's cell logits (B, 9, CELL_LOGITS) and background logits (B, 3)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.cells = nn.Linear(width, CELL_LOGITS)
        self.background = nn.Linear(width, len(BACKGROUNDS))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cells(features), self.background(features.mean(dim=1))


def patch_features(vlm: LoadedVLM, scenes: list[Scene]) -> torch.Tensor:
    """(N, 9, width) the tower's features of the scenes' pictures, in patch (row-major cell) order."""
    pixels = vlm.processor.image_processor([render(scene) for scene in scenes], return_tensors="pt")["pixel_values"]
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
    return vlm.model.model.multi_modal_projector(patch_features(vlm, scenes))


def vision_loss(heads: VisionHeads, features: torch.Tensor, scenes: list[Scene]) -> torch.Tensor:
    return scene_loss(*heads(features), scene_labels(scenes))


@torch.no_grad()
def vision_accuracy(vlm: LoadedVLM, heads: VisionHeads, scenes: list[Scene]) -> dict[str, float]:
    """The judge's scores of what the heads read from the tower's features, as `vision_<score>`."""
    read = scenes_from_logits(*heads(patch_features(vlm, scenes)))
    return {f"vision_{name}": value for name, value in scene_accuracy(read, scenes).items()}

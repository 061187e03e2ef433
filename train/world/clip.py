"""The world's CLIP: the scorer of InterRel (Eq. 8) on the world, as a real CLIP is for the
paper's MMDialog table. A tiny CLIPModel learns CLIP's own contrastive loss on train-split
pictures and their canonical captions, and is saved as the CLIPModel + CLIPProcessor folder
that train/evaluate's `load_local_clip` reads, so the project's own evaluation code scores
with it. Measured on held-out pictures (a held-out (colour, shape) pair in each): each
picture's caption picked among the evaluation set's captions, and each caption's picture.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import CLIPModel, CLIPProcessor

from m2chat_core.atomic_files import atomic_path

from ..evaluate.tiny_assets import seeded_clip
from .config import ClipConfig
from .language import caption
from .layout import CLIP_NAME
from .loop import train
from .render import render
from .scenes import Scene, random_scene

logger = logging.getLogger(__name__)


def build_world_clip(config: ClipConfig) -> tuple[CLIPModel, CLIPProcessor]:
    """The seeded, untrained CLIP: both towers `width` wide and `layers` deep, the embedding
    `width` wide; the picture read at `image_size` px in `patch_size` px patches."""
    return seeded_clip(seed=config.seed, width=config.width, intermediate_size=4 * config.width, layers=config.layers,
                       heads=config.width // 32, image_size=config.image_size, patch_size=config.patch_size,
                       projection_dim=config.width)


def _scenes(rng: random.Random, count: int, split: str) -> list[Scene]:
    return [random_scene(rng, split) for _ in range(count)]


class ClipTask:
    def __init__(self, config: ClipConfig) -> None:
        self.config = config
        self.model, self.processor = build_world_clip(config)
        self.eval_scenes = heldout_scenes(config.seed, config.eval_images)

    def _inputs(self, scenes: list[Scene]) -> dict[str, torch.Tensor]:
        return dict(self.processor(text=[caption(scene) for scene in scenes], images=[render(s) for s in scenes],
                                   return_tensors="pt", padding=True))

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        scenes = _scenes(random.Random(f"clip:{self.config.seed}:{step}"), self.config.batch_size, "train")
        return self.model(**self._inputs(scenes), return_loss=True).loss, {}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        output = self.model(**self._inputs(self.eval_scenes))
        return retrieval(output.text_embeds, output.image_embeds, [caption(scene) for scene in self.eval_scenes])


def retrieval(text_embeddings: torch.Tensor, image_embeddings: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Each picture's nearest caption and each caption's nearest picture among the set, right
    when the pick's caption is the same text (two pictures may share a caption)."""
    scores = image_embeddings @ text_embeddings.T
    def right(picks: torch.Tensor) -> float:
        return sum(captions[pick] == captions[index] for index, pick in enumerate(picks.tolist())) / len(captions)
    return {"image_to_caption": right(scores.argmax(1)), "caption_to_image": right(scores.argmax(0))}


def heldout_scenes(seed: int, count: int) -> list[Scene]:
    """The evaluation's pictures: test-split scenes (a held-out pair in each), no training step's."""
    return _scenes(random.Random(f"clip-eval:{seed}"), count, "test")


def train_clip(config: ClipConfig, stop_after: int | None = None) -> list[dict[str, float]]:
    task = ClipTask(config)
    out = Path(config.out)
    curve = train(task, config.loop_settings(), out, {"model": "clip", **asdict(config)}, stop_after)
    if curve and curve[-1]["step"] == config.steps:
        save_world_clip(task, out / CLIP_NAME)
    return curve


def save_world_clip(task: ClipTask, folder: Path) -> Path:
    with atomic_path(folder) as temporary:
        task.model.save_pretrained(temporary)
        task.processor.save_pretrained(temporary)
    logger.info("Saved the world's CLIP to %s", folder)
    return folder

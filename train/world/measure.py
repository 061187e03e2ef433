"""Measured figures of the world's models on freshly generated images (their own random
stream, never drawn in training): the judge on clean images, and what survives the VAE's
encode -> decode as the judge reads it."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import torch

from m2chat_core.atomic_files import atomic_path

from .config import MeasureConfig
from .judge import Judge, accuracy, scene_batch
from .scenes import ANY
from .taesd import ENCODER_FILE, TinyAutoencoder, load_taesd
from .training import load_judge

logger = logging.getLogger(__name__)

SPLITS_MEASURED = ("train", "test", ANY)  # seen pairs, held-out pairs, any pair


def fresh_images(seed: int, count: int, split: str) -> tuple[torch.Tensor, list]:
    return scene_batch(random.Random(f"measure:{seed}:{split}"), count, split)


@torch.no_grad()
def measure_judge(judge: Judge, count: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per-attribute accuracy of the judge on `count` fresh clean images of each split."""
    return {split: accuracy(judge, *fresh_images(seed, count, split)) for split in SPLITS_MEASURED}


@torch.no_grad()
def measure_vae(vae: TinyAutoencoder, judge: Judge, count: int, seed: int = 0,
                batch: int = 16) -> dict[str, dict[str, float]]:
    """The judge's per-attribute accuracy on VAE reconstructions of fresh images of the
    seen and held-out pairs, next to its accuracy on the originals."""
    figures = {}
    for split in ("train", "test"):
        images, scenes = fresh_images(seed, count, split)
        decoded = torch.cat([vae.decoder(vae.encoder(part)).clamp(0, 1) for part in images.split(batch)])
        figures[split] = {"original": accuracy(judge, images, scenes), "reconstructed": accuracy(judge, decoded, scenes)}
    return figures


def snapshot_steps(run_folder: Path) -> list[tuple[int, Path]]:
    """The VAE snapshots a training run kept, by step."""
    folders = sorted((run_folder / "snapshots").glob("step-*"))
    return [(int(folder.name.split("-")[1]), folder) for folder in folders]


def measure(config: MeasureConfig) -> dict:
    judge = load_judge(config.judge)
    figures: dict = {"judge": measure_judge(judge, config.images, config.seed)}
    if config.vae:
        folder = Path(config.vae)
        if (folder / ENCODER_FILE).is_file():
            figures["vae"] = measure_vae(load_taesd(folder), judge, config.images, config.seed)
        figures["vae_snapshots"] = {step: measure_vae(load_taesd(path), judge, config.images, config.seed)
                                    for step, path in snapshot_steps(folder)}
    with atomic_path(Path(config.out)) as temporary:
        temporary.write_text(json.dumps(figures, indent=2) + "\n")
    logger.info("Measured figures written to %s:\n%s", config.out, json.dumps(figures["judge"], indent=1))
    return figures

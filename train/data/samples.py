"""What the datasets yield: a training sample, or the reason one was skipped."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from m2chat_core.session import ChatTurn

from .images import TargetImage


@dataclass(frozen=True)
class CachedTargets:
    """Precomputed outputs of the frozen parts for one sample (see train/cache.py)."""

    latent_mean: torch.Tensor  # (4, R/8, R/8) VAE posterior mean, unscaled
    latent_std: torch.Tensor  # (4, R/8, R/8) VAE posterior standard deviation
    context: torch.Tensor  # (77, 2048) CLIP-L ‖ OpenCLIP-G penultimate hidden states
    pooled: torch.Tensor  # (1280,) OpenCLIP-G projected text embedding
    time_ids: torch.Tensor  # (6,) SDXL size and crop ids of the cached crop


@dataclass(frozen=True)
class TrainingSample:
    """key: stable id (file and position). turn: what the VLM is teacher-forced on, with its
    known answer and caption; history: earlier turns. The image the caption describes comes
    as `target` (decoded) or `cached` (precomputed), never both."""

    key: str
    turn: ChatTurn
    history: tuple[ChatTurn, ...] = ()
    target: TargetImage | None = None
    cached: CachedTargets | None = None


@dataclass(frozen=True)
class SkippedSample:
    """A bad sample: skipped, counted and logged, never the end of a run."""

    key: str
    reason: str


@dataclass(frozen=True)
class DataFileSpan:
    """The samples [start, start + count) of a dataset come from `path`."""

    path: Path
    start: int
    count: int


class SampleSource(Protocol):
    """A map-style dataset of training samples read from data files."""

    spans: list[DataFileSpan]

    def __len__(self) -> int: ...

    def load(self, index: int, *, decode_target: bool) -> TrainingSample | SkippedSample: ...


def sample_rng(seed: int, key: str) -> random.Random:
    """A random stream fixed by (seed, sample key): augmentations repeat exactly on resume."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))

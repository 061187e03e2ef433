"""Held-out evaluation: the mean of every loss term over the validation data, with fixed
noise, plus the predict-the-mean baseline of L_align (what an adapter that ignores the
VLM would score at best: the targets' variance)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch

from .data.batches import TrainingBatch
from .objective import DiffusionTargets, M3FTModel

ALIGN_BASELINE = "align_mean_baseline"


class _MomentSums:
    """Per-element sums of x and x² (float64) to get the variance without keeping the data."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, values: torch.Tensor) -> None:
        values = values.detach().double().cpu()
        self.count += values.shape[0]
        total, squares = values.sum(0), values.pow(2).sum(0)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares

    def mean_variance(self) -> float:
        mean = self.total / self.count
        return float((self.squares / self.count - mean.pow(2)).mean())


@torch.no_grad()
def evaluate(
    model: M3FTModel,
    batches: Iterable[TrainingBatch],
    targets_of: Callable[[TrainingBatch, int], DiffusionTargets],
) -> dict[str, float]:
    """Sample-weighted mean of each term over `batches`; targets_of(batch, index) gives the
    targets with noise fixed by the batch index."""
    sums: dict[str, float] = defaultdict(float)
    samples = 0
    context_moments, pooled_moments = _MomentSums(), _MomentSums()
    for index, batch in enumerate(batches):
        if not len(batch):
            continue
        targets = targets_of(batch, index)
        outputs = model(batch.forced, targets)
        for name, value in outputs.items():
            sums[name] += float(value) * len(batch)
        samples += len(batch)
        context_moments.add(targets.context)
        pooled_moments.add(targets.pooled)
    if not samples:
        return {}
    metrics = {name: total / samples for name, total in sums.items()}
    # Eq. 2 for a constant prediction: mean squared deviation of pooled plus of context.
    metrics[ALIGN_BASELINE] = pooled_moments.mean_variance() + context_moments.mean_variance()
    return metrics

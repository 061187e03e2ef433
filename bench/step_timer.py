"""The training benchmarks' own clock: the median interval between a run's optimizer steps,
timed here rather than read from the trainer's log."""

from __future__ import annotations

import statistics
import time

from train.trainer import Trainer


def median_step_seconds(trainer: Trainer) -> float:
    """Run `trainer.fit()` and return the median seconds between its optimizer steps."""
    stamps: list[float] = []
    step_done = trainer.after_optimizer_step

    def timed_step() -> None:
        stamps.append(time.perf_counter())
        step_done()

    trainer.after_optimizer_step = timed_step
    trainer.fit()
    return statistics.median(later - earlier for earlier, later in zip(stamps, stamps[1:]))

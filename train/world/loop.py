"""The resumable training loop of the world's models (the judge, the VAE, the UNet, the VLM).

A run lives in one folder: `checkpoint.safetensors` (the model's weights, AdamW's
moments and the step; the config in its metadata), `train.log` and `curve.jsonl` (the
learning curve: step, minutes, loss, evaluation figures). The checkpoint is written
beside itself and renamed into place, so a killed run resumes from the last complete
one. Batches are a pure function of (seed, step), so a resumed run sees the same data
as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from m2chat_core.atomic_files import atomic_path

from ..settings_changes import changed_settings

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.safetensors"
CURVE_NAME = "curve.jsonl"
LOG_NAME = "train.log"


# Settings a run may change when it resumes: its length (the schedule follows the new
# length), how often it checkpoints and evaluates, and the precision it computes in (its
# default depends on the CPU: train/precision.py). Any other change needs a new run.
CHANGEABLE_ON_RESUME = ("steps", "checkpoint_every", "evaluate_every", "bf16")


# Settings added since runs were first saved, with the value a run saved before them used,
# so such a run still resumes.
ADDED_SETTINGS = {"weight_decay": 0.0}


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key not in CHANGEABLE_ON_RESUME}


class ResumeError(ValueError):
    """The run folder holds a checkpoint of a different config."""


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    learning_rate: float
    warmup_steps: int
    checkpoint_every: int
    evaluate_every: int
    bf16: bool
    restart_at: int = 0  # > 0: a second schedule (warmup, cosine) runs from this step on
    weight_decay: float = 0.0


class WithAverage(torch.nn.Module):
    """A model trained as usual (`live`) and the exponential moving average of its weights
    (`average`, which the optimizer never moves): after each step
    average <- decay * average + (1 - decay) * live. Both are in the state dict, so a
    checkpoint keeps the average and a resumed run continues it."""

    def __init__(self, live: torch.nn.Module, decay: float) -> None:
        super().__init__()
        self.live = live
        self.average = copy.deepcopy(live).requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self) -> None:
        for average, live in zip(self.average.parameters(), self.live.parameters()):
            average.lerp_(live, 1 - self.decay)
        for average, live in zip(self.average.buffers(), self.live.buffers()):
            average.copy_(live)


class Trainable(Protocol):
    """What the loop trains: a model (if a WithAverage, the loop averages it after each
    step), the loss of step `step`'s batch, and an evaluation."""

    model: torch.nn.Module

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self) -> dict[str, float]: ...


def train(task: Trainable, settings: LoopSettings, run_folder: Path, config: dict[str, Any],
          stop_after: int | None = None) -> list[dict[str, float]]:
    """Train to `settings.steps` (or until `stop_after` steps of this call), resuming from
    the folder's checkpoint; returns the learning curve."""
    with logged_to(run_folder / LOG_NAME):
        return _train(task, settings, run_folder, config, stop_after)


def run_stage(name: str, finished: Path, run: Callable[[], object]) -> None:
    """Run one stage of a resumable multi-stage command, unless `finished` (its last output) exists."""
    if finished.exists():
        logger.info("Stage %s: already finished (%s)", name, finished)
        return
    started = time.monotonic()
    logger.info("Stage %s: running ...", name)
    run()
    logger.info("Stage %s: finished in %.1f min", name, (time.monotonic() - started) / 60)


@contextmanager
def logged_to(path: Path) -> Iterator[None]:
    """The world's log messages (INFO and up) also go to `path` while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    world_logger = logging.getLogger("train.world")
    level = world_logger.level
    world_logger.setLevel(logging.INFO)
    world_logger.addHandler(handler)
    try:
        yield
    finally:
        world_logger.removeHandler(handler)
        world_logger.setLevel(level)
        handler.close()


def _train(task: Trainable, settings: LoopSettings, run_folder: Path, config: dict[str, Any],
           stop_after: int | None) -> list[dict[str, float]]:
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(settings))
    step = _resume(task.model, optimizer, schedule, run_folder / CHECKPOINT_NAME, config)
    curve = _read_curve(run_folder / CURVE_NAME, step)
    minutes_before = curve[-1]["minutes"] if curve else 0.0
    started = time.monotonic()
    last_step = settings.steps if stop_after is None else min(settings.steps, step + stop_after)
    progress = tqdm(total=settings.steps, initial=step, desc=config.get("model", "training"))
    task.model.train()
    while step < last_step:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            loss, figures = task.loss(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"The loss became {loss.item()} at step {step}; lower the learning rate.")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if isinstance(task.model, WithAverage):
            task.model.update()
        step += 1
        progress.update()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if step % settings.evaluate_every == 0 or step == settings.steps:
            point = {"step": step, "minutes": round(minutes_before + (time.monotonic() - started) / 60, 3),
                     "loss": round(loss.item(), 5), **figures, **_evaluate(task)}
            curve.append(point)
            logger.info("step %d: %s", step, json.dumps(point))
        if step % settings.checkpoint_every == 0 or step == last_step:
            _save(task.model, optimizer, schedule, step, run_folder, config, curve)
    progress.close()
    return curve


def _evaluate(task: Trainable) -> dict[str, float]:
    task.model.eval()
    with torch.no_grad():
        figures = task.evaluate()
    task.model.train()
    return {name: round(value, 5) for name, value in figures.items()}


def _warmup_cosine(settings: LoopSettings) -> Callable[[int], float]:
    """Linear warmup, then cosine down to 5%; with `restart_at`, once before it and once after."""
    def factor(step: int) -> float:
        first, last = (0, settings.restart_at) if step < settings.restart_at else (settings.restart_at, settings.steps)
        step -= first
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, last - first - settings.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(progress * math.pi))
    return factor


def _save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule, step: int, run_folder: Path,
          config: dict[str, Any], curve: list[dict[str, float]]) -> None:
    tensors = {f"model.{name}": value.detach().contiguous() for name, value in model.state_dict().items()}
    names = dict(enumerate(name for name, _ in model.named_parameters()))
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{names[index]}.{key}"] = torch.as_tensor(value).contiguous()
    metadata = {"step": str(step), "config": json.dumps(config, sort_keys=True),
                "schedule": json.dumps(schedule.state_dict())}
    with atomic_path(run_folder / CHECKPOINT_NAME) as temporary:
        save_file(tensors, temporary, metadata=metadata)
    with atomic_path(run_folder / CURVE_NAME) as temporary:
        temporary.write_text("".join(json.dumps(point) + "\n" for point in curve))
    logger.info("Saved checkpoint at step %d to %s", step, run_folder / CHECKPOINT_NAME)


def _resume(model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule, path: Path,
            config: dict[str, Any]) -> int:
    """Load the checkpoint at `path` if there is one; returns the step to continue from."""
    if not path.is_file():
        return 0
    with safe_open(path, framework="pt") as file:
        metadata = file.metadata()
        saved, wanted = _identity(ADDED_SETTINGS | json.loads(metadata["config"])), _identity(json.loads(json.dumps(config)))
        changed = changed_settings(saved, wanted)
        if changed:
            raise ResumeError(
                f"{path} was written by a run with other settings: {'; '.join(changed)}. "
                f"Only {', '.join(CHANGEABLE_ON_RESUME)} may change on resume: run with the checkpoint's "
                "values to continue it, use a new output folder, or delete the checkpoint to start over.")
        tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 - safe_open has no items()
    model.load_state_dict({key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")})
    state = {}
    for index, (name, _) in enumerate(model.named_parameters()):
        prefix = f"optimizer.{name}."
        entries = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        if entries:
            state[index] = entries
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    schedule.load_state_dict(json.loads(metadata["schedule"]))
    for group, learning_rate in zip(optimizer.param_groups, schedule.get_last_lr()):
        group["lr"] = learning_rate
    step = int(metadata["step"])
    logger.info("Resuming from %s at step %d", path, step)
    return step


def _read_curve(path: Path, step: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    return [point for line in path.read_text().splitlines() if (point := json.loads(line))["step"] <= step]

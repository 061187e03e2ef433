"""World M³FT seconds per step with PyTorch's own attention kernel against the one a run
takes (train/precision.py `training_attention`: the math kernel on a CPU under bf16).

    python bench/bench_m3ft_attention.py --out DIR [--steps 20] [--weights train/world/weights]

DIR is an M³FT folder of `python -m train.world m3ft` (its data set, diffusers SDXL and
cache are built there first when missing). Each stage trains the same steps of the world
recipe once per kernel choice, one after the other in this process; the figure is
the median interval between optimizer steps, timed here (not by the trainer). Stage 2
starts from a 2-step stage-1 adapter. Prints each stage's seconds per step and the speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from train import trainer as trainer_module  # noqa: E402
from train.cli import parse_command_line  # noqa: E402
from train.config import Stage1Config, Stage2Config  # noqa: E402
from train.precision import training_attention  # noqa: E402
from train.world.config import M3ftConfig  # noqa: E402
from train.trainer import DEFAULT_EXPORT_NAME  # noqa: E402
from train.world.layout import SHIPPED  # noqa: E402
from train.world.m3ft import prepare_runs  # noqa: E402
from step_timer import median_step_seconds  # noqa: E402

KERNELS = {"PyTorch's choice": lambda mixed_precision, device: contextlib.nullcontext(),
           "training_attention": training_attention}


def seconds_per_step(config_class: type, arguments: list[str], kernel_choice, work: Path, steps: int) -> float:
    trainer_module.training_attention = kernel_choice
    trainer = trainer_module.Trainer(parse_command_line(config_class, [
        *arguments, f"--engine.output_dir={work}", "--engine.checkpoint_every=0", "--engine.validate_every=0",
        "--engine.report_to=none", "--data.validation=[]", "--resume=", f"--optim.max_steps={steps}"]))
    return median_step_seconds(trainer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--weights", default=str(SHIPPED.root))
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = prepare_runs(M3ftConfig(out=str(arguments.out), weights=arguments.weights))
    timings: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="m2chat-bench-") as temporary:
        stage1 = Path(temporary) / "stage 1-warm-up" / DEFAULT_EXPORT_NAME  # stage 2's start
        stages = {"stage 1": (Stage1Config, runs.stage1_arguments()),
                  "stage 2": (Stage2Config, runs.stage2_arguments(stage1))}
        for stage, (config_class, stage_arguments) in stages.items():
            warm_up = Path(temporary) / f"{stage}-warm-up"  # builds the stage's cache, warms the kernels
            seconds_per_step(config_class, stage_arguments, training_attention, warm_up, 2)
            for number, (name, choice) in enumerate(KERNELS.items()):
                work = Path(temporary) / f"{stage}-{number}"
                timings[stage, name] = seconds_per_step(config_class, stage_arguments, choice, work, arguments.steps)
    print(f"world M³FT, {arguments.steps} steps per run, median seconds per optimizer step")
    print(f"{'':>8} {'PyTorch choice':>15} {'training_attention':>19} {'speed-up':>9}")
    for stage in stages:
        baseline, ours = (timings[stage, name] for name in KERNELS)
        print(f"{stage:>8} {baseline:>15.3f} {ours:>19.3f} {baseline / ours:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage-1 seconds per step with the precompute cache against without it, on the tiny config.

    python bench/bench_train_cache.py [--steps 30] [--assets DIR] [--threads 1]

Both runs train the same steps in this process (after the cache is built, which is not
timed); the per-step time is the median interval between optimizer steps. The cache
removes the frozen VAE and both CLIP text encoders from every step.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from train.cli import parse_command_line  # noqa: E402
from train.config import Stage1Config  # noqa: E402
from train.tiny_assets import build_tiny_assets  # noqa: E402
from train.trainer import Trainer  # noqa: E402
from step_timer import median_step_seconds  # noqa: E402


def seconds_per_step(assets: Path, work: Path, name: str, steps: int, cached: bool) -> float:
    arguments = [
        "--config", str(REPO_ROOT / "train" / "configs" / "tiny_stage1.yaml"),
        f"--data.train=[{assets}/shards/train-*.tar]", "--data.validation=[]",
        f"--model.vlm={assets}/vlm", f"--model.sdxl={assets}/sdxl",
        f"--engine.output_dir={work / name}", "--engine.checkpoint_every=0", "--engine.report_to=none",
        f"--optim.max_steps={steps}", "--optim.epochs=100",
        f"--cache.enabled={'true' if cached else 'false'}", f"--cache.dir={work / 'cache'}",
    ]
    trainer = Trainer(parse_command_line(Stage1Config, arguments))
    return median_step_seconds(trainer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--assets", type=Path, help="tiny assets from `python -m train.tiny_assets` (built if absent)")
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(arguments.threads)
    with tempfile.TemporaryDirectory(prefix="m2chat-bench-") as temporary:
        work = Path(temporary)
        assets = arguments.assets or build_tiny_assets(work / "assets")
        seconds_per_step(assets, work, "warm-up", 2, cached=True)  # builds the cache, warms the kernels
        plain = seconds_per_step(assets, work, "plain", arguments.steps, cached=False)
        cached = seconds_per_step(assets, work, "cached", arguments.steps, cached=True)
    print(f"stage 1, tiny config, {arguments.steps} steps, {arguments.threads} thread(s), median seconds per step")
    print(f"{'without cache':>15} {'with cache':>12} {'speed-up':>10}")
    print(f"{plain:>15.4f} {cached:>12.4f} {plain / cached:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

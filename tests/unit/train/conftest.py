"""Shared fixtures of the training tests: the tiny assets (built once per session) and a
helper that runs the real entry points in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.tiny_assets import build_tiny_assets

REPO_ROOT = Path(__file__).resolve().parents[3]
STAGE1_CONFIG = REPO_ROOT / "train" / "configs" / "tiny_stage1.yaml"
STAGE2_CONFIG = REPO_ROOT / "train" / "configs" / "tiny_stage2.yaml"


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    return build_tiny_assets(tmp_path_factory.mktemp("tiny-train"), seed=0)


@pytest.fixture
def one_thread():
    """One torch thread: faster than two on a shared machine, and bit-reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class StageRunner:
    """Runs `python -m train.stageN` on the tiny assets, as a user would."""

    def __init__(self, assets: Path) -> None:
        self.assets = assets

    def overrides(self, stage: int, output_dir: Path) -> list[str]:
        """Point a tiny config at the assets and write into `output_dir`."""
        assets = self.assets
        data = (
            [f"--data.train=[{assets}/shards/train-000000.tar,{assets}/shards/train-000001.tar]",
             f"--data.validation=[{assets}/shards/heldout-000000.tar]"]
            if stage == 1
            else [f"--data.train=[{assets}/dialogue/train.jsonl]",
                  f"--data.validation=[{assets}/dialogue/validation.jsonl]"]
        )
        return [
            "--config", str(STAGE1_CONFIG if stage == 1 else STAGE2_CONFIG),
            *data,
            f"--model.vlm={assets}/vlm",
            f"--model.sdxl={assets}/sdxl",
            f"--engine.output_dir={output_dir}",
        ]

    @staticmethod
    def command(stage: int, arguments: list[str]) -> list[str]:
        return [sys.executable, "-m", f"train.stage{stage}", *arguments]

    @staticmethod
    def env() -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "TQDM_DISABLE": "1"}

    def start(self, stage: int, arguments: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(stage, arguments), cwd=REPO_ROOT, env=self.env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def run(self, stage: int, arguments: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(stage, arguments), cwd=REPO_ROOT, env=self.env(), capture_output=True, text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def runner(assets) -> StageRunner:
    return StageRunner(assets)

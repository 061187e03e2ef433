"""Training fixtures (a pytest plugin, see tests/conftest.py): the tiny assets, a helper
that runs the real entry points in a subprocess, and both stages run once per session,
shared by the training tests and the ComfyUI tests that load the exported files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from comfyui_env import HUNG_AFTER_S

from m2chat_core.adapter_file import load_adapter_file
from train.tiny_assets import build_tiny_assets
from train.trainer import DEFAULT_EXPORT_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE1_CONFIG = REPO_ROOT / "train" / "configs" / "tiny_stage1.yaml"
STAGE2_CONFIG = REPO_ROOT / "train" / "configs" / "tiny_stage2.yaml"
# Runs whose gradients are reduce-scattered (ZeRO-3, FSDP) sum them in another order than one
# process's accumulation, and AdamW's division by a near-zero gradient magnifies that rounding:
# 2-6e-6 here under FSDP with AVX-512, AVX2 or plain kernels, 3.6e-5 under ZeRO-3 on an AMD EPYC
# (under 1e-5 on Intel). A step lost, doubled or computed wrong moves the weights by about the
# learning rate (1e-3), so a tenth of it still tells the runs apart.
SHARDED_REDUCTION_ATOL = 1e-4
STAGE1_RUN = ["--optim.max_steps=0", "--engine.checkpoint_every=5"]  # the whole epoch: 26 steps of 2 samples


def assert_same_steps(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    """Two runs took the same optimizer steps on different process layouts: their weights agree
    within 1e-5 (issue 14's bound), or `atol` where a test states why rounding reaches further."""
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=atol, rtol=0, msg=name)


def assert_runs_took_the_same_steps(first: Path, second: Path, atol: float = 1e-5) -> None:
    """`assert_same_steps` for two runs' exported adapters and VLM deltas."""
    assert_same_steps(_trained_tensors(first), _trained_tensors(second), atol)


def _trained_tensors(run: Path) -> dict[str, torch.Tensor]:
    exported = load_adapter_file(run / DEFAULT_EXPORT_NAME)
    deltas = exported.vlm_deltas.tensors if exported.vlm_deltas else {}
    return {**exported.adapter_state, **{f"vlm.{name}": tensor for name, tensor in deltas.items()}}


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

    def launcher_env(self, **extra: str) -> dict[str, str]:
        """env() for a distributed launcher: in-process trainers of earlier tests may have left
        accelerate's or torch.distributed's variables in this process's environment, so the
        launch gets only the launcher's own (and `extra`, e.g. ACCELERATE_USE_CPU)."""
        inherited = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        env = {name: value for name, value in self.env().items()
               if not name.startswith("ACCELERATE_") and name not in inherited}
        return {**env, **extra}

    def start(self, stage: int, arguments: list[str], stderr=subprocess.DEVNULL) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(stage, arguments), cwd=REPO_ROOT, env=self.env(), stdout=subprocess.DEVNULL, stderr=stderr,
        )

    def run(self, stage: int, arguments: list[str], timeout: float = HUNG_AFTER_S) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(stage, arguments), cwd=REPO_ROOT, env=self.env(), capture_output=True, text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def runner(assets) -> StageRunner:
    return StageRunner(assets)


@pytest.fixture(scope="session")
def stage1(runner, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("stage1")
    result = runner.run(1, runner.overrides(1, output_dir) + STAGE1_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result


@pytest.fixture(scope="session")
def stage2(runner, stage1, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("stage2")
    init_from = stage1[0] / DEFAULT_EXPORT_NAME
    result = runner.run(2, runner.overrides(2, output_dir) + [f"--init-from={init_from}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result

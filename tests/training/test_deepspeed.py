"""M³FT stage 2 under DeepSpeed ZeRO-2 with the shipped accelerate config, as two CPU
processes (DS_ACCELERATOR=cpu, gloo): the processes' batches differ in pictures, and the
run still takes the same steps as one process accumulating the same batches (ZeRO-2's
default reduction, in the order gradients arrive, got them wrong by 1e-3 without an error);
its checkpoints hold no frozen weights, and resuming one ends where the uninterrupted run does."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from comfyui_env import HUNG_AFTER_S
from harness.training import REPO_ROOT, free_port

from m2chat_core.adapter_file import load_adapter_file
from train.checkpoints import CONFIG_FILE_NAME, list_checkpoints
from train.trainer import DEFAULT_EXPORT_NAME

ZERO2_CONFIG = REPO_ROOT / "train" / "accelerate" / "deepspeed_zero2.yaml"
# 12 dialogues, batch 2 x 2 processes: 3 steps, a checkpoint at step 2; a learning rate that
# falls each step, so a schedule not applied under DeepSpeed (or not resumed) shows.
RUN = ["--engine.checkpoint_every=2", "--optim.lr_scheduler=linear"]


def _zero2_on_cpu_processes(folder: Path, processes: int = 2, zero_stage: int = 2) -> Path:
    """The shipped config, changed only where a CPU machine needs it (or to another ZeRO stage)."""
    config = yaml.safe_load(ZERO2_CONFIG.read_text())
    config.update(num_processes=processes, use_cpu=True, mixed_precision="no")
    config["deepspeed_config"]["zero_stage"] = zero_stage
    path = folder / f"zero{zero_stage}-cpu-{processes}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch_stage2(runner, config: Path, output_dir: Path, init_from: Path, extra: list[str] = ()):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", free_port(), "-m", "train.stage2",
               *runner.overrides(2, output_dir), f"--init-from={init_from}", *RUN, *extra]
    # DeepSpeed compiles its shared-memory op on first use; each venv keeps its own build (a
    # build shared by two venvs' include paths was recompiled at every switch, about a minute).
    env = runner.launcher_env(DS_ACCELERATOR="cpu", TORCH_EXTENSIONS_DIR=str(Path(sys.prefix) / "torch-extensions"))
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=HUNG_AFTER_S)


@pytest.fixture(scope="module")
def zero2(runner, stage1, tmp_path_factory) -> tuple[Path, Path]:
    """(accelerate config, the uninterrupted run's output folder)."""
    folder = tmp_path_factory.mktemp("zero2")
    config = _zero2_on_cpu_processes(folder)
    result = _launch_stage2(runner, config, folder / "run", stage1[0] / DEFAULT_EXPORT_NAME)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 2 x 1 accumulation x 2 processes" in result.stderr
    return config, folder / "run"


def _assert_same_adapter(first: Path, second: Path) -> None:
    first, second = (load_adapter_file(run / DEFAULT_EXPORT_NAME).adapter_state for run in (first, second))
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=1e-5, rtol=0, msg=name)


def test_zero2_stage2_takes_the_same_steps_as_one_process(runner, stage1, zero2, tmp_path):
    one = tmp_path / "one-process"
    arguments = [*runner.overrides(2, one), f"--init-from={stage1[0] / DEFAULT_EXPORT_NAME}", *RUN,
                 "--optim.gradient_accumulation_steps=2"]
    result = runner.run(2, arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_adapter(zero2[1], one)


def test_zero2_checkpoints_hold_only_the_trained_weights(runner, zero2):
    frozen = sum(path.stat().st_size for path in runner.assets.rglob("*.safetensors"))
    checkpoints = list_checkpoints(zero2[1] / "checkpoints")
    assert [path.name for path in checkpoints] == ["checkpoint-2", "checkpoint-3"]
    for checkpoint in checkpoints:
        saved = sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file())
        # The trained 0.33 M parameters with their AdamW state: 6.5 MB; the frozen VLM and SDXL: 96 MB.
        assert saved < frozen / 10, (checkpoint.name, saved, frozen)


def _copy_checkpoint_2(run: Path, output_dir: Path) -> None:
    shutil.copytree(run / "checkpoints" / "checkpoint-2", output_dir / "checkpoints" / "checkpoint-2")
    shutil.copy(run / CONFIG_FILE_NAME, output_dir / CONFIG_FILE_NAME)


def test_zero2_resumed_run_ends_where_the_uninterrupted_one_does(runner, stage1, zero2, tmp_path):
    config, uninterrupted = zero2
    _copy_checkpoint_2(uninterrupted, tmp_path)
    result = _launch_stage2(runner, config, tmp_path, stage1[0] / DEFAULT_EXPORT_NAME, ["--resume=latest"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from" in result.stderr
    _assert_same_adapter(tmp_path, uninterrupted)


def test_zero2_checkpoint_resumed_at_another_process_count_is_refused_with_the_fix(runner, stage1, zero2, tmp_path):
    """DeepSpeed cannot re-partition ZeRO state; its own error was a raw ZeRORuntimeException."""
    _copy_checkpoint_2(zero2[1], tmp_path)
    config = _zero2_on_cpu_processes(tmp_path, processes=1)
    result = _launch_stage2(runner, config, tmp_path, stage1[0] / DEFAULT_EXPORT_NAME,
                            ["--resume=latest", "--optim.gradient_accumulation_steps=2"])
    assert result.returncode != 0
    assert f"train.cli: Cannot resume: {tmp_path / 'checkpoints' / 'checkpoint-2'} holds DeepSpeed ZeRO state " \
           "partitioned over 2 processes, and this run has 1" in result.stderr, result.stderr[-3000:]
    assert "Resume with 2 processes, or train with train/accelerate/ddp.yaml" in result.stderr


def test_zero3_is_refused_before_loading_anything_naming_zero2(runner, stage1, tmp_path):
    """ZeRO-3 stopped mid-run (processes with and without pictures gather the frozen vision tower apart).
    One process: the refusal is the same, and no launcher waits for a second one to stop."""
    config = _zero2_on_cpu_processes(tmp_path, processes=1, zero_stage=3)
    result = _launch_stage2(runner, config, tmp_path / "run", stage1[0] / DEFAULT_EXPORT_NAME)
    assert result.returncode != 0
    assert "m2chat training runs DeepSpeed with ZeRO stage 2 only (this config says zero_stage: 3): use " \
           "train/accelerate/deepspeed_zero2.yaml, or ddp.yaml." in result.stderr, result.stderr[-3000:]
    assert "Loaded VLM" not in result.stderr

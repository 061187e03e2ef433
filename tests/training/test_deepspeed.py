"""M³FT stage 2 under DeepSpeed ZeRO-2 and ZeRO-3 with the shipped accelerate configs, as two
CPU processes (DS_ACCELERATOR=cpu, gloo): the processes' batches differ in pictures, and the
run still takes the same steps as one process accumulating the same batches (ZeRO-2's
default reduction, in the order gradients arrive, got them wrong by 1e-3 without an error;
ZeRO-3 stopped with a collective mismatch where only one process had pictures); its
checkpoints hold no frozen weights, and resuming one ends where the uninterrupted run does."""

import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from comfyui_env import HUNG_AFTER_S
from harness.training import SHARDED_REDUCTION_ATOL, REPO_ROOT, assert_runs_took_the_same_steps
from process_groups import free_port, run_launcher

from train.checkpoints import CONFIG_FILE_NAME, list_checkpoints
from train.tiny_assets import BAD_SAMPLES, captioned_pictures, write_shard
from train.trainer import DEFAULT_EXPORT_NAME

SHIPPED_CONFIGS = {stage: REPO_ROOT / "train" / "accelerate" / f"deepspeed_zero{stage}.yaml" for stage in (2, 3)}
# 12 dialogues, batch 2 x 2 processes: 3 steps, a checkpoint at step 2; a learning rate that
# falls each step, so a schedule not applied under DeepSpeed (or not resumed) shows.
RUN = ["--engine.checkpoint_every=2", "--optim.lr_scheduler=linear"]
# DeepSpeed's shared-memory op, compiled by the set-up into each venv's own folder (a build
# shared by two venvs' include paths was recompiled at every switch, about a minute).
EXTENSIONS = Path(sys.prefix) / "torch-extensions"


@pytest.fixture(scope="module", autouse=True)
def no_stale_build_lock():
    """A build killed part-way (an interrupted earlier test run in this venv) leaves torch's
    build lock behind, and every later launch waits on it for ever. Only this module's
    launches, one at a time, use this venv's folder, so a lock found before them is stale."""
    for lock in EXTENSIONS.glob("*/lock"):
        lock.unlink()


def _on_cpu_processes(folder: Path, shipped: int, processes: int = 2, zero_stage: int | None = None) -> Path:
    """The shipped config for ZeRO stage `shipped`, changed only where a CPU machine needs it
    (or to another ZeRO stage)."""
    config = yaml.safe_load(SHIPPED_CONFIGS[shipped].read_text())
    config.update(num_processes=processes, use_cpu=True, mixed_precision="no")
    config["deepspeed_config"]["zero_stage"] = zero_stage or shipped
    path = folder / f"zero{zero_stage or shipped}-cpu-{processes}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(runner, config: Path, stage: int, output_dir: Path, arguments: list[str]):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", free_port(), "-m", f"train.stage{stage}",
               *runner.overrides(stage, output_dir), *arguments]
    env = runner.launcher_env(DS_ACCELERATOR="cpu", TORCH_EXTENSIONS_DIR=str(EXTENSIONS))
    return run_launcher(command, cwd=REPO_ROOT, env=env, timeout=HUNG_AFTER_S)


def _launch_stage2(runner, config: Path, output_dir: Path, init_from: Path, extra: list[str] = ()):
    return _launch(runner, config, 2, output_dir, [f"--init-from={init_from}", *RUN, *extra])


@dataclass(frozen=True)
class ZeroRun:
    stage: int
    config: Path  # the accelerate config it ran with
    output_dir: Path  # the uninterrupted 2-process run's


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def zero(request, runner, stage1, tmp_path_factory) -> ZeroRun:
    folder = tmp_path_factory.mktemp(f"zero{request.param}")
    config = _on_cpu_processes(folder, request.param)
    result = _launch_stage2(runner, config, folder / "run", stage1[0] / DEFAULT_EXPORT_NAME)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 2 x 1 accumulation x 2 processes" in result.stderr
    if request.param == 3:  # the engine partitioned every parameter of the VLM, UNet and adapter
        held, whole = (int(count.replace(",", "")) for count in re.search(
            r"ZeRO-3: each process holds ([\d,]+) of the model's ([\d,]+) parameters", result.stderr).groups())
        assert whole > 2_000_000 and held < 0.51 * whole, (held, whole)  # trained: 0.33 M
    return ZeroRun(request.param, config, folder / "run")


@pytest.fixture(scope="module")
def one_process(runner, stage1, tmp_path_factory) -> Path:
    """One process accumulating the two processes' batches: the steps both runs must take."""
    output_dir = tmp_path_factory.mktemp("one-process")
    arguments = [*runner.overrides(2, output_dir), f"--init-from={stage1[0] / DEFAULT_EXPORT_NAME}", *RUN,
                 "--optim.gradient_accumulation_steps=2"]
    result = runner.run(2, arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def test_sharded_stage2_takes_the_same_steps_as_one_process(zero, one_process):
    # ZeRO-2 within issue 14's 1e-5; ZeRO-3 reduce-scatters (on an AMD EPYC one tensor ended 1.16e-5
    # apart, the rest under 7e-6).
    atol = 1e-5 if zero.stage == 2 else SHARDED_REDUCTION_ATOL
    assert_runs_took_the_same_steps(zero.output_dir, one_process, atol=atol)


def test_checkpoints_hold_only_the_trained_weights(runner, zero):
    frozen = sum(path.stat().st_size for path in runner.assets.rglob("*.safetensors"))
    checkpoints = list_checkpoints(zero.output_dir / "checkpoints")
    assert [path.name for path in checkpoints] == ["checkpoint-2", "checkpoint-3"]
    for checkpoint in checkpoints:
        saved = sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file())
        # The trained 0.33 M parameters with their AdamW state: 5-7 MB; the frozen VLM and SDXL: 96 MB.
        assert saved < frozen / 10, (checkpoint.name, saved, frozen)


def _copy_checkpoint_2(run: Path, output_dir: Path) -> None:
    shutil.copytree(run / "checkpoints" / "checkpoint-2", output_dir / "checkpoints" / "checkpoint-2")
    shutil.copy(run / CONFIG_FILE_NAME, output_dir / CONFIG_FILE_NAME)


def test_resumed_run_ends_where_the_uninterrupted_one_does(runner, stage1, zero, tmp_path):
    _copy_checkpoint_2(zero.output_dir, tmp_path)
    result = _launch_stage2(runner, zero.config, tmp_path, stage1[0] / DEFAULT_EXPORT_NAME, ["--resume=latest"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("Resumed from") == 1, result.stderr[-3000:]
    assert_runs_took_the_same_steps(tmp_path, zero.output_dir)


@pytest.mark.parametrize("zero", [2], indirect=True, ids=["zero2"])  # the same check for ZeRO-3
def test_checkpoint_resumed_at_another_process_count_is_refused_with_the_fix(runner, stage1, zero, tmp_path):
    """DeepSpeed cannot re-partition ZeRO state; its own error was a raw ZeRORuntimeException, after
    the models had loaded (minutes for the paper's)."""
    _copy_checkpoint_2(zero.output_dir, tmp_path)
    config = _on_cpu_processes(tmp_path, zero.stage, processes=1)
    result = _launch_stage2(runner, config, tmp_path, stage1[0] / DEFAULT_EXPORT_NAME,
                            ["--resume=latest", "--optim.gradient_accumulation_steps=2"])
    assert result.returncode != 0
    assert f"train.cli: Cannot resume: {tmp_path / 'checkpoints' / 'checkpoint-2'} holds DeepSpeed ZeRO state " \
           "partitioned over 2 processes, and this run has 1" in result.stderr, result.stderr[-3000:]
    assert "Resume with 2 processes, or train with train/accelerate/ddp.yaml" in result.stderr
    assert "Loaded VLM" not in result.stderr  # refused before the models load


def test_zero_stage_1_is_refused_before_loading_anything_naming_the_configs(runner, stage1, tmp_path):
    """accelerate's ZeRO-0/1 path skips the coalesced reduction. One process: the refusal is the
    same, and no launcher waits for a second one to stop."""
    config = _on_cpu_processes(tmp_path, 2, processes=1, zero_stage=1)
    result = _launch_stage2(runner, config, tmp_path / "run", stage1[0] / DEFAULT_EXPORT_NAME)
    assert result.returncode != 0
    assert "m2chat training runs DeepSpeed with ZeRO stage 2 or 3 (this config says zero_stage: 1): use " \
           "train/accelerate/deepspeed_zero2.yaml or deepspeed_zero3.yaml, or ddp.yaml." in result.stderr, \
        result.stderr[-3000:]
    assert "Loaded VLM" not in result.stderr


def test_zero3_stage1_through_skipped_samples_takes_the_same_steps_as_one_process(runner, tmp_path):
    """Batches of one sample: where a process's sample was skipped, it had no forward to run
    while the other's gathered the sharded parameters (the run hung); it now runs its last
    batch again with weight 0. An epoch of 3 good samples and a bad one: 2 steps, one of
    them with a process whose batch is empty."""
    shard = tmp_path / "one-bad-000000.tar"
    write_shard(shard, captioned_pictures(random.Random(0), 3), BAD_SAMPLES[:1])
    batches = [f"--data.train=[{shard}]", "--optim.batch_size=1", "--optim.max_steps=2",
               "--engine.checkpoint_every=1"]
    sharded = _launch(runner, _on_cpu_processes(tmp_path, 3), 1, tmp_path / "zero3", batches)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "Skipped 1 bad samples in training" in sharded.stderr  # with batches of 1: a batch without samples
    one = runner.run(1, [*runner.overrides(1, tmp_path / "one"), *batches, "--optim.gradient_accumulation_steps=2"])
    assert one.returncode == 0, one.stderr[-3000:]
    # Batches of one sample, reduce-scattered (SHARDED_REDUCTION_ATOL).
    assert_runs_took_the_same_steps(tmp_path / "zero3", tmp_path / "one", atol=SHARDED_REDUCTION_ATOL)

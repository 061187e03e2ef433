"""Stage 1 as two data-parallel processes (torchrun on the CPU, gloo backend): the same
code paths as `accelerate launch` on several GPUs — sharded batches, gradient sync,
checkpoints and the export written by the main process only; checkpoints with a slowed
rank on a shared disk and on node-local disks; resume at another process count; no
duplicate runs when accelerate does not see the launcher's processes."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from comfyui_env import HUNG_AFTER_S
from harness.training import REPO_ROOT, assert_runs_took_the_same_steps
from process_groups import free_port, run_launcher
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from m2chat_core.adapter_file import load_adapter_file
from train.checkpoints import CONFIG_FILE_NAME, STATE_FILE_NAME, list_checkpoints
from train.cli import EXIT_CONFIG_ERROR, EXIT_RUN_FAULT
from train.trainer import DEFAULT_EXPORT_NAME


def _torchrun_stage1(runner, arguments: list[str], *, use_cpu: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", free_port(), "-m", "train.stage1", *arguments]
    # accelerate's multi-CPU (gloo) mode, or (use_cpu False) none.
    env = runner.launcher_env(**({"ACCELERATE_USE_CPU": "true"} if use_cpu else {}))
    return run_launcher(command, cwd=REPO_ROOT, env=env, timeout=HUNG_AFTER_S)


def test_two_process_stage1_trains_checkpoints_and_exports(runner, tmp_path):
    output_dir = tmp_path / "ddp"
    result = _torchrun_stage1(runner, [*runner.overrides(1, output_dir), "--optim.max_steps=4", "--engine.checkpoint_every=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stderr
    assert [path.name for path in list_checkpoints(output_dir / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]
    for checkpoint in list_checkpoints(output_dir / "checkpoints"):  # the frozen VLM and UNet are never saved
        assert not [path.name for path in checkpoint.iterdir() if path.name.startswith(("model", "pytorch_model"))]
    assert load_adapter_file(output_dir / DEFAULT_EXPORT_NAME).config.num_image_tokens == 4


def _checkpoint_race():
    spec = importlib.util.spec_from_file_location("checkpoint_race", REPO_ROOT / "bench" / "checkpoint_race.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("disk", ["shared", "node-local"])
def test_checkpoints_with_a_slowed_rank_are_complete_on_every_disk(disk, tmp_path):
    """Rank 1 is held back before it writes its files, three checkpoints in a row; without
    the barrier before the rename its RNG state lands in a renamed folder (or nowhere)."""
    race = _checkpoint_race()
    result = race.launch(tmp_path, saves=3, disk=disk, timeout=HUNG_AFTER_S)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [tmp_path] if disk == "shared" else [tmp_path / "node0", tmp_path / "node1"]
    for run, ranks in zip(runs, [[0, 1]] if disk == "shared" else [[0], [1]]):
        newest = list_checkpoints(run / "checkpoints")[-1]
        names = {path.name for path in newest.iterdir()}
        # The shared parts on every disk; each process's RNG state on its own node's disk.
        assert {"optimizer.bin", "trainer_state.json", "m2chat-adapter.safetensors"} <= names, names
        assert {name for name in names if name.startswith("random_states")} == {f"random_states_{rank}.pkl" for rank in ranks}


def test_two_launched_processes_never_train_as_two_separate_runs(runner, tmp_path):
    """torchrun starts 2 processes without ACCELERATE_USE_CPU. Where accelerate sees each as
    a run of its own (1.15 on a CPU machine), they would overwrite each other's output
    folder: refused, naming the fix. Where it joins them into one 2-process run (1.10), that
    run is fine: its checkpoints record 2 processes."""
    result = _torchrun_stage1(runner, [*runner.overrides(1, tmp_path / "run"), "--optim.max_steps=1",
                                       "--engine.checkpoint_every=1"], use_cpu=False)
    if result.returncode == 0:
        newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
        assert json.loads((newest / "trainer_state.json").read_text())["num_processes"] == 2
        return
    assert f"exitcode  : {EXIT_RUN_FAULT}" in result.stderr, result.stderr[-3000:]
    assert "The launcher started 2 processes (WORLD_SIZE=2), but accelerate sees 1" in result.stderr
    assert "ACCELERATE_USE_CPU=true" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# Resume at another process count: a global step is batch 2 x accumulation x processes = 4
# samples either way, 6 steps, a checkpoint at step 3.
RESUME_RUN = ["--optim.max_steps=6", "--engine.checkpoint_every=3"]


def _run_stage1(runner, output_dir: Path, processes: int, extra: list[str] = ()) -> subprocess.CompletedProcess:
    arguments = [*runner.overrides(1, output_dir), *RESUME_RUN,
                 f"--optim.gradient_accumulation_steps={2 // processes}", *extra]
    result = runner.run(1, arguments) if processes == 1 else _torchrun_stage1(runner, arguments)
    return result


@pytest.fixture(scope="module")
def uninterrupted(runner, tmp_path_factory) -> dict[int, Path]:
    """The same 6 steps run uninterrupted by 2 processes and by 1 with twice the accumulation."""
    runs = {}
    for processes in (2, 1):
        runs[processes] = tmp_path_factory.mktemp(f"uninterrupted-{processes}")
        result = _run_stage1(runner, runs[processes], processes)
        assert result.returncode == 0, result.stderr[-3000:]
    return runs


def _resumed_from_step_3(runner, run: Path, output_dir: Path, processes: int) -> Path:
    """Continue `run` from its step-3 checkpoint in a fresh folder (so its logs hold steps 4-6 only)."""
    shutil.copytree(run / "checkpoints" / "checkpoint-3", output_dir / "checkpoints" / "checkpoint-3")
    shutil.copy(run / CONFIG_FILE_NAME, output_dir / CONFIG_FILE_NAME)
    result = _run_stage1(runner, output_dir, processes, ["--resume=latest"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from" in result.stderr
    return output_dir


def _scalars(run: Path, tag: str) -> dict[int, float]:
    events = EventAccumulator(str(run / "logs" / "m2chat-stage1"))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def test_two_processes_and_one_with_twice_the_accumulation_train_the_same_steps(uninterrupted):
    """The same samples and noise per global step, the same schedule, the logged loss the mean
    over processes: 2 DDP processes and 1 process accumulating 2 batches are the same run."""
    two, one = uninterrupted[2], uninterrupted[1]
    assert _scalars(two, "train/lr") == pytest.approx(_scalars(one, "train/lr"), abs=1e-12)
    assert list(_scalars(two, "train/lr")) == [1, 2, 3, 4, 5, 6]
    assert _scalars(two, "train/total") == pytest.approx(_scalars(one, "train/total"), abs=1e-5)
    assert_runs_took_the_same_steps(two, one)
    state = json.loads((two / "checkpoints" / "checkpoint-3" / STATE_FILE_NAME).read_text())
    assert state == {"stage": 1, "global_step": 3, "samples_seen": 12, "global_batch": 4, "max_steps": 6,
                     "num_processes": 2}


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_resume_at_another_process_count_continues_the_uninterrupted_run(runner, uninterrupted, tmp_path, before, after):
    resumed = _resumed_from_step_3(runner, uninterrupted[before], tmp_path, after)
    assert _scalars(resumed, "train/lr") == pytest.approx(
        {step: lr for step, lr in _scalars(uninterrupted[before], "train/lr").items() if step > 3}, abs=1e-12)
    assert_runs_took_the_same_steps(resumed, uninterrupted[before])


def test_resume_with_another_global_batch_is_refused_naming_the_setting(runner, uninterrupted, tmp_path):
    shutil.copytree(uninterrupted[2] / "checkpoints", tmp_path / "checkpoints")
    result = runner.run(1, [*runner.overrides(1, tmp_path), *RESUME_RUN, "--resume=latest"])
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr[-3000:]
    assert "global batch of 4 samples per step (2 processes); this run's is 2" in result.stderr
    assert "set --optim.gradient_accumulation_steps=2" in result.stderr
    assert "Loaded VLM" not in result.stderr  # refused before the models load

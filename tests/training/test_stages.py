"""Both stages through their real entry points (subprocesses), on the tiny assets: exports
that m2chat_core loads, bad samples skipped and reported, TensorBoard logs, an export on
demand from a checkpoint, and a kill -9 during stage 1 resumed to the uninterrupted result."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from comfyui_env import HUNG_AFTER_S
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness.training import STAGE1_RUN
from m2chat_core.adapter_file import load_adapter_file
from train.checkpoints import ADAPTER_FILE_NAME, STATE_FILE_NAME, list_checkpoints, read_state
from train.export import main as export_main
from train.trainer import DEFAULT_EXPORT_NAME


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    loaded = load_adapter_file(path)
    tensors = {f"adapter.{name}": tensor for name, tensor in loaded.adapter_state.items()}
    if loaded.vlm_deltas is not None:
        tensors.update({f"vlm.{name}": tensor for name, tensor in loaded.vlm_deltas.tensors.items()})
    return tensors


def _max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys()
    return max(float((first[name].float() - second[name].float()).abs().max()) for name in first)


def test_stage1_exports_an_adapter_file_that_loads(stage1):
    output_dir, result = stage1
    loaded = load_adapter_file(output_dir / DEFAULT_EXPORT_NAME)
    assert loaded.vlm_deltas is None  # stage 1 leaves the VLM alone
    assert loaded.config.trained_on_vlm == "vlm"
    assert loaded.training_config["optim"]["lr"] > 0  # the run's config travels in the file
    # ... with each file and folder by its name alone: a shared adapter shows none of the trainer's folders
    assert loaded.training_config["model"]["vlm"] == "vlm"
    assert "/" not in json.dumps(loaded.training_config)
    assert (loaded.config.num_image_tokens, loaded.config.width, loaded.config.chosen_layers) == (4, 64, (-1, 2, 1))
    assert "adapter" in result.stderr and "special_tokens" in result.stderr  # groups printed with their counts
    assert read_state(list_checkpoints(output_dir / "checkpoints")[-1]).global_step == 26


def test_corrupt_samples_are_skipped_counted_and_reported(stage1):
    output_dir, result = stage1
    assert "Skipped 3 bad samples in training (empty caption: 1, missing caption: 1, unreadable image: 1)" in result.stderr
    events = EventAccumulator(str(output_dir / "logs" / "m2chat-stage1"))
    events.Reload()
    assert events.Scalars("train/skipped_samples")[-1].value == 3


def test_tensorboard_logs_every_loss_term_and_the_gate(stage1, stage2):
    for output_dir, stage, terms in ((stage1[0], 1, ("ddpm", "align")), (stage2[0], 2, ("ddpm", "align", "text"))):
        events = EventAccumulator(str(output_dir / "logs" / f"m2chat-stage{stage}"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        for name in (*terms, "total", "gate"):
            assert f"train/{name}" in tags and f"validation/{name}" in tags
        assert "validation/align_mean_baseline" in tags


def test_stage2_exports_adapter_and_vlm_deltas(stage1, stage2):
    loaded = load_adapter_file(stage2[0] / DEFAULT_EXPORT_NAME)
    assert loaded.config.gate_mode == "learned"
    deltas = loaded.vlm_deltas
    assert deltas is not None and deltas.kind == "full"
    assert any("multi_modal_projector" in name for name in deltas.tensors)
    assert any(name.endswith("norm.weight") for name in deltas.tensors)
    stage1_file = load_adapter_file(stage1[0] / DEFAULT_EXPORT_NAME)
    changed = (loaded.adapter_state["learned_gate.scale"] != stage1_file.adapter_state["learned_gate.scale"]).item()
    assert changed  # the gate's M³FT factor trains in stage 2
    assert loaded.training_config["init_from"] == DEFAULT_EXPORT_NAME  # the stage-1 file, by name


def test_export_on_demand_from_a_checkpoint(stage1, tmp_path):
    checkpoint = list_checkpoints(stage1[0] / "checkpoints")[-1]
    out = tmp_path / "models" / "m2chat" / "from-checkpoint.safetensors"
    assert export_main([str(checkpoint), "--out", str(out)]) == 0
    assert _max_difference(_tensors(out), _tensors(stage1[0] / DEFAULT_EXPORT_NAME)) == 0.0
    assert load_adapter_file(out).training_config == load_adapter_file(stage1[0] / DEFAULT_EXPORT_NAME).training_config
    run_folder_export = tmp_path / "latest.safetensors"
    assert export_main([str(stage1[0]), "--out", str(run_folder_export)]) == 0  # a run folder: its latest checkpoint
    assert _max_difference(_tensors(run_folder_export), _tensors(out)) == 0.0
    assert export_main([str(tmp_path / "nothing-here"), "--out", str(out)]) == 1


def test_half_precision_export_of_stage2_keeps_every_tensor_to_fp16_rounding(stage2, tmp_path):
    out = tmp_path / "half.safetensors"
    assert export_main([str(stage2[0]), "--out", str(out), "--dtype", "float16"]) == 0
    half, full = _tensors(out), _tensors(stage2[0] / DEFAULT_EXPORT_NAME)
    assert {tensor.dtype for tensor in half.values()} == {torch.float16}
    assert any(name.startswith("vlm.") for name in half)  # the stage-2 VLM deltas too
    for name, tensor in full.items():
        torch.testing.assert_close(half[name].float(), tensor.float(), rtol=1e-3, atol=1e-4)
    assert out.stat().st_size < 0.6 * (stage2[0] / DEFAULT_EXPORT_NAME).stat().st_size


def test_ablation_settings_epochs_0_exports_the_start_and_ddpm_weight_0_trains_on_l_align_alone(
        runner, stage1, tmp_path):
    start = tmp_path / "start"
    result = runner.run(1, runner.overrides(1, start) + ["--optim.epochs=0"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_state(list_checkpoints(start / "checkpoints")[-1]).global_step == 0
    untrained = _tensors(start / DEFAULT_EXPORT_NAME)  # what stage 1 starts from: the base of "stage 2 without stage 1"
    assert _max_difference(untrained, _tensors(stage1[0] / DEFAULT_EXPORT_NAME)) > 1e-3

    align_only = tmp_path / "align-only"
    result = runner.run(1, runner.overrides(1, align_only) + ["--loss.ddpm_weight=0", "--optim.max_steps=3"])
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(align_only / "logs" / "m2chat-stage1"))
    events.Reload()
    scalars = {name: [event.value for event in events.Scalars(f"train/{name}")] for name in ("ddpm", "align", "total")}
    assert len(scalars["total"]) == 3 and all(value == 0.0 for value in scalars["ddpm"])
    assert scalars["total"] == pytest.approx(scalars["align"])  # φ = 1: L = L_align alone
    assert _max_difference(_tensors(align_only / DEFAULT_EXPORT_NAME), untrained) > 0  # it trained


def _assert_checkpoints_complete(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue  # a staging folder: never read as a checkpoint, removed on the next start
        assert (entry / STATE_FILE_NAME).is_file(), f"incomplete checkpoint {entry}"
        load_adapter_file(entry / ADAPTER_FILE_NAME)


def _wait_for(path: Path, process) -> None:
    """Until the running stage writes `path` (e.g. a checkpoint)."""
    deadline = time.monotonic() + HUNG_AFTER_S  # a hang guard only: the loaded machine may be slow
    while not path.exists():
        assert process.poll() is None, f"the run ended before it wrote {path.name}"
        assert time.monotonic() < deadline, f"no {path.name} appeared: the run hangs"
        time.sleep(0.05)


def test_kill_during_stage1_then_resume_latest_matches_uninterrupted_run(runner, stage1, tmp_path):
    output_dir = tmp_path / "killed"
    arguments = runner.overrides(1, output_dir) + STAGE1_RUN + ["--engine.report_to=none", "--data.validation=[]"]
    process = runner.start(1, arguments)
    checkpoints = output_dir / "checkpoints"
    _wait_for(checkpoints / "checkpoint-10", process)
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert not (output_dir / DEFAULT_EXPORT_NAME).exists()
    _assert_checkpoints_complete(checkpoints)
    assert read_state(list_checkpoints(checkpoints)[-1]).global_step < 26

    resumed = runner.run(1, arguments + ["--resume=latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr
    difference = _max_difference(_tensors(output_dir / DEFAULT_EXPORT_NAME), _tensors(stage1[0] / DEFAULT_EXPORT_NAME))
    assert difference <= 1e-6


def test_a_crash_below_python_names_the_python_code_it_hit(runner, tmp_path):
    """A C++ abort (a collective's thread at the end of a distributed run, a kernel's fault)
    prints every thread's Python stack, not only a signal number."""
    output_dir = tmp_path / "aborted"
    arguments = runner.overrides(1, output_dir) + STAGE1_RUN + ["--engine.report_to=none", "--data.validation=[]"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = runner.start(1, arguments, stderr=stderr)
        _wait_for(output_dir / "checkpoints" / "checkpoint-10", process)
        process.send_signal(signal.SIGABRT)
        assert process.wait() == -signal.SIGABRT
    text = log.read_text()
    assert "Fatal Python error: Aborted" in text, text[-3000:]
    assert "train/trainer.py" in text and "Current thread" in text, text[-3000:]

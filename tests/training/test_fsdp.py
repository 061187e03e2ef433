"""FSDP2 over two CPU processes (gloo). First the adapter alone under PyTorch's `fully_shard`:
the gate's one-element parameters shard, two sharded processes take the same optimizer steps
as one process on both batches, the adapter file is written from the gathered state. Then
M³FT stage 1 and 2 under `accelerate launch` with the shipped `train/accelerate/fsdp.yaml`
(changed only where a CPU machine needs it; harness/fsdp_on_cpu.py lets accelerate's FSDP
path run on CPU processes): the same steps as one process accumulating the same batches,
sharded parameters, checkpoints without frozen weights that resume at another process count."""

import os
import re
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from comfyui_env import HUNG_AFTER_S
from harness.training import SHARDED_REDUCTION_ATOL, REPO_ROOT, assert_runs_took_the_same_steps, assert_same_steps
from process_groups import free_port, run_launcher

from m2chat_core.adapter_file import load_adapter_file
from m2chat_core.gate import INITIAL_GATE_SCALE
from train.checkpoints import CONFIG_FILE_NAME, FSDP_OPTIMIZER_FILE_NAME, list_checkpoints
from train.trainer import DEFAULT_EXPORT_NAME

SHIPPED_CONFIG = REPO_ROOT / "train" / "accelerate" / "fsdp.yaml"
ON_CPU = REPO_ROOT / "tests" / "harness" / "fsdp_on_cpu.py"
# Stage 1: 4 steps of 2 x 2 samples, a checkpoint at step 2; stage 2: 12 dialogues, 3 steps.
# A learning rate that falls each step, so a schedule not applied (or not resumed) shows.
RUN = ["--engine.checkpoint_every=2", "--optim.lr_scheduler=linear"]
STAGE1_RUN = [*RUN, "--optim.max_steps=4"]

WORKER = textwrap.dedent("""
    import copy, os, sys
    from pathlib import Path
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from m2chat_core.adapter import M3Adapter, M3AdapterConfig
    from m2chat_core.adapter_file import save_adapter_file
    from m2chat_core.encoding import VLMFeatures
    from train.sharding import gathered_state_dict

    dist.init_process_group("gloo")
    rank, out = dist.get_rank(), Path(sys.argv[1])
    config = M3AdapterConfig(vlm_hidden_size=16, vision_feature_size=12, chosen_layers=(-1, -2), width=16,
                             depth=2, heads=2, num_image_tokens=4, gate_mode="learned")
    torch.manual_seed(0)
    reference = M3Adapter(config)
    sharded = copy.deepcopy(reference)
    mesh = init_device_mesh("cpu", (2,))
    for block in sharded.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(sharded, mesh=mesh)  # the rest, the gate's a and b included
    assert all(type(parameter).__name__ == "DTensor" for parameter in sharded.parameters())

    def features(seed):
        generator = torch.Generator().manual_seed(seed)
        return VLMFeatures(
            caption_hidden_states=torch.randn(2, 2, 6, 16, generator=generator),
            caption_mask=torch.ones(2, 6, dtype=torch.bool),
            answer_embedding=torch.randn(2, 16, generator=generator),
            caption_embedding=torch.randn(2, 16, generator=generator),
            has_answer=torch.ones(2, dtype=torch.bool),
            image_features=torch.randn(2, 5, 12, generator=generator),
        )

    def loss(adapter, batch):
        output = adapter(batch)
        return output.context.square().mean() + output.pooled.square().mean() + output.gate.mean()

    optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-2) for model in (reference, sharded)]
    for step in range(3):
        batches = [features(10 * step), features(10 * step + 1)]  # process i trains on batch i
        loss(sharded, batches[rank]).backward()  # FSDP2 averages the gradients over processes
        ((loss(reference, batches[0]) + loss(reference, batches[1])) / 2).backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    state = gathered_state_dict(sharded)  # every process: a collective
    if rank == 0:
        save_adapter_file(out / "sharded.safetensors", sharded, adapter_state=state)
        save_adapter_file(out / "reference.safetensors", reference)
    dist.barrier()
    dist.destroy_process_group()
    # Leave without finalizing the interpreter: fully_shard's modules keep gloo's group alive, and
    # its worker thread, still releasing a finished collective's tensors, aborted the process
    # during finalization ("terminate called without an active exception"; 2 runs in 20 under load).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
""")


def test_fully_sharded_adapter_trains_like_one_process_and_exports_gathered(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", free_port(), str(script), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = run_launcher(command, cwd=REPO_ROOT, env=env, timeout=HUNG_AFTER_S)
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = load_adapter_file(tmp_path / "sharded.safetensors").adapter_state
    reference = load_adapter_file(tmp_path / "reference.safetensors").adapter_state
    assert sharded["learned_gate.scale"].shape == (1,)
    assert_same_steps(sharded, reference)
    assert abs(float(sharded["learned_gate.scale"]) - INITIAL_GATE_SCALE) > 1e-4  # the sharded gate trained


def _on_cpu_processes(folder: Path, processes: int) -> Path:
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config.update(num_processes=processes, use_cpu=True, mixed_precision="no")
    path = folder / f"fsdp-cpu-{processes}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(runner, folder: Path, processes: int, stage: int, output_dir: Path, arguments: list[str], *,
            fsdp_on_cpu: bool = True):
    """accelerate launch with the shipped FSDP config; `fsdp_on_cpu=False`: as a user would on a
    machine without GPUs, where accelerate leaves FSDP off."""
    entry = [str(ON_CPU), f"train.stage{stage}"] if fsdp_on_cpu else ["-m", f"train.stage{stage}"]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(_on_cpu_processes(folder, processes)),
               "--main_process_port", free_port(), *entry, *runner.overrides(stage, output_dir), *arguments]
    return run_launcher(command, cwd=REPO_ROOT, env=runner.launcher_env(), timeout=HUNG_AFTER_S)


@pytest.fixture(scope="module")
def fsdp_stage1(runner, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fsdp-stage1")
    result = _launch(runner, folder, 2, 1, folder / "run", STAGE1_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 2 x 1 accumulation x 2 processes" in result.stderr
    held, whole = (int(count.replace(",", "")) for count in re.search(
        r"FSDP: each process holds ([\d,]+) of the model's ([\d,]+) parameters", result.stderr).groups())
    assert whole > 2_000_000 and held < 0.51 * whole, (held, whole)  # the VLM, UNet and adapter sharded
    return folder / "run"


def test_stage1_under_fsdp_takes_the_same_steps_as_one_process(runner, fsdp_stage1, tmp_path):
    arguments = [*runner.overrides(1, tmp_path), *STAGE1_RUN, "--optim.gradient_accumulation_steps=2"]
    result = runner.run(1, arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_runs_took_the_same_steps(fsdp_stage1, tmp_path, atol=SHARDED_REDUCTION_ATOL)


def test_fsdp_checkpoints_hold_only_the_trained_weights_and_their_optimizer_state(runner, fsdp_stage1):
    frozen = sum(path.stat().st_size for path in runner.assets.rglob("*.safetensors"))
    checkpoints = list_checkpoints(fsdp_stage1 / "checkpoints")
    assert [path.name for path in checkpoints] == ["checkpoint-2", "checkpoint-4"]
    for checkpoint in checkpoints:
        assert (checkpoint / FSDP_OPTIMIZER_FILE_NAME).is_file()
        assert not list(checkpoint.glob("pytorch_model_fsdp*")) and not list(checkpoint.glob("optimizer*"))
        saved = sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file())
        # The trained 0.33 M parameters with their AdamW state: about 4 MB; the frozen VLM and SDXL: 96 MB.
        assert saved < frozen / 10, (checkpoint.name, saved, frozen)


def _copy_checkpoint_2(run: Path, output_dir: Path) -> None:
    shutil.copytree(run / "checkpoints" / "checkpoint-2", output_dir / "checkpoints" / "checkpoint-2")
    shutil.copy(run / CONFIG_FILE_NAME, output_dir / CONFIG_FILE_NAME)


def test_fsdp_checkpoint_resumed_on_one_process_ends_where_the_two_process_run_does(runner, fsdp_stage1, tmp_path):
    """The optimizer state is stored whole, so one process takes over the two's shards."""
    _copy_checkpoint_2(fsdp_stage1, tmp_path / "run")
    result = _launch(runner, tmp_path, 1, 1, tmp_path / "run",
                     [*STAGE1_RUN, "--optim.gradient_accumulation_steps=2", "--resume=latest"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("Resumed from") == 1, result.stderr[-3000:]
    assert_runs_took_the_same_steps(tmp_path / "run", fsdp_stage1, atol=SHARDED_REDUCTION_ATOL)


def test_fsdp_checkpoint_resumed_without_fsdp_is_refused_with_the_fix(runner, fsdp_stage1, tmp_path):
    """On CPU processes accelerate leaves the FSDP config off: the run says so, and does not take
    an FSDP checkpoint for its own."""
    _copy_checkpoint_2(fsdp_stage1, tmp_path / "run")
    result = _launch(runner, tmp_path, 1, 1, tmp_path / "run",
                     [*STAGE1_RUN, "--optim.gradient_accumulation_steps=2", "--resume=latest"], fsdp_on_cpu=False)
    assert result.returncode != 0
    assert "The accelerate config asks for FSDP, but accelerate left it off (it runs FSDP on GPUs only)" in result.stderr
    assert f"train.cli: Cannot resume: {tmp_path / 'run' / 'checkpoints' / 'checkpoint-2'} was written by a run under " \
           "FSDP, and this run is not" in result.stderr, result.stderr[-3000:]
    assert "Resume it with the accelerate config of the run that wrote it." in result.stderr
    assert "Loaded VLM" not in result.stderr  # refused before the models load


def test_stage2_under_fsdp_takes_the_same_steps_as_one_process(runner, stage1, tmp_path):
    """Stage 2 trains the VLM's projector and norms too: they are sharded in the VLM's layers."""
    init_from = f"--init-from={stage1[0] / DEFAULT_EXPORT_NAME}"
    sharded = _launch(runner, tmp_path, 2, 2, tmp_path / "fsdp", [init_from, *RUN])
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    one = runner.run(2, [*runner.overrides(2, tmp_path / "one"), init_from, *RUN, "--optim.gradient_accumulation_steps=2"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert_runs_took_the_same_steps(tmp_path / "fsdp", tmp_path / "one", atol=SHARDED_REDUCTION_ATOL)

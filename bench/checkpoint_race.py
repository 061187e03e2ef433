"""Checkpoints under several processes with one rank deliberately slowed while it saves.

    python bench/checkpoint_race.py [--runs 20] [--saves 3] [--disk shared|node-local]

Each run is `torchrun` with 2 processes on the CPU (gloo) running `--worker`: a few
optimizer steps of a tiny model, a checkpoint after each, rank 1 held back before it
writes its files (so without the barrier, rank 0 would rename the staging folder under
it). `--disk node-local` runs two simulated nodes (`--nnodes 2`), each with an output
folder of its own, as machines without a shared filesystem have. The worker checks every
checkpoint it can see and that each process can load the newest; the script prints how
many runs finished clean. tests/training/test_distributed.py runs the worker too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from process_groups import free_port, run_launchers  # noqa: E402

SLOW_RANK = 1
SLOW_RANK_DELAY_S = 0.5  # a delay that makes the race (without the barrier) happen every time, not a limit
TOTAL_LIMIT = 2


def launch(output_dir: Path, saves: int, disk: str, timeout: float) -> subprocess.CompletedProcess:
    """One run of 2 processes: one torchrun agent, or one per simulated node (`--nnodes 2`)."""
    port = free_port()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
                   "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    nodes = [["--nproc_per_node", "2"]] if disk == "shared" else [
        ["--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1"] for rank in range(2)]
    commands = [[sys.executable, "-m", "torch.distributed.run", *node, "--master_addr", "127.0.0.1",
                 "--master_port", port, __file__, "--worker", str(output_dir), "--saves", str(saves), "--disk", disk]
                for node in nodes]
    return run_launchers(commands, timeout=timeout, cwd=REPO_ROOT, env=environment)


def worker(output_dir: Path, saves: int, disk: str) -> None:
    import torch
    from accelerate import Accelerator

    from train.checkpoints import ADAPTER_FILE_NAME, TrainerState, list_checkpoints, output_is_shared, read_state, save_checkpoint

    accelerator = Accelerator(cpu=True)
    # Simulated node-local disks: each node (torchrun agent) writes under a folder of its own.
    run_dir = output_dir / f"node{os.environ['GROUP_RANK']}" if disk == "node-local" else output_dir
    output_shared = output_is_shared(accelerator, run_dir)
    assert output_shared == (disk == "shared" or accelerator.is_main_process), f"rank {accelerator.process_index} judged the disk wrongly"
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)

    def slow_down(models, weights, folder):  # runs on every process before it writes its files
        if accelerator.process_index == SLOW_RANK:
            time.sleep(SLOW_RANK_DELAY_S)

    accelerator.register_save_state_pre_hook(slow_down)
    folder = run_dir / "checkpoints"
    for step in range(1, saves + 1):
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        save_checkpoint(accelerator, folder, TrainerState(stage=1, global_step=step),
                        lambda staging: (staging / ADAPTER_FILE_NAME).write_bytes(b"adapter"), TOTAL_LIMIT,
                        output_shared=output_shared)
    kept = list_checkpoints(folder)
    assert [path.name for path in kept] == [f"checkpoint-{step}" for step in range(max(1, saves - TOTAL_LIMIT + 1), saves + 1)], kept
    assert not [path.name for path in folder.iterdir() if path.name.startswith(".")], list(folder.iterdir())
    newest = kept[-1]
    assert read_state(newest).global_step == saves
    assert (newest / f"random_states_{accelerator.process_index}.pkl").is_file()
    accelerator.load_state(str(newest))  # every process resumes from the checkpoint on its own disk
    print(f"rank {accelerator.process_index}: {', '.join(sorted(path.name for path in newest.iterdir()))}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--disk", choices=["shared", "node-local"], default="shared")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        worker(arguments.worker, arguments.saves, arguments.disk)
        return 0
    clean = 0
    for run in range(arguments.runs):
        with tempfile.TemporaryDirectory() as folder:
            result = launch(Path(folder), arguments.saves, arguments.disk, timeout=3600)
        clean += result.returncode == 0
        if result.returncode:
            print(f"run {run + 1}: FAILED\n{result.stderr[-2000:]}")
    print(f"{clean}/{arguments.runs} runs of 2 processes ({arguments.disk} disk, rank {SLOW_RANK} slowed, "
          f"{arguments.saves} checkpoints each) finished with every checkpoint complete")
    return 0 if clean == arguments.runs else 1


if __name__ == "__main__":
    sys.exit(main())

"""Stage 1 as two data-parallel processes (torchrun on the CPU, gloo backend): the same
code paths as `accelerate launch` on several GPUs — sharded batches, gradient sync,
checkpoints and the export written by the main process only."""

import socket
import subprocess
import sys

from comfyui_env import HUNG_AFTER_S
from harness.training import REPO_ROOT
from m2chat_core.adapter_file import load_adapter_file
from train.checkpoints import list_checkpoints
from train.trainer import DEFAULT_EXPORT_NAME


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_two_process_stage1_trains_checkpoints_and_exports(runner, tmp_path):
    output_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", _free_port(),
               "-m", "train.stage1", *runner.overrides(1, output_dir), "--optim.max_steps=4",
               "--engine.checkpoint_every=2"]
    env = {**runner.env(), "ACCELERATE_USE_CPU": "true"}  # accelerate's multi-CPU (gloo) mode
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=HUNG_AFTER_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stderr
    assert [path.name for path in list_checkpoints(output_dir / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]
    assert load_adapter_file(output_dir / DEFAULT_EXPORT_NAME).config.num_image_tokens == 4

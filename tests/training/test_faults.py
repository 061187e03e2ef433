"""Training faults end with a message naming the file and the fix, and leave nothing
half-written: unreadable shards, a full disk while checkpointing, a read-only output.

The disk faults run in a private mount namespace (`unshare --user --map-root-user
--mount`) holding a small tmpfs, so they need neither root nor a real full disk."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from comfyui_env import HUNG_AFTER_S

from train.checkpoints import ADAPTER_FILE_NAME, list_checkpoints
from train.cli import EXIT_CONFIG_ERROR, EXIT_RUN_FAULT
from train.data.shards import ImageTextShards
from train.faults import DataFault
from train.trainer import DEFAULT_EXPORT_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]


def _corrupt_shard(path: Path) -> Path:
    path.write_bytes(b"this is not a tar archive" * 40)
    return path


def test_corrupt_shard_among_good_ones_is_skipped_named_and_counted(assets, tmp_path, caplog):
    good = assets / "shards" / "train-000001.tar"
    bad = _corrupt_shard(tmp_path / "train-broken.tar")
    alone = ImageTextShards([good], resolution=64, crop="center", seed=0)
    with caplog.at_level(logging.WARNING, logger="train.data.shards"):
        mixed = ImageTextShards([bad, good], resolution=64, crop="center", seed=0)
    assert len(mixed) == len(alone) > 0
    assert [span.path for span in mixed.spans] == [good] and list(mixed.unreadable_shards) == [bad]
    assert str(bad) in caplog.text
    assert mixed.load(0, decode_target=False).key == alone.load(0, decode_target=False).key


def test_only_corrupt_shards_raise_a_fault_naming_each(tmp_path):
    bad = [_corrupt_shard(tmp_path / f"train-{number}.tar") for number in range(2)]
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(DataFault, match="no readable training shard") as raised:
        ImageTextShards([*bad, tmp_path / "empty.tar"], resolution=64, crop="center", seed=0)
    assert all(str(path) in str(raised.value) for path in bad) and "empty.tar" in str(raised.value)


def _in_private_tmpfs(mount_options: str, script: str, arguments: list[str]) -> subprocess.CompletedProcess:
    """Run `python -c script MOUNT *arguments` with a fresh tmpfs (`mount_options`) at MOUNT."""
    unshare = shutil.which("unshare")
    probe = [unshare, "--user", "--map-root-user", "--mount", "true"] if unshare else None
    if not probe or subprocess.run(probe, capture_output=True, timeout=HUNG_AFTER_S).returncode:
        pytest.skip("needs unshare with user and mount namespaces to mount a small tmpfs")
    shell = 'mount -t tmpfs -o "$1" tmpfs /mnt && shift && exec "$@"'
    command = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", shell, "sh", mount_options,
               sys.executable, "-c", script, "/mnt", *arguments]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                          timeout=HUNG_AFTER_S)


CHECKPOINT_ON_SMALL_DISK = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from accelerate import Accelerator
    from train.checkpoints import TrainerState, list_checkpoints, save_checkpoint
    from train.faults import OutputFault

    folder = Path(sys.argv[1]) / "run" / "checkpoints"
    accelerator = Accelerator(cpu=True)
    weights_mib, optimizer_steps, adapter_mib = map(int, sys.argv[2:])
    model = torch.nn.Linear(256, 1024 * weights_mib, bias=False)  # saved by accelerate with safetensors
    optimizer = torch.optim.Adam(model.parameters())  # its state (2x the weights) saved with torch.save
    model, optimizer = accelerator.prepare(model, optimizer)
    for _ in range(optimizer_steps):
        model(torch.ones(1, 256)).sum().backward()
        optimizer.step()
    def write_files(staging):  # written by the trainer
        (staging / "m2chat-adapter.safetensors").write_bytes(bytes(adapter_mib << 20))
    try:
        save_checkpoint(accelerator, folder, TrainerState(stage=1, global_step=7), write_files, 3)
    except OutputFault as fault:
        print("FAULT:", fault)
    print("LEFT:", sorted(path.name for path in folder.iterdir()))
""")


@pytest.mark.parametrize("sizes", [(8, 0, 0), (1, 1, 0), (1, 0, 4)],
                         ids=["model-safetensors", "optimizer-torch-save", "adapter-file"])
def test_full_disk_during_a_checkpoint_says_so_and_leaves_no_staging_folder(sizes):
    result = _in_private_tmpfs("size=3m", CHECKPOINT_ON_SMALL_DISK, [str(size) for size in sizes])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FAULT: no space left on /mnt/run/checkpoints: free space or point engine.output_dir elsewhere." \
        in result.stdout, result.stdout + result.stderr[-3000:]
    assert "LEFT: []" in result.stdout


TRAIN_INTO_READ_ONLY = textwrap.dedent("""
    import sys
    from train.cli import run
    from train.config import Stage1Config
    sys.exit(run(Stage1Config, sys.argv[2:] + [f"--engine.output_dir={sys.argv[1]}/run"]))
""")


def test_read_only_output_dir_is_refused_with_the_fix(runner, tmp_path):
    result = _in_private_tmpfs("ro,size=1m", TRAIN_INTO_READ_ONLY, runner.overrides(1, tmp_path)[:-1])
    assert result.returncode == EXIT_RUN_FAULT, result.stderr[-3000:]
    assert "cannot write to /mnt/run (Read-only file system): make it writable or point engine.output_dir " \
           "elsewhere." in result.stderr
    assert "Traceback" not in result.stderr


def test_resuming_stage_2_from_a_stage_1_checkpoint_names_init_from(runner, stage1, tmp_path):
    checkpoint = list_checkpoints(stage1[0] / "checkpoints")[-1]
    arguments = [*runner.overrides(2, tmp_path), f"--init-from={stage1[0] / DEFAULT_EXPORT_NAME}",
                 f"--resume={checkpoint}"]
    result = runner.run(2, arguments)
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr[-3000:]
    assert f"Cannot resume: {checkpoint} is a stage-1 checkpoint; this is stage 2. To start stage 2 from it, pass " \
           f"--init-from {checkpoint / ADAPTER_FILE_NAME} without --resume." in result.stderr
    assert "Traceback" not in result.stderr
    assert "Loaded VLM" not in result.stderr  # refused before the models load

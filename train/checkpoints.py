"""Atomic training checkpoints: `<output_dir>/checkpoints/checkpoint-<step>/`.

A checkpoint holds accelerate's state (optimizer, LR scheduler, RNG states, sampler),
the trained weights as an adapter file (adapter + VLM deltas, the same format as the
export), `trainer_state.json` and the run's `config.yaml`. Under FSDP accelerate would
save the whole sharded model (the frozen VLM and SDXL too), so it saves only the
scheduler, sampler and RNG states, and the optimizer state goes in whole, keyed by
parameter name (`fsdp_optimizer.bin`): it resumes at any process count. It is written
into a hidden staging folder and renamed into place when complete, so a killed run never
leaves a half-written `checkpoint-*`; leftover staging folders are removed on the next
start. A save that fails (a full disk, a read-only folder) removes its staging folder and raises
OutputFault saying what to do.

Several processes: every process writes its own RNG state, so the folder is renamed only
after a barrier that every process reaches once its files are written. On a filesystem
shared by all nodes, global rank 0 writes the shared parts (optimizer, scheduler, sampler,
adapter file, trainer state) and renames; on node-local disks (`output_shared=False` on
that node, see `output_is_shared`) each node's local rank 0 writes the shared parts and
renames its own copy, so every node can resume from its disk.
Rotation keeps the newest `engine.checkpoint_total_limit` (accelerate's own rotation
only works with its in-place automatic naming, which cannot be atomic).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list
from safetensors import SafetensorError

from .faults import output_fault

logger = logging.getLogger(__name__)

ADAPTER_FILE_NAME = "m2chat-adapter.safetensors"
STATE_FILE_NAME = "trainer_state.json"
CONFIG_FILE_NAME = "config.yaml"
FSDP_OPTIMIZER_FILE_NAME = "fsdp_optimizer.bin"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_STAGING_PREFIX = ".staging-"


class CheckpointError(FileNotFoundError):
    """A checkpoint folder is missing or incomplete."""


@dataclass(frozen=True)
class TrainerState:
    """Where a run stands, in units that do not depend on the number of processes."""

    stage: int
    global_step: int  # optimizer steps completed
    samples_seen: int | None = None  # training samples consumed: global_step x global_batch (None: older checkpoints)
    global_batch: int | None = None  # batch_size x gradient_accumulation_steps x processes
    max_steps: int | None = None  # length of the LR schedule, in optimizer steps
    num_processes: int | None = None  # processes of the run that wrote the checkpoint


def checkpoints_folder(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := _CHECKPOINT.match(path.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    checkpoints = list_checkpoints(folder)
    return checkpoints[-1] if checkpoints else None


def read_state(checkpoint: Path) -> TrainerState:
    state_file = checkpoint / STATE_FILE_NAME
    if not state_file.is_file() or not (checkpoint / ADAPTER_FILE_NAME).is_file():
        raise CheckpointError(
            f"{checkpoint} is not a complete m2chat checkpoint (it needs {STATE_FILE_NAME} and {ADAPTER_FILE_NAME})."
        )
    return TrainerState(**json.loads(state_file.read_text()))


def output_is_shared(accelerator: Accelerator, folder: Path) -> bool:
    """Whether this process sees the files global rank 0 writes into `folder` (one filesystem
    shared by all nodes) or a node-local disk of its own. Every process must call this."""
    probe = folder / f".probe-{broadcast_object_list([uuid.uuid4().hex])[0]}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch()
    accelerator.wait_for_everyone()
    shared = probe.exists()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        probe.unlink()
    return shared


def writes_shared_parts(accelerator: Accelerator, output_shared: bool) -> bool:
    """Global rank 0, plus each node's local rank 0 when that node's disk is its own."""
    return accelerator.is_main_process or (accelerator.is_local_main_process and not output_shared)


def remove_staging_leftovers(folder: Path) -> None:
    """Delete staging folders of a run that was killed while saving."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(_STAGING_PREFIX):
                logger.warning("Removing the unfinished checkpoint %s left by an interrupted run", path.name)
                shutil.rmtree(path)


def save_checkpoint(
    accelerator: Accelerator,
    folder: Path,
    state: TrainerState,
    write_files: Callable[[Path], None],
    total_limit: int,
    *,
    output_shared: bool = True,
) -> Path:
    """Save accelerate's state plus `write_files(staging folder)` (on the processes that write
    the shared parts) as checkpoint-<step>, atomically; every process must call this, with
    `output_shared` from `output_is_shared`."""
    final = folder / f"checkpoint-{state.global_step}"
    staging = folder / f"{_STAGING_PREFIX}checkpoint-{state.global_step}"
    writer = writes_shared_parts(accelerator, output_shared)
    accelerator.project_configuration.save_on_each_node = not output_shared  # where accelerate writes its shared files
    try:
        if writer:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        with _without_frozen_weights(accelerator, loading=False) as settings:
            accelerator.save_state(str(staging), **settings)
        if writer:
            write_files(staging)
            (staging / STATE_FILE_NAME).write_text(json.dumps(asdict(state)))
        accelerator.wait_for_everyone()  # every process's files are in staging (its RNG state at least)
        if writer:
            _fsync_tree(staging)
            if final.exists():  # a checkpoint of this step from an earlier, interrupted attempt
                shutil.rmtree(final)
            os.replace(staging, final)
            _fsync_directory(folder)
    except (OSError, RuntimeError, SafetensorError) as error:  # torch.save: RuntimeError; safetensors: its own
        fault = output_fault(folder, error)  # judged before the staging folder frees its space
        shutil.rmtree(staging, ignore_errors=True)
        raise fault from error
    if writer:
        for old in list_checkpoints(folder)[:-total_limit]:
            shutil.rmtree(old)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint_state(accelerator: Accelerator, checkpoint: Path) -> None:
    """accelerate's state of `checkpoint` (optimizer, scheduler, sampler, RNG states; under
    FSDP no optimizer: `read_fsdp_optimizer_state`)."""
    with _without_frozen_weights(accelerator, loading=True) as settings:
        accelerator.load_state(str(checkpoint), **settings)


def write_fsdp_optimizer_state(folder: Path, state: dict) -> None:
    torch.save(state, folder / FSDP_OPTIMIZER_FILE_NAME)


def read_fsdp_optimizer_state(checkpoint: Path) -> dict:
    # Tensors, numbers and names only: weights_only refuses anything else, so nothing is unpickled.
    return torch.load(checkpoint / FSDP_OPTIMIZER_FILE_NAME, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def _without_frozen_weights(accelerator: Accelerator, *, loading: bool) -> Iterator[dict[str, bool]]:
    """Inside: accelerate's save_state/load_state, with the settings it yields, leave the
    frozen weights out. DeepSpeed saves its engine (the model with its optimizer) itself:
    without the frozen weights, and loaded without them. Under FSDP accelerate would write the
    whole model and its optimizer sharded by process count, so both are hidden from it; the
    trainer writes the adapter file and fsdp_optimizer.bin instead. Elsewhere the trainer's
    state hooks drop the model."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        yield {"load_module_strict": False} if loading else {"exclude_frozen_parameters": True}
        return
    if accelerator.distributed_type != DistributedType.FSDP:
        yield {}
        return
    models, optimizers = accelerator._models, accelerator._optimizers
    accelerator._models, accelerator._optimizers = [], []
    try:
        yield {}
    finally:
        accelerator._models, accelerator._optimizers = models, optimizers


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
    _fsync_directory(folder)


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

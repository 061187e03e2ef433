"""Export the adapter file of a checkpoint (the end of a run does this by itself):

    python -m train.export CHECKPOINT --out models/m2chat/NAME.safetensors [--dtype float16]

CHECKPOINT is a `checkpoint-<step>` folder, or a run's output folder (its latest checkpoint).
--dtype stores the floating-point tensors in half precision (half the file; the nodes run
the adapter in the file's dtype); the default keeps the training dtype, float32.
The file is written atomically and validated by loading it back.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

from m2chat_core.adapter_file import AdapterFileError, load_adapter_file, save_adapter_file

from .checkpoints import (
    ADAPTER_FILE_NAME,
    STATE_FILE_NAME,
    CheckpointError,
    checkpoints_folder,
    latest_checkpoint,
    read_state,
)

logger = logging.getLogger(__name__)

EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_checkpoint(path: str | Path) -> Path:
    """`path` itself when it is a checkpoint, else the latest checkpoint of the run folder `path`."""
    path = Path(path)
    if (path / STATE_FILE_NAME).is_file():
        return path
    latest = latest_checkpoint(checkpoints_folder(path))
    if latest is None:
        raise CheckpointError(f"{path} is neither a checkpoint folder nor a run folder with checkpoints/.")
    return latest


def export_checkpoint(checkpoint: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write the adapter (and VLM deltas) of `checkpoint` to `out`, their floating-point
    tensors in `dtype` (an EXPORT_DTYPES name); returns `out`."""
    checkpoint = resolve_checkpoint(checkpoint)
    state = read_state(checkpoint)
    trained = load_adapter_file(checkpoint / ADAPTER_FILE_NAME)
    adapter = trained.build_adapter().to(EXPORT_DTYPES[dtype])
    deltas = trained.vlm_deltas
    if deltas is not None:
        deltas = dataclasses.replace(deltas, tensors={name: _cast(tensor, dtype) for name, tensor in deltas.tensors.items()})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_adapter_file(out, adapter, deltas, trained.training_config)
    load_adapter_file(out)
    logger.info("Exported stage-%d step %d (%s) to %s in %s", state.stage, state.global_step, checkpoint, out, dtype)
    return out


def _cast(tensor: torch.Tensor, dtype: str) -> torch.Tensor:
    return tensor.to(EXPORT_DTYPES[dtype]) if tensor.is_floating_point() else tensor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint-<step> folder or run output folder")
    parser.add_argument("--out", required=True, help="adapter file to write, e.g. models/m2chat/NAME.safetensors")
    parser.add_argument("--dtype", choices=list(EXPORT_DTYPES), default="float32",
                        help="dtype of the file's floating-point tensors (float16 halves the file)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        export_checkpoint(arguments.checkpoint, arguments.out, arguments.dtype)
    except (CheckpointError, AdapterFileError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

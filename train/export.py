"""Export the adapter file of a checkpoint (the end of a run does this by itself):

    python -m train.export CHECKPOINT --out models/m2chat/NAME.safetensors

CHECKPOINT is a `checkpoint-<step>` folder, or a run's output folder (its latest checkpoint).
The file is written atomically and validated by loading it back.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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


def resolve_checkpoint(path: str | Path) -> Path:
    """`path` itself when it is a checkpoint, else the latest checkpoint of the run folder `path`."""
    path = Path(path)
    if (path / STATE_FILE_NAME).is_file():
        return path
    latest = latest_checkpoint(checkpoints_folder(path))
    if latest is None:
        raise CheckpointError(f"{path} is neither a checkpoint folder nor a run folder with checkpoints/.")
    return latest


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the adapter (and VLM deltas) of `checkpoint` to `out`; returns `out`."""
    checkpoint = resolve_checkpoint(checkpoint)
    state = read_state(checkpoint)
    trained = load_adapter_file(checkpoint / ADAPTER_FILE_NAME)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_adapter_file(out, trained.build_adapter(), trained.vlm_deltas, trained.training_config)
    load_adapter_file(out)
    logger.info("Exported stage-%d step %d (%s) to %s", state.stage, state.global_step, checkpoint, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint-<step> folder or run output folder")
    parser.add_argument("--out", required=True, help="adapter file to write, e.g. models/m2chat/NAME.safetensors")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        export_checkpoint(arguments.checkpoint, arguments.out)
    except (CheckpointError, AdapterFileError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

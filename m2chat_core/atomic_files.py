"""Atomic output, for every file the pack and train/ write: files and folders appear complete
or not at all, with the permissions the user's umask gives."""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write (a file or a folder); on success it
    is fsynced, given the user's usual permissions and renamed over `path`, on failure removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temporary
        _settle(temporary)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary)
        else:
            temporary.unlink(missing_ok=True)


def _settle(path: Path) -> None:
    """Give `path` and everything in it the mode a new file or folder gets beside it, and
    fsync its files. (safetensors' writer, 0.8, creates its files readable by their owner
    alone, which a ComfyUI server run as another user could not load.)"""
    folder_mode = _new_folder_mode(path.parent)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_dir():
            item.chmod(folder_mode)
            continue
        item.chmod(folder_mode & 0o666)
        with open(item, "rb") as file:
            os.fsync(file.fileno())


def _new_folder_mode(parent: Path) -> int:
    """The mode the umask gives a new folder in `parent`, read from a probe folder: reading the
    umask itself (os.umask) means setting it, which races with other threads' new files."""
    probe = parent / f".{uuid.uuid4().hex}.mode"
    probe.mkdir(mode=0o777)
    try:
        return stat.S_IMODE(probe.stat().st_mode) & 0o777
    finally:
        probe.rmdir()

"""Faults of a run that the user must fix (unreadable data, an output folder that cannot
be written, a launch that would start duplicate runs), raised with a message that names
the file or setting and the fix; the entry points log the message and exit with
EXIT_RUN_FAULT instead of a library traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path


_NEARLY_FULL_BYTES = 64 * 1024


class RunFault(RuntimeError):
    """A data or output problem of the run; the message says what to do."""


class DataFault(RunFault):
    """No usable training data."""


class OutputFault(RunFault):
    """A folder of the run cannot be written."""


class LaunchFault(RunFault):
    """The launcher started processes that accelerate does not see as one run."""


def output_fault(folder: Path, error: BaseException, setting: str = "engine.output_dir") -> OutputFault:
    """The OutputFault for `error` raised while writing into `folder` (a full disk, a
    read-only or forbidden folder); other errors are named as they are."""
    number = getattr(error, "errno", None)
    if number == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(error) or _disk_is_full(folder):
        return OutputFault(f"no space left on {folder}: free space or point {setting} elsewhere.")
    if number in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputFault(
            f"cannot write to {folder} ({error.strerror}): make it writable or point {setting} elsewhere.")
    return OutputFault(f"could not write to {folder} ({error}): check the folder, or point {setting} elsewhere.")


def _disk_is_full(folder: Path) -> bool:
    """True when the file system of `folder` has (almost) nothing left: torch.save reports
    a full disk as a bare RuntimeError ("unexpected pos"), without errno or strerror."""
    existing = next((path for path in (folder, *folder.parents) if path.exists()), Path("/"))
    stats = os.statvfs(existing)
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES

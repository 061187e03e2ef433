"""Which ComfyUI versions the pack runs on. Read before anything imports `comfy_api`,
so that an older ComfyUI gets one clear log line instead of an error at first use."""

from __future__ import annotations

import importlib

OLDEST_SUPPORTED = (0, 3, 75)  # pyproject.toml's [tool.comfy] requires-comfyui agrees (tested)


def comfyui_version() -> tuple[int, ...] | None:
    """The running ComfyUI's version from its `comfyui_version.py`, None where it has none
    (ComfyUI before 0.3) or it cannot be read."""
    try:
        text = importlib.import_module("comfyui_version").__version__
        return tuple(int(part) for part in text.split(".")[:3])
    except (ImportError, AttributeError, ValueError):
        return None


def unsupported_reason() -> str | None:
    """None on a supported ComfyUI, else the line to log."""
    version = comfyui_version()
    if version is not None and version >= OLDEST_SUPPORTED:
        return None
    found = "an unknown version" if version is None else ".".join(map(str, version))
    oldest = ".".join(map(str, OLDEST_SUPPORTED))
    return (f"M²Chat needs ComfyUI {oldest} or newer and found {found}; its nodes are not registered. "
            "Update ComfyUI (git pull, or ComfyUI-Manager's 'Update ComfyUI') and restart.")

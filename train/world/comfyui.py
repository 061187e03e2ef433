"""Where the world's tools find ComfyUI: the world's SDXL is built from ComfyUI's own
classes (UNet, SDXL CLIP, TAESD), so ComfyUI's loaders read exactly what was trained.

COMFYUI_PATH (the environment variable) names a ComfyUI checkout; without it, the one
`scripts/setup_env.sh` unpacks into the repository's `.comfyui/ComfyUI`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMFYUI_PATH = Path(os.environ.get("COMFYUI_PATH") or REPO / ".comfyui" / "ComfyUI")


class ComfyUIMissingError(RuntimeError):
    pass


def import_comfyui() -> None:
    """Make `comfy` importable (CPU, no argument parsing); a clear error if it is not there."""
    if "comfy.options" in sys.modules:  # inside a running ComfyUI, or imported before
        return
    # ComfyUI's `comfy` is a namespace package, so another `comfy` folder on the path (the
    # test tier tests/comfy) may already be imported: it picks ComfyUI's up once it is on the path.
    if not (COMFYUI_PATH / "comfy").is_dir():
        raise ComfyUIMissingError(
            f"ComfyUI is not at {COMFYUI_PATH}; set COMFYUI_PATH to a ComfyUI checkout or run "
            "`make setup` (it unpacks one into .comfyui/ComfyUI).")
    sys.path.insert(0, str(COMFYUI_PATH))  # ahead of the repository: both have a top-level `nodes`
    import comfy.options
    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args
    args.cpu = True

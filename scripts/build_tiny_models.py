"""Builds every tiny model the demo and the tests use into a ComfyUI `models` folder.

    python scripts/build_tiny_models.py MODELS_DIR [--seed 0]

Seeded random weights in the formats users have (no model hub is reachable here):
  diffusion_models/m2chat-tiny-sdxl.safetensors   tiny SDXL UNet (native UNETLoader)
  LLM/m2chat-tiny-llava/                          tiny LLaVA-1.5-style VLM folder
  m2chat/m2chat-tiny-adapter.safetensors          untrained M³Adapter sized for that VLM
ComfyUI must be importable: COMFYUI_PATH, or the set-up script's .comfyui/ComfyUI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from comfyui_env import COMFYUI_PATH, REPO
from tiny_graphs import TINY_ADAPTER, TINY_VLM


def _import_comfyui_builder():
    sys.path[:0] = [str(COMFYUI_PATH), str(REPO / "scripts")]
    import comfy.options
    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args
    args.cpu = True
    from comfyui_tiny_sdxl.builder import build_tiny_comfyui_models
    return build_tiny_comfyui_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path, help="a ComfyUI models folder")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    written = list(_import_comfyui_builder()(options.models_dir, seed=options.seed).values())
    sys.path.insert(0, str(REPO))
    from m2chat_core.tiny import build_tiny_adapter, build_tiny_vlm
    from m2chat_core.vlm import load_vlm

    vlm_folder = build_tiny_vlm(options.models_dir / "LLM" / TINY_VLM, seed=options.seed)
    info = load_vlm(vlm_folder).info
    written += [vlm_folder, build_tiny_adapter(
        options.models_dir / "m2chat" / TINY_ADAPTER, vlm_hidden_size=info.hidden_size,
        vision_feature_size=info.vision_feature_size, trained_on_vlm=info.name, seed=options.seed)]
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

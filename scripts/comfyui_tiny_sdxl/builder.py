"""Builds the tiny random SDXL UNet that ComfyUI's native UNETLoader reads (tests that need
a UNet with exactly seeded weights; the shapes world's trained UNet is the other one).

Built with ComfyUI's own layer classes, so the file has exactly the key layout of real
SDXL files: `models/diffusion_models/<name>`.
ComfyUI's layers skip weight initialisation, so every tensor is filled here, seeded:
weights randn/sqrt(fan_in), norm weights 1, biases 0. Same seed, byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import comfy.ops
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from safetensors.torch import save_file

from train.world.sdxl import WORLD_UNET_CONFIG, seeded_state_dict

TINY_UNET_NAME = "m2chat-tiny-sdxl.safetensors"
# The world's UNet (SDXL's contracts: 2048-wide cross-attention context, 2816-wide ADM
# vector, 4 latent channels) at half its width: one attention level of 64 channels.
TINY_UNET_CONFIG = {**WORLD_UNET_CONFIG, "model_channels": 32}


def build_tiny_comfyui_models(models_dir: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Write the tiny UNet under a ComfyUI models folder."""
    with torch.device("meta"):
        unet = UNetModel(**TINY_UNET_CONFIG, operations=comfy.ops.disable_weight_init)
    path = Path(models_dir) / "diffusion_models" / TINY_UNET_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(seeded_state_dict(unet, seed), str(path))
    return {"unet": path}

"""The world's SDXL as one single-file checkpoint, for ComfyUI's CheckpointLoaderSimple:
the trained UNet, the taesdxl VAE and the seeded text encoders, written by ComfyUI's own
`save_checkpoint` (what its CheckpointSave node calls), so the keys are SDXL's original
layout (`model.diffusion_model.`, `first_stage_model.`, `conditioner.embedders.`).

The text encoders are stored in float16, the dtype CheckpointLoaderSimple gives text
encoders on every device (as in SDXL's own checkpoints). The file is assembled from the
shipped parts (298 MB: mostly the text encoders' full SDXL vocabularies), so it is written
on demand and never shipped:

    python -m train.world checkpoint --out models/checkpoints/m2chat-world-sdxl-checkpoint.safetensors
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from m2chat_core.atomic_files import atomic_path

from .comfyui import import_comfyui
from .layout import SHIPPED, WeightsLayout
from .sdxl import TEXT_ENCODER_SEED, build_text_encoders, register_world_sdxl
from .taesd import DECODER_FILE, ENCODER_FILE, TAESDXL_SCALE

CHECKPOINT_FILE = "m2chat-world-sdxl-checkpoint.safetensors"  # models/checkpoints/


def taesdxl_state_dict(vae_folder: Path) -> dict[str, torch.Tensor]:
    """The VAE as ComfyUI's VAELoader assembles "taesdxl" from its two files."""
    state = {f"taesd_{part}.{name}": tensor
             for part, file in (("encoder", ENCODER_FILE), ("decoder", DECODER_FILE))
             for name, tensor in load_file(vae_folder / file).items()}
    return state | {"vae_scale": torch.tensor(TAESDXL_SCALE), "vae_shift": torch.tensor(0.0)}


def write_checkpoint(out: Path, weights: WeightsLayout = SHIPPED) -> Path:
    """Write the world's UNet, VAE and text encoders (seed TEXT_ENCODER_SEED) to `out`, atomically."""
    import_comfyui()
    import comfy.sd

    register_world_sdxl()
    model = comfy.sd.load_diffusion_model(str(weights.unet))
    vae = comfy.sd.VAE(sd=taesdxl_state_dict(weights.vae))
    metadata = {"format": "m2chat-world-sdxl-checkpoint",
                "parts": json.dumps({"unet": weights.unet.name, "vae": "taesdxl",
                                     "text_encoder_seed": TEXT_ENCODER_SEED})}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary:
        comfy.sd.save_checkpoint(str(temporary), model, build_text_encoders(TEXT_ENCODER_SEED, torch.float16), vae,
                                 metadata=metadata)
    return out

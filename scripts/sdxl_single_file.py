"""Writes a diffusers SDXL folder as one single-file checkpoint in the original layout.

    python scripts/sdxl_single_file.py DIFFUSERS_FOLDER OUT.safetensors

The tests use it to make a single-file SDXL from the tiny diffusers SDXL (the training
module reads both layouts). The key layouts come from ComfyUI's own converters
(`comfy.utils.unet_to_diffusers`, `comfy.diffusers_convert`), so ComfyUI must be
importable: COMFYUI_PATH, or the set-up script's .comfyui/ComfyUI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from comfyui_env import COMFYUI_PATH
from m2chat_core.atomic_files import atomic_path

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_L, OPEN_CLIP_G = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."


def _ldm_unet_config(folder: Path) -> dict:
    """The layout facts unet_to_diffusers needs, from the diffusers UNet config."""
    config = json.loads((folder / "unet" / "config.json").read_text())
    levels = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    depth = [1 if kind.startswith("CrossAttn") else 0 for kind in config["down_block_types"]]
    return {"num_res_blocks": [layers] * levels, "channel_mult": [1] * levels,  # only its length is read
            "transformer_depth": [d for d in depth for _ in range(layers)],
            "transformer_depth_output": [d for d in depth for _ in range(layers + 1)],
            "transformer_depth_middle": 1}


def convert(folder: Path, out: Path) -> Path:
    sys.path.insert(0, str(COMFYUI_PATH))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args
    args.cpu = True
    import comfy.diffusers_convert as diffusers_convert
    import comfy.utils

    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    state = {UNET + ldm: unet[name] for name, ldm in comfy.utils.unet_to_diffusers(_ldm_unet_config(folder)).items()
             if name in unet}
    if len(state) != len(unet):
        raise ValueError(f"{len(unet) - len(state)} UNet tensors have no original-layout name.")
    vae = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    state |= {VAE + name: tensor for name, tensor in diffusers_convert.convert_vae_state_dict(vae).items()}
    clip_l = load_file(folder / "text_encoder" / "model.safetensors")
    state |= {CLIP_L + ("" if name.startswith("text_model.") else "text_model.") + name: tensor
              for name, tensor in clip_l.items()}
    clip_g = {"transformer." + name: tensor for name, tensor in load_file(folder / "text_encoder_2" / "model.safetensors").items()}
    state |= {OPEN_CLIP_G + name: tensor
              for name, tensor in diffusers_convert.convert_text_enc_state_dict_v20(clip_g).items()}
    with atomic_path(out) as written:  # complete or absent, with the user's usual permissions
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(written))
    return out


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(sys.argv[2])))

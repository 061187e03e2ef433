"""Test and demo-only ComfyUI extension: teaches ComfyUI's model detection the tiny SDXL
UNets and gives native graphs the world's SDXL text encoders.

ComfyUI recognises SDXL UNets by their real sizes only. This extension registers
subclasses of `comfy.supported_models.SDXL` whose `unet_config` matches the tiny UNet that
`builder.build_tiny_comfyui_models` writes (random weights, for tests) and the shapes
world's trained UNet (`train.world.sdxl.register_world_sdxl`, with the world's text
encoders for its single-file checkpoint), so the native UNETLoader and
CheckpointLoaderSimple load them as SDXL (SDXL conditioning, 2816-wide ADM input,
4-channel SDXL latents). It lives outside the pack's `nodes/` because users never need it.
"""

import sys
from pathlib import Path

import comfy.model_management
import comfy.supported_models
import torch

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository, for train.world
from train.world.sdxl import DETECTION_KEYS, build_text_encoders, register_world_sdxl  # noqa: E402

from .builder import TINY_UNET_CONFIG  # noqa: E402


class TinySDXL(comfy.supported_models.SDXL):
    unet_config = {key: TINY_UNET_CONFIG[key] for key in DETECTION_KEYS}


if TinySDXL not in comfy.supported_models.models:
    comfy.supported_models.models.insert(0, TinySDXL)
register_world_sdxl()

class TinySDXLConditioning:
    """Seeded random SDXL conditioning (77x2048 + pooled 1280), for native graphs in
    tests that must not depend on the pack's own nodes."""

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def make(self, seed):
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randn(1, 77, 2048, generator=generator)
        pooled = torch.randn(1, 1280, generator=generator)
        device = comfy.model_management.intermediate_device()
        return ([[tokens.to(device), {"pooled_output": pooled.to(device)}]],)


class TinySDXLCLIPLoader:
    """The shapes world's SDXL text encoders: a native SDXL CLIP object, tiny and seeded
    (train/world/sdxl.py); seed 0 is the one the world's UNet was trained with."""

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def load(self, seed):
        return (build_text_encoders(seed),)


NODE_CLASS_MAPPINGS = {"TinySDXLConditioning": TinySDXLConditioning,
                       "TinySDXLCLIPLoader": TinySDXLCLIPLoader}

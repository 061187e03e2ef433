"""Test and demo-only ComfyUI extension: teaches ComfyUI's model detection a tiny SDXL.

ComfyUI recognises SDXL UNets by their real sizes only. This extension registers a
subclass of `comfy.supported_models.SDXL` whose `unet_config` matches the tiny UNet that
`builder.build_tiny_comfyui_models` writes, so the native UNETLoader loads it as SDXL
(SDXL conditioning, 2816-wide ADM input, 4-channel SDXL latents). It lives outside the
pack's `nodes/` because users never need it.
"""

import torch

import comfy.model_management
import comfy.supported_models

from .builder import TINY_UNET_CONFIG


class TinySDXL(comfy.supported_models.SDXL):
    unet_config = {key: TINY_UNET_CONFIG[key] for key in
                   ("model_channels", "transformer_depth", "context_dim", "adm_in_channels",
                    "use_linear_in_transformer", "use_temporal_attention")}


if TinySDXL not in comfy.supported_models.models:
    comfy.supported_models.models.insert(0, TinySDXL)

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
    """A native SDXL CLIP object with tiny seeded weights (see clip.py)."""

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def load(self, seed):
        from .clip import build_tiny_sdxl_clip

        return (build_tiny_sdxl_clip(seed),)


NODE_CLASS_MAPPINGS = {"TinySDXLConditioning": TinySDXLConditioning,
                       "TinySDXLCLIPLoader": TinySDXLCLIPLoader}

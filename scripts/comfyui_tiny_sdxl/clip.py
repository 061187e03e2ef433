"""A tiny SDXL text encoder pair built from ComfyUI's own CLIP classes, in memory.

ComfyUI's SDXL CLIP loaders know only the real CLIP-L and OpenCLIP-G sizes (~800M
parameters), so tests that need a native SDXL CLIP object (the no-adapter fallback of
M2ChatEncode) get this one: the same classes, tokenizer and outputs (77x2048 tokens from
CLIP-L ‖ CLIP-G penultimate states, 1280 pooled), three layers each, seeded weights.
"""

from __future__ import annotations

import torch

import comfy.sd
import comfy.sdxl_clip
from comfy import sd1_clip

from .builder import seeded_state_dict


def _text_config(hidden_size: int, heads: int, act: str) -> dict:
    return {"hidden_size": hidden_size, "intermediate_size": 64, "num_attention_heads": heads,
            "num_hidden_layers": 3, "hidden_act": act, "max_position_embeddings": 77,
            "vocab_size": 49408, "layer_norm_eps": 1e-5, "projection_dim": hidden_size,
            "eos_token_id": 49407, "bos_token_id": 0, "pad_token_id": 1}


class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        torch.nn.Module.__init__(self)
        self.clip_l = sd1_clip.SDClipModel(
            layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
            textmodel_json_config=_text_config(768, 12, "quick_gelu"), model_options=model_options)
        self.clip_g = sd1_clip.SDClipModel(
            layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
            textmodel_json_config=_text_config(1280, 20, "gelu"), return_projected_pooled=True,
            special_tokens={"start": 49406, "end": 49407, "pad": 0},
            model_options={**model_options, "model_name": "clip_g"})
        self.dtypes = {dtype}


class _TinySDXLTarget:
    params: dict = {}
    clip = TinySDXLClipModel
    tokenizer = comfy.sdxl_clip.SDXLTokenizer


def build_tiny_sdxl_clip(seed: int = 0) -> comfy.sd.CLIP:
    clip = comfy.sd.CLIP(target=_TinySDXLTarget(), model_options={"dtype": torch.float32})
    clip.cond_stage_model.load_state_dict(seeded_state_dict(clip.cond_stage_model, seed))
    return clip

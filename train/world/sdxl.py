"""The world's frozen "SDXL", built from ComfyUI's own classes so its native loaders read
exactly what was trained:

- text encoders: ComfyUI's SDXL CLIP (CLIP-L 768 + OpenCLIP-G 1280 wide, SDXL's
  tokenizer; contexts 77x2048 and a 1280 pooled vector) at the depth of 3 layers, with
  seeded random weights rebuilt from their seed, never trained or shipped;
- the UNet: ComfyUI's SDXL UNetModel at a tiny width (context 2048, ADM 2816, 4 latent
  channels), trained with epsilon-prediction on the world VAE's latents (unet_training.py);
- the VAE: the TAESD-format autoencoder of taesd.py.

ComfyUI detects SDXL UNets by their real sizes; `register_world_sdxl` (called by the
test/demo extension scripts/comfyui_tiny_sdxl) teaches it WORLD_UNET_CONFIG, so UNETLoader
and CheckpointLoaderSimple read the world's files as SDXL.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from m2chat_core.atomic_files import atomic_path

from .comfyui import import_comfyui
from .vocabulary import IMAGE_SIZE

UNET_FILE = "m2chat-world-sdxl.safetensors"  # models/diffusion_models/
TEXT_ENCODER_SEED = 0
TEXT_ENCODER_LAYERS = 3  # SDXL reads the penultimate layer's states

# SDXL's UNet with model_channels 64 (SDXL: 320) over two levels (16x16 and 8x8 latents of a
# 128 px image), transformer blocks at the 8x8 level only (SDXL: none at its first level),
# 64 channels per attention head as in SDXL.
WORLD_UNET_CONFIG = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 64,
    "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1,
    "context_dim": 2048, "adm_in_channels": 2816, "num_classes": "sequential",
    "use_linear_in_transformer": True, "use_temporal_attention": False,
    "use_spatial_transformer": True, "num_head_channels": 64, "num_heads": -1,
    "legacy": False, "use_checkpoint": False,
}
# The keys ComfyUI's model detection compares (what tells this UNet from real SDXL).
DETECTION_KEYS = ("model_channels", "transformer_depth", "context_dim", "adm_in_channels",
                  "use_linear_in_transformer", "use_temporal_attention")

# How the world's pictures are drawn through ComfyUI (the tables' protocol): KSampler's
# sampler and scheduler, this many steps, this classifier-free guidance. Guidance 3, not 5,
# chosen on the validation split's pictures (train/world/RESULTS.md, "The guidance").
SAMPLER, SCHEDULER = "euler", "normal"
SAMPLER_STEPS, GUIDANCE = 20, 3.0

# SDXL's noise schedule (scaled linear betas, 1000 steps), as ComfyUI's ModelSamplingDiscrete.
TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


def text_encoder_config(hidden_size: int, act: str) -> dict:
    return {"hidden_size": hidden_size, "intermediate_size": 64, "num_attention_heads": hidden_size // 64,
            "num_hidden_layers": TEXT_ENCODER_LAYERS, "hidden_act": act, "max_position_embeddings": 77,
            "vocab_size": 49408, "layer_norm_eps": 1e-5, "projection_dim": hidden_size,
            "eos_token_id": 49407, "bos_token_id": 0, "pad_token_id": 1}


def seeded_state_dict(module: torch.nn.Module, seed: int,
                      matrix: Callable[[str, torch.Size, torch.Generator], torch.Tensor] | None = None,
                      ) -> dict[str, torch.Tensor]:
    """Seeded weights for every tensor of `module`: matrices `matrix(name, shape, generator)`
    (default randn / sqrt(fan_in)), biases 0, norm weights and scalars 1. Same seed, same bytes."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in module.state_dict().items():
        if tensor.ndim >= 2:
            value = (matrix or fan_in_matrix)(name, tensor.shape, generator)
        elif name.endswith("bias"):
            value = torch.zeros(tensor.shape)
        else:  # norm weights and scalar parameters
            value = torch.ones(tensor.shape)
        state[name] = value.contiguous()
    return state


def fan_in_matrix(_name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))


def text_encoder_matrix(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Weights in which each output position keeps its own token's identity: token
    embeddings N(0, 1), position embeddings N(0, 0.3^2), the residual branches' output
    projections scaled by 0.25 (each position still sees its prefix, more weakly). A
    randomly initialised CLIP instead drowns the tokens in attention mixtures, which a
    UNet learns to read far more slowly."""
    if name.endswith("token_embedding.weight"):
        return torch.randn(shape, generator=generator)
    if name.endswith("position_embedding.weight"):
        return torch.randn(shape, generator=generator) * 0.3
    value = fan_in_matrix(name, shape, generator)
    return value * 0.25 if name.endswith(("out_proj.weight", "fc2.weight")) else value


@functools.cache
def world_clip_target():
    """ComfyUI's ClipTarget for the world's text encoders: SDXL's CLIP classes and tokenizer
    at TEXT_ENCODER_LAYERS. TinySDXLCLIPLoader and CheckpointLoaderSimple build from it."""
    import_comfyui()
    import comfy.sdxl_clip
    from comfy import sd1_clip, supported_models_base

    class WorldSDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 - ComfyUI's signature
            torch.nn.Module.__init__(self)
            self.clip_l = sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=text_encoder_config(768, "quick_gelu"), model_options=model_options)
            self.clip_g = sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=text_encoder_config(1280, "gelu"), return_projected_pooled=True,
                special_tokens={"start": 49406, "end": 49407, "pad": 0},
                model_options={**model_options, "model_name": "clip_g"})
            self.dtypes = {dtype}

    return supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, WorldSDXLClipModel)


def build_text_encoders(seed: int = TEXT_ENCODER_SEED, dtype: torch.dtype = torch.float32):
    """A native `comfy.sd.CLIP` (SDXL: CLIP-L + OpenCLIP-G) with the world's seeded weights."""
    target = world_clip_target()
    import comfy.sd

    clip = comfy.sd.CLIP(target=target, model_options={"dtype": dtype})
    clip.cond_stage_model.load_state_dict(seeded_state_dict(clip.cond_stage_model, seed, text_encoder_matrix))
    return clip


@functools.cache
def register_world_sdxl() -> type:
    """Teach ComfyUI's model detection the world's UNet (SDXL at WORLD_UNET_CONFIG) with the
    world's text encoders, so UNETLoader and CheckpointLoaderSimple read the world's files
    as SDXL. Returns the registered `comfy.supported_models` class."""
    import_comfyui()
    import comfy.supported_models

    class WorldSDXL(comfy.supported_models.SDXL):
        unet_config = {key: WORLD_UNET_CONFIG[key] for key in DETECTION_KEYS}

        def clip_target(self, state_dict={}):  # noqa: B006 - ComfyUI's signature
            return world_clip_target()

    comfy.supported_models.models.insert(0, WorldSDXL)
    return WorldSDXL


def encode_captions(clip, captions: list[str], batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 77, 2048) contexts and (N, 1280) pooled vectors, as CLIPTextEncode computes them
    for a caption of one 77-token chunk (every world caption), in batches."""
    model = clip.cond_stage_model
    model.reset_clip_options()
    contexts, pooled = [], []
    for first in range(0, len(captions), batch):
        tokens = [clip.tokenize(caption) for caption in captions[first:first + batch]]
        ids = {part: [[token for token, _weight in chunks[part][0]] for chunks in tokens] for part in ("l", "g")}
        with torch.no_grad():
            l_out, _ = model.clip_l.encode(ids["l"])
            g_out, g_pooled = model.clip_g.encode(ids["g"])[:2]
        contexts.append(torch.cat([l_out, g_out], dim=-1))
        pooled.append(g_pooled)
    return torch.cat(contexts), torch.cat(pooled)


def new_unet(seed: int) -> torch.nn.Module:
    """ComfyUI's UNetModel at WORLD_UNET_CONFIG, its layers initialised as PyTorch's are
    (ComfyUI's layer classes skip initialisation: their weights would be whatever memory held)."""
    import_comfyui()
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNetModel(**WORLD_UNET_CONFIG, operations=_initialising_operations())


def _initialising_operations():
    """ComfyUI's `disable_weight_init` layer classes with PyTorch's initialisation back."""
    import comfy.ops

    base = comfy.ops.disable_weight_init

    def initialising(layer, torch_class):
        return type(layer.__name__, (layer,), {"reset_parameters": torch_class.reset_parameters})

    return type("InitialisingOps", (base,), {
        "Linear": initialising(base.Linear, torch.nn.Linear),
        "Conv2d": initialising(base.Conv2d, torch.nn.Conv2d),
        "GroupNorm": initialising(base.GroupNorm, torch.nn.GroupNorm),
        "LayerNorm": initialising(base.LayerNorm, torch.nn.LayerNorm),
    })


def size_vector(batch: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """SDXL's micro-conditioning as ComfyUI's SDXL.encode_adm builds it: sinusoidal
    embeddings (256 each) of height, width, crop top, crop left, target height, width."""
    import_comfyui()
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

    embed = Timestep(256)
    ids = [size, size, 0, 0, size, size]
    return torch.cat([embed(torch.Tensor([value])) for value in ids]).flatten().unsqueeze(0).repeat(batch, 1)


def save_unet(unet: torch.nn.Module, path: Path) -> Path:
    """The UNet's state dict in ComfyUI's key layout (what UNETLoader reads), float16."""
    tensors = {name: value.detach().to(torch.float16).contiguous() for name, value in unet.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata={"format": "m2chat-world-sdxl-unet"})
    return path


def load_unet(path: Path) -> torch.nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; train the world's UNet with `python -m train.world unet`.")
    unet = new_unet(0)
    unet.load_state_dict({key: value.float() for key, value in load_file(path).items()})
    return unet.eval()

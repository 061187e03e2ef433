"""`python -m train.world diffusers`: the world's SDXL as a diffusers folder
(StableDiffusionXLPipeline.save_pretrained layout), so `train/` runs M³FT on the world
(`model.sdxl` = the folder). Each part computes what its ComfyUI original computes:

- unet/: UNet2DConditionModel at WORLD_UNET_CONFIG, weights renamed by ComfyUI's own
  map (comfy.utils.unet_to_diffusers);
- text_encoder/, text_encoder_2/: transformers CLIP-L and OpenCLIP-G with the world's
  seeded weights (ComfyUI's CLIP keys are transformers' under a `transformer.` prefix;
  both read the penultimate layer and pool at the first end token);
- tokenizer/, tokenizer_2/: ComfyUI's SDXL tokenizer files; the second pads with "!"
  (id 0), as ComfyUI's clip_g and SDXL's tokenizer_2 do;
- vae/: AutoencoderTiny from the taesdxl files, scaling factor 1: the latent is the
  encoder's raw output, the one ComfyUI's "taesdxl" hands the UNet (taesd.py);
- scheduler/: SDXL base's Euler scheduler (epsilon, scaled-linear betas, 1000 steps).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderTiny, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors import SafetensorError
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from m2chat_core.atomic_files import atomic_path

from ..config import ConfigError
from ..sdxl import CLIP_MAX_LENGTH
from ..tiny_sdxl import ADD_TIME_EMBED_DIM, sdxl_base_scheduler
from .comfyui import COMFYUI_PATH, import_comfyui
from .config import DiffusersConfig
from .layout import WeightsLayout
from .sdxl import TEXT_ENCODER_SEED, WORLD_UNET_CONFIG, build_text_encoders, load_unet, text_encoder_config
from .taesd import TinyAutoencoder, load_taesd
from .vocabulary import IMAGE_SIZE

logger = logging.getLogger(__name__)


def write_diffusers_folder(config: DiffusersConfig) -> Path:
    """Load and convert every part first (a bad --weights folder is refused before anything
    is written), then write the folder atomically."""
    weights = WeightsLayout(Path(config.weights))
    pipeline = StableDiffusionXLPipeline(
        unet=diffusers_unet(_load(load_unet, weights.unet)),
        vae=diffusers_vae(_load(load_taesd, weights.vae)),
        **diffusers_text_encoders(TEXT_ENCODER_SEED),
        **diffusers_tokenizers(),
        scheduler=sdxl_base_scheduler(),
    )
    out = Path(config.out)
    with atomic_path(out) as temporary:
        pipeline.save_pretrained(temporary, safe_serialization=True)
    logger.info("Wrote the world's SDXL as a diffusers folder in %s", out)
    return out


def _load(loader, path: Path):
    try:
        return loader(path)
    except (RuntimeError, SafetensorError, OSError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"weights: {path} does not hold the world's weights ({first_line}); give a folder written by "
            "`python -m train.world build` (its --weights), e.g. train/world/weights.") from error


def diffusers_unet(unet: torch.nn.Module) -> UNet2DConditionModel:
    """The ComfyUI UNetModel `unet` (at WORLD_UNET_CONFIG) as a diffusers UNet2DConditionModel."""
    import_comfyui()
    import comfy.utils

    config = WORLD_UNET_CONFIG
    levels = range(len(config["channel_mult"]))
    depths = config["transformer_depth"]  # one entry per down-path ResBlock: levels of one block each
    if list(config["num_res_blocks"]) != [1] * len(levels) or config["transformer_depth_middle"] != depths[-1]:
        raise NotImplementedError("diffusers_unet maps one ResBlock per level and a middle as deep as the last level")
    widths = [config["model_channels"] * multiple for multiple in config["channel_mult"]]
    model = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8,
        in_channels=config["in_channels"],
        out_channels=config["out_channels"],
        down_block_types=tuple("CrossAttnDownBlock2D" if depths[level] else "DownBlock2D" for level in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if depths[level] else "UpBlock2D" for level in reversed(levels)),
        block_out_channels=tuple(widths),
        layers_per_block=1,
        transformer_layers_per_block=tuple(max(depth, 1) for depth in depths),  # ignored where there is no attention
        attention_head_dim=tuple(width // config["num_head_channels"] for width in widths),  # heads, as SDXL's config
        use_linear_projection=config["use_linear_in_transformer"],
        cross_attention_dim=config["context_dim"],
        addition_embed_type="text_time",
        addition_time_embed_dim=ADD_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=config["adm_in_channels"],
    )
    comfy_state = unet.state_dict()
    key_map = comfy.utils.unet_to_diffusers(config)  # diffusers key -> ComfyUI key
    model.load_state_dict({key: comfy_state[key_map[key]] for key in model.state_dict()})
    return model.eval()


def diffusers_text_encoders(seed: int) -> dict[str, torch.nn.Module]:
    """transformers CLIP-L and OpenCLIP-G (with its projection) holding the world's seeded
    weights: ComfyUI's `clip_l.transformer.*` / `clip_g.transformer.*` keys, unprefixed
    (transformers 5's CLIPTextModel also drops their `text_model.`)."""
    comfy_state = build_text_encoders(seed).cond_stage_model.state_dict()
    encoders = {
        "text_encoder": ("clip_l", CLIPTextModel(CLIPTextConfig(**text_encoder_config(768, "quick_gelu")))),
        "text_encoder_2": ("clip_g", CLIPTextModelWithProjection(CLIPTextConfig(**text_encoder_config(1280, "gelu")))),
    }
    for prefix, model in encoders.values():
        model.load_state_dict({key: comfy_state[f"{prefix}.transformer.{_text_model_key(key)}"]
                               for key in model.state_dict()})
    return {name: model.eval() for name, (_, model) in encoders.items()}


def _text_model_key(key: str) -> str:
    return key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}"


def diffusers_tokenizers() -> dict[str, CLIPTokenizer]:
    """ComfyUI's SDXL tokenizer (OpenAI CLIP's BPE); tokenizer_2 pads with "!" (id 0)."""
    folder = COMFYUI_PATH / "comfy" / "sd1_tokenizer"
    options = {"local_files_only": True, "model_max_length": CLIP_MAX_LENGTH}
    return {"tokenizer": CLIPTokenizer.from_pretrained(folder, **options),
            "tokenizer_2": CLIPTokenizer.from_pretrained(folder, pad_token="!", **options)}


def diffusers_vae(taesd: TinyAutoencoder) -> AutoencoderTiny:
    """diffusers' AutoencoderTiny has TAESD's layers under `layers.`; its decoder applies
    TAESD's clamp in forward(), so each decoder index is one less. Scaling factor 1: the
    raw latent, as ComfyUI's taesdxl gives the UNet."""
    model = AutoencoderTiny(scaling_factor=1.0)
    state = {f"encoder.layers.{key}": value for key, value in taesd.encoder.state_dict().items()}
    for key, value in taesd.decoder.state_dict().items():
        index, rest = key.split(".", 1)
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    model.load_state_dict(state)
    return model.eval()

"""SDXL's frozen parts for M³FT, loaded offline: the UNet (Eq. 4-5), the VAE (target
latents) and both text encoders (the CLIP targets of L_align, Eq. 2)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

logger = logging.getLogger(__name__)

CLIP_MAX_LENGTH = 77
PENULTIMATE = -2  # SDXL reads the penultimate hidden state of both text encoders
_TARGET_COMPONENTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
# SDXL's KL VAE, or a TAESD-format one (deterministic: its raw output is the latent)
VAE_CLASSES = {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}


class SDXLLoadError(FileNotFoundError):
    """The SDXL folder or checkpoint cannot be loaded offline."""


@dataclass
class SDXLParts:
    """The frozen SDXL components (eval mode, no gradients). `identity` names the weights
    the cached targets depend on (paths, sizes, modification times)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL | AutoencoderTiny
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    identity: str


def load_sdxl(path: str | Path, config_folder: str | Path | None, dtype: torch.dtype, device: torch.device) -> SDXLParts:
    """From a diffusers SDXL folder, or a single .safetensors checkpoint plus a diffusers
    folder with the configs and tokenizers; never reaches a hub. The VAE stays in float32
    (SDXL's VAE overflows in float16)."""
    path = Path(path)
    options = {"local_files_only": True}
    try:
        if path.is_dir():
            components = {
                "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, **options),
                "vae": _vae_class(path).from_pretrained(path, subfolder="vae", torch_dtype=torch.float32, **options),
                "text_encoder": CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype, **options),
                "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
                    path, subfolder="text_encoder_2", dtype=dtype, **options
                ),
                "tokenizer": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **options),
                "tokenizer_2": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", **options),
            }
            scheduler_folder = path
        else:
            pipeline = StableDiffusionXLPipeline.from_single_file(
                path, config=str(config_folder), torch_dtype=dtype, **options
            )
            components = {name: getattr(pipeline, name) for name in ("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")}
            components["vae"] = pipeline.vae.to(torch.float32)
            scheduler_folder = Path(config_folder)
        noise_scheduler = DDPMScheduler.from_pretrained(scheduler_folder, subfolder="scheduler", **options)
    except (OSError, ValueError) as error:
        raise SDXLLoadError(
            f"Cannot load SDXL from {path} offline ({error}). Give a diffusers SDXL folder (model_index.json, "
            "unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/), or a single "
            ".safetensors checkpoint with model.sdxl_config set to such a folder (configs and tokenizers)."
        ) from error
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        components[name].requires_grad_(False).eval().to(device)
    components["vae"].to(memory_format=torch.channels_last)  # its convolutions: 1.35x faster on a CPU
    logger.info("Loaded SDXL from %s (%s, VAE float32) on %s", path, dtype, device)
    return SDXLParts(**components, noise_scheduler=noise_scheduler, identity=_identity(path, config_folder))


def _vae_class(folder: Path) -> type[AutoencoderKL] | type[AutoencoderTiny]:
    """The class vae/config.json names (its `_class_name`)."""
    config = folder / "vae" / "config.json"
    name = json.loads(config.read_text()).get("_class_name") if config.is_file() else "AutoencoderKL"
    if name not in VAE_CLASSES:
        raise ValueError(f"vae/config.json names {name!r}; the VAEs M3FT reads are {sorted(VAE_CLASSES)}")
    return VAE_CLASSES[name]


def _identity(path: Path, config_folder: str | Path | None) -> str:
    """Digest of the files the cached targets come from (not their bytes: size and mtime)."""
    if path.is_dir():
        files = sorted(file for component in _TARGET_COMPONENTS for file in (path / component).rglob("*") if file.is_file())
    else:
        files = [path] + sorted(file for file in Path(config_folder).rglob("*") if file.is_file())
    stats = [(str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns) for file in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


class FrozenEncoders:
    """Outputs of SDXL's frozen encoders: the CLIP targets of a caption and the VAE
    posterior of an image; both are what the precompute cache stores."""

    def __init__(self, parts: SDXLParts) -> None:
        self.parts = parts

    @torch.no_grad()
    def caption_targets(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 77, 2048) CLIP-L ‖ OpenCLIP-G penultimate hidden states and (B, 1280) G's
        projected text embedding, float32: e_clip and e_pclip of Eq. 2."""
        parts = self.parts
        hidden_states, pooled = [], None
        for tokenizer, encoder in ((parts.tokenizer, parts.text_encoder), (parts.tokenizer_2, parts.text_encoder_2)):
            token_ids = tokenizer(
                captions, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt"
            ).input_ids.to(encoder.device)
            outputs = encoder(token_ids, output_hidden_states=True)
            hidden_states.append(outputs.hidden_states[PENULTIMATE].float())
            pooled = getattr(outputs, "text_embeds", None)
        return torch.cat(hidden_states, dim=-1), pooled.float()

    @torch.no_grad()
    def latent_distribution(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) of (B, 3, R, R) images in [-1, 1], unscaled, float32.
        A tiny (TAESD) VAE is deterministic: its latent with std 0."""
        vae = self.parts.vae
        pixels = pixels.to(vae.device, vae.dtype, memory_format=torch.channels_last)
        if isinstance(vae, AutoencoderTiny):
            latents = vae.encode(pixels).latents.float().contiguous()
            return latents, torch.zeros_like(latents)
        posterior = vae.encode(pixels).latent_dist
        return posterior.mean.float().contiguous(), posterior.std.float().contiguous()

    @property
    def latent_scaling_factor(self) -> float:
        return float(self.parts.vae.config.scaling_factor)

"""Seeded random SDXL saved as a diffusers folder: tiny, for training tests and CPU demos,
or at SDXL base's real size, for the memory and speed checks of the paper's setup.

Widths that are SDXL contracts stay real at every size: CLIP-L hidden 768 and OpenCLIP-G
hidden 1280 (penultimate states concatenate to the 2048-wide UNet context), pooled text
embeds 1280, and the UNet's "text_time" embedding input 2816 = 1280 + 6 x 256. The tiny
size is otherwise as small as the blocks allow.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from m2chat_core.tiny.vlm import english_corpus

logger = logging.getLogger(__name__)

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_MAX_LENGTH = 77
CLIP_L_WIDTH, CLIP_G_WIDTH = 768, 1280  # concatenated: the UNet's 2048 cross-attention width
ADD_TIME_EMBED_DIM = 256  # per micro-conditioning id; 6 ids + pooled 1280 = 2816
SDXL_VAE_SCALING_FACTOR = 0.13025


def train_clip_vocab(vocab_size: int = 1000) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style BPE vocabulary and merges (lower-cased, `</w>` word ends) from `english_corpus()`.

    Laid out like OpenAI CLIP's: the 256 byte symbols, the same with `</w>`, the merges
    in order, then `<|startoftext|>` and `<|endoftext|>` last, so the EOS id is the
    largest id (never 2, which transformers' CLIP treats as a legacy checkpoint).
    """
    clip_pipeline = CLIPTokenizer().backend_tokenizer  # CLIP's normalizer and pre-tokenizer
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = clip_pipeline.normalizer
    tokenizer.pre_tokenizer = clip_pipeline.pre_tokenizer
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base_tokens = alphabet + [symbol + "</w>" for symbol in alphabet]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=alphabet,
        # Given up front, the word-end symbols get fixed ids; left to the trainer they get
        # ids in hash order, which reorders equally frequent merges from run to run.
        special_tokens=base_tokens[len(alphabet):],
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(english_corpus(), trainer)
    trained_merges = json.loads(tokenizer.to_str())["model"]["merges"]  # most frequent first
    merges = [tuple(pair) for pair in trained_merges[: vocab_size - len(base_tokens) - 2]]
    tokens = base_tokens + ["".join(pair) for pair in merges] + [CLIP_BOS, CLIP_EOS]
    return {token: index for index, token in enumerate(tokens)}, merges


@dataclass(frozen=True)
class SDXLSize:
    """What differs between the tiny SDXL and SDXL base: the UNet's levels, the VAE's
    widths and the text encoders' depth (their widths are the contract above)."""

    unet_widths: tuple[int, ...]
    unet_layers_per_block: int
    unet_transformer_depths: tuple[int, ...]  # transformer blocks per level; 0: no cross-attention
    unet_heads: tuple[int, ...]  # attention heads per level (diffusers' `attention_head_dim`, as SDXL's config)
    unet_norm_groups: int
    latent_size: int  # the UNet's `sample_size`: the image size / 8
    vae_widths: tuple[int, ...]
    vae_layers_per_block: int
    vae_norm_groups: int
    text_layers: tuple[int, int]  # CLIP-L, OpenCLIP-G
    text_intermediate: tuple[int, int]


TINY_SDXL = SDXLSize(
    unet_widths=(32, 64), unet_layers_per_block=1, unet_transformer_depths=(0, 1), unet_heads=(2, 4),
    unet_norm_groups=16, latent_size=8,  # 64 px images
    vae_widths=(8, 16, 16, 16), vae_layers_per_block=1, vae_norm_groups=8,
    text_layers=(2, 2), text_intermediate=(64, 64),  # the penultimate layer SDXL reads is the first one
)
# stable-diffusion-xl-base-1.0's architecture (its config files): UNet 2.57 B parameters, VAE 84 M,
# text encoders 123 M and 695 M with CLIP's 49408-token vocabulary (fewer rows here).
SDXL_BASE = SDXLSize(
    unet_widths=(320, 640, 1280), unet_layers_per_block=2, unet_transformer_depths=(0, 2, 10),
    unet_heads=(5, 10, 20), unet_norm_groups=32, latent_size=128,  # 1024 px images
    vae_widths=(128, 256, 512, 512), vae_layers_per_block=2, vae_norm_groups=32,
    text_layers=(12, 32), text_intermediate=(3072, 5120),
)


def _clip_text_config(vocab: dict[str, int], hidden_size: int, hidden_act: str, layers: int,
                      intermediate_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 64,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=hidden_size,
        hidden_act=hidden_act,
        bos_token_id=vocab[CLIP_BOS],
        eos_token_id=vocab[CLIP_EOS],
        pad_token_id=vocab[CLIP_EOS],
    )


def _unet(size: SDXLSize) -> UNet2DConditionModel:
    cross_attention = [depth > 0 for depth in size.unet_transformer_depths]
    return UNet2DConditionModel(
        sample_size=size.latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=tuple("CrossAttnDownBlock2D" if attends else "DownBlock2D" for attends in cross_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if attends else "UpBlock2D" for attends in reversed(cross_attention)),
        block_out_channels=size.unet_widths,
        layers_per_block=size.unet_layers_per_block,
        transformer_layers_per_block=tuple(max(depth, 1) for depth in size.unet_transformer_depths),
        attention_head_dim=size.unet_heads,
        norm_num_groups=size.unet_norm_groups,
        use_linear_projection=True,
        cross_attention_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADD_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=CLIP_G_WIDTH + 6 * ADD_TIME_EMBED_DIM,
    )


def _vae(size: SDXLSize) -> AutoencoderKL:
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * len(size.vae_widths),  # four levels: SDXL's x8 downsampling
        up_block_types=("UpDecoderBlock2D",) * len(size.vae_widths),
        block_out_channels=size.vae_widths,
        layers_per_block=size.vae_layers_per_block,
        latent_channels=4,
        norm_num_groups=size.vae_norm_groups,
        sample_size=size.latent_size * 8,
        scaling_factor=SDXL_VAE_SCALING_FACTOR,
    )


def sdxl_base_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(  # SDXL base's scheduler_config.json
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )


def sdxl_pipeline(size: SDXLSize = TINY_SDXL, device: str = "cpu") -> StableDiffusionXLPipeline:
    """A random SDXL of `size`, drawn on `device` by the caller's RNG, with the CLIP tokenizers below."""
    vocab, merges = train_clip_vocab()
    with torch.device(device):  # the order of the draws is part of what a seed gives
        vae = _vae(size)
        text_encoder = CLIPTextModel(_clip_text_config(
            vocab, CLIP_L_WIDTH, "quick_gelu", size.text_layers[0], size.text_intermediate[0]))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(
            vocab, CLIP_G_WIDTH, "gelu", size.text_layers[1], size.text_intermediate[1]))
        unet = _unet(size)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH),
        tokenizer_2=CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=CLIP_MAX_LENGTH),
        unet=unet,
        scheduler=sdxl_base_scheduler(),
    )


def build_tiny_sdxl_diffusers(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a seeded tiny SDXL diffusers folder to `out_dir` and return its path.

    Loads with `StableDiffusionXLPipeline.from_pretrained(out_dir, local_files_only=True)`
    or per component (`subfolder=`). Sizes: UNet widths 32/64 with SDXL's 2048 context and
    2816 "text_time" input; VAE widths 8-16 with 4 latent channels, x8 downsampling and
    scaling factor 0.13025; two 2-layer CLIP text encoders, hidden 768 (CLIP-L) and 1280
    with projection 1280 (OpenCLIP-G); CLIP tokenizers (vocab 1000, 77 tokens; the second
    pads with "!" as SDXL's does); Euler scheduler. About 100 MB in float32, a few
    seconds to build. Same seed, byte-identical files.
    """
    out_dir = Path(out_dir)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
        torch.manual_seed(seed)
        pipeline = sdxl_pipeline()
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    logger.info("Built tiny SDXL (seed %d) in %s", seed, out_dir)
    return out_dir

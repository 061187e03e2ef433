"""Seeded tiny SDXL saved as a diffusers folder, for training tests and CPU demos.

Widths that are SDXL contracts stay real: CLIP-L hidden 768 and OpenCLIP-G hidden 1280
(penultimate states concatenate to the 2048-wide UNet context), pooled text embeds
1280, and the UNet's "text_time" embedding input 2816 = 1280 + 6 x 256. Everything
else is as small as the blocks allow.
"""

from __future__ import annotations

import json
import logging
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


def _clip_text_config(vocab: dict[str, int], hidden_size: int, hidden_act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=2,  # the penultimate layer SDXL reads is the first one
        num_attention_heads=hidden_size // 64,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=hidden_size,
        hidden_act=hidden_act,
        bos_token_id=vocab[CLIP_BOS],
        eos_token_id=vocab[CLIP_EOS],
        pad_token_id=vocab[CLIP_EOS],
    )


def _unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,  # 64 px images through the x8 VAE
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),  # heads per level, as in SDXL's config
        norm_num_groups=16,
        use_linear_projection=True,
        cross_attention_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADD_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=CLIP_G_WIDTH + 6 * ADD_TIME_EMBED_DIM,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,  # four levels: SDXL's x8 downsampling
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
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
    vocab, merges = train_clip_vocab()
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
        torch.manual_seed(seed)
        pipeline = StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=CLIPTextModel(_clip_text_config(vocab, CLIP_L_WIDTH, "quick_gelu")),
            text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(vocab, CLIP_G_WIDTH, "gelu")),
            tokenizer=CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH),
            tokenizer_2=CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=CLIP_MAX_LENGTH),
            unet=_unet(),
            scheduler=sdxl_base_scheduler(),
        )
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    logger.info("Built tiny SDXL (seed %d) in %s", seed, out_dir)
    return out_dir

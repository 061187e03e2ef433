"""The world's VLM: m2chat_core's tiny LLaVA-1.5-style builder with the world's tokenizer
and a vision tower sized for the world's pictures.

Vision: the 128 px picture is resized to `image_size` px and cut into 3×3 patches, one
per grid cell, so each object lies inside one patch (a small 26 px shape is 19.5 px at
96 px, inside its 32 px patch even when jittered) and the tower reads it whole; 9 image
tokens per picture keep prompts short. Tokenizer: byte-level BPE learnt on the world's
text until every world word is one token, with the pack's special tokens `<|IC|>` and
`<|img|>` as single tokens, so `text_marker_embeddings` (what the nodes feed without an
adapter) are exactly their embedding rows, which this training teaches.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer

from m2chat_core.special_tokens import SPECIAL_TOKENS
from m2chat_core.tiny.vlm import TinyVLMPreset, VisionTower, build_tiny_vlm, train_byte_level_bpe
from m2chat_core.vlm import LoadedVLM, load_vlm

from .config import VlmConfig
from .vlm_data import tokenizer_corpus
from .vocabulary import GRID

MAX_VOCABULARY = 4096  # an upper bound: BPE stops once every word of the corpus is one token
MAX_CONTEXT = 512


def world_tokenizer(seed: int) -> Tokenizer:
    return train_byte_level_bpe(MAX_VOCABULARY, tokenizer_corpus(seed), extra_special_tokens=SPECIAL_TOKENS)


def vision_tower(config: VlmConfig) -> VisionTower:
    width = config.vision_width
    return VisionTower(image_size=config.image_size, patch_size=config.image_size // GRID, hidden_size=width,
                       intermediate_size=4 * width, num_layers=config.vision_layers, num_heads=width // 32,
                       feature_layer=-1)


def language_model(config: VlmConfig) -> TinyVLMPreset:
    heads = config.width // 32
    return TinyVLMPreset(config.width, 3 * config.width, config.layers, heads, heads, torch.float32)


def build_world_vlm(config: VlmConfig) -> LoadedVLM:
    """The seeded, untrained world VLM, built as a folder and loaded the way the pack loads one."""
    with tempfile.TemporaryDirectory(prefix="world-vlm-") as folder:
        build_tiny_vlm(folder, seed=config.seed, preset=language_model(config), max_context=MAX_CONTEXT,
                       vision=vision_tower(config), tokenizer=world_tokenizer(config.seed))
        vlm = load_vlm(Path(folder), dtype="float32")
        for parameter in vlm.model.parameters():  # loaded weights are views of the folder's files
            parameter.data = parameter.data.clone()
    return vlm


def marker_rows(vlm: LoadedVLM) -> torch.Tensor:
    """(2, H) the embedding rows of `<|IC|>` and `<|img|>`, with gradients: what the
    encoder's `text_marker_embeddings` reads, so the nodes feed what was trained."""
    ids = [vlm.tokenizer.convert_tokens_to_ids(marker) for marker in SPECIAL_TOKENS]
    return vlm.input_embeddings.weight[ids]

"""Seeded tiny Qwen2-VL / Qwen2.5-VL folders (M-RoPE, 8 px patches merged 2×2), saved as
`save_pretrained` folders that `load_vlm` reads, with the tiny LLaVA's tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)

from m2chat_core.tiny.vlm import train_byte_level_bpe

_QWEN_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
_QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


QWEN_FAMILIES = {  # family: (config, model, processor, vision config)
    "qwen2-vl": (
        Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor,
        dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=8, spatial_merge_size=2),
    ),
    "qwen2.5-vl": (
        Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
        dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=2, patch_size=8,
             spatial_merge_size=2, window_size=16, fullatt_block_indexes=[1]),
    ),
}


def build_tiny_qwen(folder: Path, family: str) -> Path:
    """Write a tiny `family` ("qwen2-vl" or "qwen2.5-vl") folder to `folder` and return it."""
    config_class, model_class, processor_class, vision_config = QWEN_FAMILIES[family]
    tokenizer = train_byte_level_bpe()
    tokenizer.add_special_tokens(_QWEN_TOKENS)
    ids = {token: tokenizer.token_to_id(token) for token in _QWEN_TOKENS}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>", model_max_length=512
    )
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32}, patch_size=8, merge_size=2, temporal_patch_size=2
    )
    processor_class(
        image_processor=image_processor, tokenizer=fast, video_processor=Qwen2VLVideoProcessor(),
        chat_template=_QWEN_TEMPLATE,
    ).save_pretrained(folder)
    config = config_class(
        text_config=dict(
            vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=1, eos_token_id=ids["<|im_end|>"], pad_token_id=3,
        ),
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model_class(config).save_pretrained(folder)
    return folder

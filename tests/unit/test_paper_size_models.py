"""The paper-size random models (scripts/paper_size_models.py) have the real models'
architecture: drawn on PyTorch's meta device (no memory), their parameter counts equal the
published ones of LLaVA-1.5-7B and SDXL base once the vocabularies are the real ones."""

import torch
from paper_size_models import MAX_CONTEXT
from transformers import LlavaForConditionalGeneration

from m2chat_core.tiny.vlm import LLAVA_15_VISION, tiny_vlm_config
from train.tiny_sdxl import CLIP_G_WIDTH, CLIP_L_WIDTH, SDXL_BASE, sdxl_pipeline

CLIP_VOCABULARY, LLAVA_VOCABULARY, LLAVA_CONTEXT = 49408, 32064, 4096


def _count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_sdxl_base_size_has_sdxl_base_1_0s_parameters():
    pipeline = sdxl_pipeline(SDXL_BASE, device="meta")
    assert _count(pipeline.unet) == 2_567_463_684
    assert _count(pipeline.vae) == 83_653_863
    rows = CLIP_VOCABULARY - pipeline.text_encoder.config.vocab_size  # the tiny CLIP tokenizer has fewer
    assert _count(pipeline.text_encoder) + rows * CLIP_L_WIDTH == 123_060_480
    assert _count(pipeline.text_encoder_2) + rows * CLIP_G_WIDTH == 694_659_840


def test_llava_preset_has_llava_1_5_7bs_parameters():
    with torch.device("meta"):
        real = LlavaForConditionalGeneration(tiny_vlm_config(
            "llava-1.5-7b", vocab_size=LLAVA_VOCABULARY, max_context=LLAVA_CONTEXT, vision=LLAVA_15_VISION))
    assert _count(real) == 7_063_427_072
    assert real.config.image_seq_length == 576 and MAX_CONTEXT > 576

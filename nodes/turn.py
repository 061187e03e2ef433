"""One VLM turn as the nodes run it: model management, progress and cancel, the encoder,
the adapter, and the conditioning (or the native-CLIP fallback without an adapter)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.utils

from ..m2chat_core.adapter import M3AdapterOutput
from ..m2chat_core.adapter_file import check_compatible
from ..m2chat_core.conditioning import batch_token_sequences, sdxl_conditioning, zero_negative
from ..m2chat_core.encoder import AdapterReadout, EncodeResult, TurnOptions, encode, text_marker_embeddings
from ..m2chat_core.m3ft_settings import FILE_GATE_MODE
from ..m2chat_core.session import ChatSession
from .managed import load_for_use
from .types import M2ChatAdapter, M2ChatVLM
from .vlm_deltas import patched_vlm

class NoConditioningSourceError(ValueError):
    pass


@dataclass(frozen=True)
class TurnSettings:
    options: TurnOptions  # how the VLM generates the turn
    gate_mode: str
    gate_value: float


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's size ids: the image size and the target size it was trained to compose for."""

    width: int
    height: int
    target_width: int
    target_height: int


def require_conditioning_source(adapter: M2ChatAdapter | None, clip) -> None:
    if adapter is None and clip is None:
        raise NoConditioningSourceError(
            "Connect an M²Chat adapter (M²Chat Adapter Loader) or, without one, an SDXL CLIP "
            "(e.g. from Load Checkpoint) so the caption can be encoded.")


def check_prompt(prompt: str) -> str:
    if not prompt or not prompt.strip():
        raise ValueError("The prompt is empty: write what you want to say or see.")
    return prompt.strip()


def run_turn(vlm: M2ChatVLM, adapter: M2ChatAdapter | None, session: ChatSession, prompt: str,
             images, settings: TurnSettings, progress: comfy.utils.ProgressBar | None = None,
             ) -> tuple[EncodeResult, M3AdapterOutput | None]:
    info = vlm.loaded.info
    if adapter is not None:
        check_compatible(adapter.file.config, info.hidden_size, info.vision_feature_size, info.name)
        config = adapter.file.config
        special = adapter.module.special_token_embeddings.detach()
        layers, image_tokens = config.chosen_layers, config.num_image_tokens
        vlm_patcher = patched_vlm(vlm, adapter.file.vlm_deltas)
        load_for_use(vlm_patcher, adapter.patcher)
    else:
        vlm_patcher = vlm.patcher
        load_for_use(vlm_patcher)
        special, layers, image_tokens = text_marker_embeddings(vlm.loaded), (-1,), 1

    def on_token(step: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if progress is not None:
            progress.update_absolute(step, total)

    result = encode(vlm.loaded, session, prompt, images, readout=AdapterReadout(special, tuple(layers), image_tokens),
                    options=settings.options, on_token=on_token,
                    prefix_cache=vlm.prefix_cache.for_weights(vlm_patcher.patches_uuid))
    vlm.counter.total += result.tokens_processed
    if adapter is None or result.features is None:
        return result, None
    gate_mode = None if settings.gate_mode == FILE_GATE_MODE else settings.gate_mode
    with torch.inference_mode():
        output = adapter.module(result.features, gate_mode=gate_mode, gate_value=settings.gate_value)
    return result, output


def adapter_conditioning(outputs: list[M3AdapterOutput], size: SizeConditioning) -> tuple[list, list]:
    """Positive (the adapter's tokens, one panel per batch row) and the all-zero negative."""
    device = comfy.model_management.intermediate_device()
    context = torch.cat([output.context for output in outputs]).float().to(device)
    pooled = torch.cat([output.pooled for output in outputs]).float().to(device)
    positive = sdxl_conditioning(context, pooled, width=size.width, height=size.height,
                                 target_width=size.target_width, target_height=size.target_height)
    return positive, zero_negative(positive)


def clip_conditioning(clip, texts: list[str], size: SizeConditioning) -> tuple[list, list]:
    """Without an adapter: the captions through the native SDXL CLIP, as CLIPTextEncodeSDXL
    does, batched one caption per panel; the negative is the empty prompt."""
    add = {"width": size.width, "height": size.height, "crop_w": 0, "crop_h": 0,
           "target_width": size.target_width, "target_height": size.target_height}

    def encode_text(text: str):
        cond, = clip.encode_from_tokens_scheduled(clip.tokenize(text), add_dict=add)
        return cond

    encoded = [encode_text(text) for text in texts]  # long captions take several 77-token chunks
    positive = [[batch_token_sequences([cond[0] for cond in encoded]),
                 {**encoded[0][1], "pooled_output": torch.cat([c[1]["pooled_output"] for c in encoded])}]]
    return positive, [encode_text("")]  # batch 1: ComfyUI repeats it over the latent batch

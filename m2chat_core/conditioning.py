"""SDXL conditioning in ComfyUI's contract, built from the M³Adapter's outputs.

A ComfyUI CONDITIONING is a plain list of [cond, options] pairs; nothing here imports
ComfyUI. One entry holds the whole batch: cond (B, 77, 2048), pooled (B, 1280), and
B > 1 means one panel per latent in the batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SDXL_CONTEXT_TOKENS = 77  # tokens of SDXL's text context
SDXL_CONTEXT_DIM = 2048  # CLIP-L (768) || OpenCLIP-G (1280) penultimate hidden states
SDXL_POOLED_DIM = 1280  # OpenCLIP-G projected text embedding

Conditioning = list[list[Any]]


class ConditioningShapeError(ValueError):
    """Tensors or sizes that do not fit SDXL's conditioning contract."""


def check_conditioning_tensors(context: torch.Tensor, pooled: torch.Tensor) -> None:
    """Raise ConditioningShapeError unless context is (B, 77, 2048) and pooled (B, 1280)."""
    expected_context = (SDXL_CONTEXT_TOKENS, SDXL_CONTEXT_DIM)
    if context.ndim != 3 or tuple(context.shape[1:]) != expected_context or context.shape[0] < 1:
        raise ConditioningShapeError(
            f"SDXL context must be shaped (B, {SDXL_CONTEXT_TOKENS}, {SDXL_CONTEXT_DIM}) with B >= 1, "
            f"got {tuple(context.shape)}; pass the adapter's `context` output, not the VLM hidden states."
        )
    if pooled.ndim != 2 or pooled.shape[1] != SDXL_POOLED_DIM:
        raise ConditioningShapeError(
            f"SDXL pooled output must be shaped (B, {SDXL_POOLED_DIM}), got {tuple(pooled.shape)}; "
            "pass the adapter's `pooled` output."
        )
    if pooled.shape[0] != context.shape[0]:
        raise ConditioningShapeError(
            f"context holds {context.shape[0]} samples but pooled holds {pooled.shape[0]}; "
            "they must come from the same adapter call."
        )


def _check_size(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConditioningShapeError(f"{name} must be a positive number of pixels, got {value!r}.")


def sdxl_conditioning(
    context: torch.Tensor,
    pooled: torch.Tensor,
    *,
    width: int,
    height: int,
    target_width: int | None = None,
    target_height: int | None = None,
) -> Conditioning:
    """[[cond, {"pooled_output": pooled, size conditioning…}]] for ComfyUI's SDXL sampler.

    width/height are SDXL's original-size conditioning; target_width/target_height
    default to them. Crops are 0 (the whole image).
    """
    check_conditioning_tensors(context, pooled)
    target_width = width if target_width is None else target_width
    target_height = height if target_height is None else target_height
    for name, value in (
        ("width", width),
        ("height", height),
        ("target_width", target_width),
        ("target_height", target_height),
    ):
        _check_size(name, value)
    options = {
        "pooled_output": pooled,
        "width": width,
        "height": height,
        "crop_w": 0,
        "crop_h": 0,
        "target_width": target_width,
        "target_height": target_height,
    }
    return [[context, options]]


def zero_negative(positive: Conditioning) -> Conditioning:
    """The all-zero negative the authors sample with: same shapes, dtype, device and keys
    as `positive`, with cond and pooled_output set to zeros."""
    if len(positive) != 1 or len(positive[0]) != 2 or "pooled_output" not in positive[0][1]:
        raise ConditioningShapeError(
            'zero_negative expects the one-entry [[cond, {"pooled_output": …}]] list made by '
            "sdxl_conditioning(); build the positive with it first."
        )
    context, options = positive[0]
    pooled = options["pooled_output"]
    check_conditioning_tensors(context, pooled)
    return [[torch.zeros_like(context), {**options, "pooled_output": torch.zeros_like(pooled)}]]


def batch_token_sequences(conds: list[torch.Tensor]) -> torch.Tensor:
    """Stack (1, N_i, D) token sequences of different lengths N_i into one (B, L, D) batch,
    L the least common multiple of the N_i, by repeating each sequence L / N_i times, as
    ComfyUI's CONDCrossAttn does: attention over a sequence repeated k times equals
    attention over the sequence, so each panel reads exactly its own caption. Zero tokens
    would take attention weight and change the shorter captions' panels."""
    common = math.lcm(*(cond.shape[1] for cond in conds))
    return torch.cat([cond.repeat(1, common // cond.shape[1], 1) for cond in conds])

"""Precision on the CPU: whether it computes bfloat16 natively (AVX512-BF16 or AMX units),
and which attention kernel a bf16 run takes there.

Elsewhere PyTorch emulates bfloat16 on the CPU: on an AVX2-only AMD EPYC a world UNet
training step took 15.1 s under bf16 autocast against 1.2 s in float32."""

import logging
from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

logger = logging.getLogger(__name__)

CPU_HAS_BF16_UNITS = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def warn_if_bf16_is_emulated(mixed_precision: str, device: torch.device) -> None:
    """A training run's warning when its bf16 mixed precision would run emulated."""
    if mixed_precision == "bf16" and device.type == "cpu" and not CPU_HAS_BF16_UNITS:
        logger.warning("engine.mixed_precision is bf16 on a CPU without bf16 units (AVX512-BF16 or AMX): "
                       "PyTorch emulates it, about 10x slower than float32. Pass --engine.mixed_precision no "
                       "to train in float32.")


def training_attention(mixed_precision: str, device: torch.device) -> AbstractContextManager:
    """The attention kernel of a training run: on a CPU under bf16, PyTorch's fused (flash)
    kernel computes its backward 4-10x slower than the math kernel for the M³FT's sequences
    (77-300 tokens; bench/bench_m3ft_attention.py), and the math kernel computes bf16 in float32.
    Elsewhere PyTorch's own choice."""
    if mixed_precision == "bf16" and device.type == "cpu":
        return sdpa_kernel(SDPBackend.MATH)
    return nullcontext()

"""Precision of a training run on the CPU: a warning where its bf16 would run emulated
(m2chat_core/cpu_units.py), and the attention kernel a bf16 run takes there."""

import logging
from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from m2chat_core.cpu_units import CPU_HAS_BF16_UNITS

logger = logging.getLogger(__name__)


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

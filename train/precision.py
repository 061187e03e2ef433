"""Whether this machine's CPU computes bfloat16 natively (AVX512-BF16 or AMX units).

Elsewhere PyTorch emulates bfloat16 on the CPU: on an AVX2-only AMD EPYC a world UNet
training step took 15.1 s under bf16 autocast against 1.2 s in float32."""

import logging

import torch

logger = logging.getLogger(__name__)

CPU_HAS_BF16_UNITS = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def warn_if_bf16_is_emulated(mixed_precision: str, device: torch.device) -> None:
    """A training run's warning when its bf16 mixed precision would run emulated."""
    if mixed_precision == "bf16" and device.type == "cpu" and not CPU_HAS_BF16_UNITS:
        logger.warning("engine.mixed_precision is bf16 on a CPU without bf16 units (AVX512-BF16 or AMX): "
                       "PyTorch emulates it, about 10x slower than float32. Pass --engine.mixed_precision no "
                       "to train in float32.")

"""bf16 mixed precision on a CPU that only emulates bfloat16 is named before a run starts;
a bf16 run on a CPU takes the math attention kernel."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from train import precision


@pytest.mark.parametrize("has_units, mixed_precision, device, warned", [
    (False, "bf16", "cpu", True),
    (True, "bf16", "cpu", False),
    (False, "no", "cpu", False),
    (False, "bf16", "cuda", False),  # a GPU computes bf16 itself
])
def test_emulated_bf16_is_warned_with_the_fix(monkeypatch, caplog, has_units, mixed_precision, device, warned):
    monkeypatch.setattr(precision, "CPU_HAS_BF16_UNITS", has_units)
    with caplog.at_level(logging.WARNING, logger="train.precision"):
        precision.warn_if_bf16_is_emulated(mixed_precision, torch.device(device))
    assert ("--engine.mixed_precision no" in caplog.text) is warned


@pytest.mark.parametrize("mixed_precision, fused", [("bf16", False), ("no", True)])
def test_bf16_training_on_a_cpu_takes_the_math_attention_kernel(mixed_precision, fused):
    query = torch.randn(2, 4, 77, 32, requires_grad=True)
    with (precision.training_attention(mixed_precision, torch.device("cpu")),
          torch.autocast("cpu", torch.bfloat16, enabled=mixed_precision == "bf16")):
        output = F.scaled_dot_product_attention(query, query, query)
    # The backward the forward recorded: PyTorch's fused CPU kernel has its own node.
    assert (output.grad_fn.name() == "ScaledDotProductFlashAttentionForCpuBackward0") is fused

"""bf16 mixed precision on a CPU that only emulates bfloat16 is named before a run starts."""

from __future__ import annotations

import logging

import pytest
import torch

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

"""DeepSpeed ZeRO-2 for M³FT: which setups run, and one gradient reduction per optimizer step.

ZeRO-2 reduces gradients in buckets filled in the order they arrive during backward. In
stage 2 a process whose batch has pictures reaches the image path (projector, f_img
attention) late in its backward, one whose batch has none reaches it at once (through the
zero term of M3FTModel that gives every trained parameter a gradient), so the processes'
buckets would hold the same parameters in another order (measured: the wrong tensors
summed without an error) or, without the zero term, other parameters (gloo: "Received data
size doesn't match expected size"). DeepSpeed's coalesced reduction
(`DeepSpeedEngine.coalesce_grad_reduction`, deepspeed >= 0.19.8) leaves the gradients on
the parameters through every backward of the step and reduces them once, after the last
one, walking the parameters in their fixed order: the same on every process."""

from __future__ import annotations

import contextlib
import os

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from .faults import LaunchFault


def process_group_settings() -> list[InitProcessGroupKwargs]:
    """DeepSpeed on a machine without accelerators (DS_ACCELERATOR=cpu, as the tests run it):
    accelerate >= 1.11 picks no backend there and sees one process, so name gloo."""
    launched_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if launched_deepspeed and os.environ.get("DS_ACCELERATOR") == "cpu":
        return [InitProcessGroupKwargs(backend="gloo")]
    return []


def refuse_unsupported_deepspeed(accelerator: Accelerator) -> None:
    """Stop before loading anything where DeepSpeed would fail mid-run or write empty files:
    ZeRO-3 partitions the parameters, which checkpoints and the export do not gather (and
    processes with and without pictures would gather the frozen vision tower's apart);
    ZeRO-0/1 under accelerate skip the coalesced reduction (no_sync, bf16 optimizer)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    if plugin.zero_stage != 2:
        raise LaunchFault(
            f"m2chat training runs DeepSpeed with ZeRO stage 2 only (this config says zero_stage: {plugin.zero_stage}): "
            "use train/accelerate/deepspeed_zero2.yaml, or ddp.yaml."
        )
    from deepspeed import DeepSpeedEngine, __version__

    if not hasattr(DeepSpeedEngine, "coalesce_grad_reduction"):
        raise LaunchFault(
            f"m2chat training needs deepspeed >= 0.19.8 (installed: {__version__}), whose coalesced gradient "
            "reduction keeps the processes' gradients in step: pip install -U deepspeed, or use "
            "train/accelerate/ddp.yaml."
        )


class CoalescedBackward:
    """`accelerator.backward` under DeepSpeed, with one reduction per optimizer step (module
    docstring); call it once per batch inside `accelerator.accumulate`."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.engine = accelerator.deepspeed_engine_wrapped.engine
        self.open_block: contextlib.AbstractContextManager | None = None

    def __call__(self, loss: torch.Tensor) -> None:
        if self.open_block is None:  # the step's first batch
            self.open_block = self.engine.coalesce_grad_reduction()
            self.open_block.__enter__()
        self.engine.backward(loss)  # scaled by 1 / accumulation, gradients kept on the parameters
        if self.accelerator.sync_gradients:  # the step's last batch: reduce, then step
            block, self.open_block = self.open_block, None
            block.__exit__(None, None, None)
            self.engine.set_gradient_accumulation_boundary(is_boundary=True)
            self.engine.step()

"""DeepSpeed ZeRO-2 for M³FT: which setups run, and one gradient reduction per optimizer step.

ZeRO-2 reduces gradients in buckets filled in the order they arrive during backward. In
stage 2 a process whose batch has pictures reaches the image path (projector, f_img
attention) late in its backward, one whose batch has none reaches it at once (through the
zero term of M3FTModel that gives every trained parameter a gradient), so the processes'
buckets would hold different parameters: gloo stops with "Received data size doesn't match
expected size", NCCL hangs or sums the wrong tensors. DeepSpeed's coalesced reduction
(`DeepSpeedEngine.coalesce_grad_reduction`, deepspeed >= 0.19.8) leaves the gradients on
the parameters through every backward of the step and reduces them once, after the last
one, walking the parameters in their fixed order: the same on every process."""

from __future__ import annotations

import contextlib

import torch
from accelerate import Accelerator

from .faults import LaunchFault


def refuse_unsupported_deepspeed(accelerator: Accelerator, stage: int) -> None:
    """Stop before loading anything where DeepSpeed would fail mid-run or write empty files.
    ZeRO-3 partitions the parameters in its own way, which checkpoints and the export do not
    gather yet; stage 2 needs the coalesced reduction, which only ZeRO-2 with deepspeed's
    ZeRO optimizer has."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    if plugin.zero_stage == 3:
        raise LaunchFault(
            "DeepSpeed ZeRO-3 is not supported by m2chat training yet (its partitioned parameters are not gathered "
            "for checkpoints and the export); use train/accelerate/deepspeed_zero2.yaml or ddp.yaml."
        )
    if stage == 2 and plugin.zero_stage != 2:
        raise LaunchFault(
            f"M³FT stage 2 under DeepSpeed needs ZeRO stage 2 (this config says zero_stage: {plugin.zero_stage}): "
            "use train/accelerate/deepspeed_zero2.yaml or ddp.yaml."
        )
    if stage == 2:
        from deepspeed import DeepSpeedEngine, __version__

        if not hasattr(DeepSpeedEngine, "coalesce_grad_reduction"):
            raise LaunchFault(
                f"M³FT stage 2 under DeepSpeed needs deepspeed >= 0.19.8 (installed: {__version__}), whose coalesced "
                "gradient reduction keeps batches with and without pictures in step: pip install -U deepspeed, "
                "or use train/accelerate/ddp.yaml."
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

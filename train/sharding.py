"""Trained tensors out of sharded training, whole: the adapter file needs them.
FSDP2 (`fully_shard`, accelerate's FSDP with fsdp_version 2) keeps each parameter as a
DTensor holding this process's shard (`full_tensor`); DeepSpeed ZeRO-3 keeps a partition
in place of each parameter (`whole_parameters`). Gathering is a collective, so every
process calls these functions, in the same order, and the processes that write files
use the result."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every process when sharded, else `tensor` itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def gathered_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with every sharded entry gathered, detached, copied to the CPU
    (ZeRO-3's gathered parameters live in buffers it reuses)."""
    return {name: full_tensor(tensor).detach().to("cpu", copy=True) for name, tensor in module.state_dict().items()}


def whole_parameters(parameters: Iterable[nn.Parameter]) -> contextlib.AbstractContextManager:
    """Inside: ZeRO-3-partitioned `parameters` whole on every process; other parameters as they are."""
    unique = list({id(parameter): parameter for parameter in parameters}.values())
    if not any(hasattr(parameter, "ds_id") for parameter in unique):
        return contextlib.nullcontext()
    from deepspeed.runtime.zero import GatheredParameters

    return GatheredParameters(unique)

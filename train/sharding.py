"""Trained tensors and their optimizer state out of sharded training, whole (the adapter
file and the checkpoints hold them whole), and back in.
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
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

# Whole tensors, held by every process (not offloaded: with `cpu_offload` only rank 0 would
# get them, and on node-local disks each node's first process writes a copy).
_WHOLE = StateDictOptions(full_state_dict=True)


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


def is_sharded(module: nn.Module) -> bool:
    """Whether FSDP2 shards any of `module`'s parameters."""
    return any(isinstance(parameter, DTensor) for parameter in module.parameters())


def copy_whole_into(parameter: torch.Tensor, whole: torch.Tensor) -> None:
    """parameter <- whole, where `parameter` may be an FSDP2 shard: every process holds the
    same `whole` and keeps its own slice of it (nothing is communicated)."""
    with torch.no_grad():
        if isinstance(parameter, DTensor):
            whole = distribute_tensor(whole.to(parameter.device, parameter.dtype), parameter.device_mesh,
                                      parameter.placements, src_data_rank=None)
        parameter.copy_(whole.to(parameter.dtype))


def load_whole_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`module.load_state_dict(state)` from whole tensors, sharding them where FSDP2 shards `module`."""
    if is_sharded(module):
        set_model_state_dict(module, state, options=_WHOLE)
    else:
        module.load_state_dict(state)


def whole_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state of FSDP2-sharded `model`, whole and keyed by parameter name, so
    that it loads at any process count (a collective)."""
    return get_optimizer_state_dict(model, optimizer, options=_WHOLE)


def load_whole_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of `whole_optimizer_state`: each process keeps its shards (a collective)."""
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_WHOLE)


def parameter_count(parameter: torch.nn.Parameter) -> int:
    """Elements of the whole parameter, also when ZeRO-3 or FSDP holds only a part here."""
    return int(getattr(parameter, "ds_numel", parameter.numel()))  # a DTensor's numel is the whole one's


def held_here(parameter: torch.nn.Parameter) -> int:
    """Elements of `parameter` this process holds: its ZeRO-3 partition, its FSDP shard, or all."""
    if hasattr(parameter, "ds_tensor"):
        return parameter.ds_tensor.numel()
    return parameter.to_local().numel() if isinstance(parameter, DTensor) else parameter.numel()


def partition_sizes(model: nn.Module) -> tuple[int, int]:
    """(elements this process holds, elements of the whole parameters) of a sharded model."""
    parameters = list(model.parameters())
    return sum(map(held_here, parameters)), sum(map(parameter_count, parameters))

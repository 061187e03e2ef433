"""The VLM and the adapter under ComfyUI's model management.

Each is a small nn.Module with a `device` attribute and `memory_required()` inside a
ModelPatcher on ComfyUI's text-encoder devices. Nodes call `load_for_use` before every
use, so ComfyUI loads them onto the GPU only then and evicts them when the UNet needs
the memory; nothing here moves devices by hand. The VLM's patcher also drops the VLM's
prefix cache whenever ComfyUI takes memory from the VLM, so the cache never holds
memory the sampler needs.
"""

from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher

from ..m2chat_core.prefix_cache import PrefixCache

# Working memory of one encode beyond the weights: the KV cache and activations of a
# few thousand tokens. Generous on purpose; ComfyUI frees this much before loading.
_WORKING_TOKENS = 4096


class ManagedModule(torch.nn.Module):
    def __init__(self, module: torch.nn.Module, hidden_size: int, num_layers: int,
                 prefix_cache: PrefixCache | None = None):
        super().__init__()
        self.module = module
        self.device = comfy.model_management.text_encoder_offload_device()
        self.prefix_cache = prefix_cache  # the VLM's; None for the adapter
        self._hidden_size = hidden_size
        self._num_layers = num_layers

    def memory_required(self, input_shape=None) -> int:
        bytes_per_value = next(self.module.parameters()).element_size()
        kv_cache = 2 * self._num_layers * _WORKING_TOKENS * self._hidden_size
        return int(kv_cache * bytes_per_value)


class VLMPatcher(comfy.model_patcher.ModelPatcher):
    """The VLM's patcher (its clones, e.g. with stage-2 deltas, are VLMPatchers too).
    ComfyUI unloads a model fully with `detach(unpatch_all=True)` (every load also
    detaches the loaded copy with unpatch_all=False and keeps its weights in place), and
    partially unloads it when it needs part of its memory: both drop the prefix cache."""

    def detach(self, unpatch_all=True):
        if unpatch_all:
            self.model.prefix_cache.clear("ComfyUI unloaded the VLM")
        return super().detach(unpatch_all)

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        self.model.prefix_cache.clear("ComfyUI freed memory from the VLM")
        return super().partially_unload(device_to, memory_to_free, force_patch_weights)


def make_patcher(module: torch.nn.Module, *, hidden_size: int, num_layers: int):
    return comfy.model_patcher.ModelPatcher(
        ManagedModule(module, hidden_size, num_layers), load_device=comfy.model_management.text_encoder_device(),
        offload_device=comfy.model_management.text_encoder_offload_device())


def make_vlm_patcher(module: torch.nn.Module, prefix_cache: PrefixCache, *, hidden_size: int, num_layers: int):
    return VLMPatcher(ManagedModule(module, hidden_size, num_layers, prefix_cache),
                      load_device=comfy.model_management.text_encoder_device(),
                      offload_device=comfy.model_management.text_encoder_offload_device())


def load_for_use(*patchers) -> None:
    """Load the patchers onto their load device; ComfyUI evicts other models if it must."""
    memory = sum(patcher.model.memory_required() for patcher in patchers)
    comfy.model_management.load_models_gpu(list(patchers), memory_required=memory)

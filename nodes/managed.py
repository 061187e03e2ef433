"""The VLM and the adapter under ComfyUI's model management.

Each is a small nn.Module with a `device` attribute and `memory_required()` inside a
ModelPatcher on ComfyUI's text-encoder devices. Nodes call `load_for_use` before every
use, so ComfyUI loads them onto the GPU only then and evicts them when the UNet needs
the memory; nothing here moves devices by hand.
"""

from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher

# Working memory of one encode beyond the weights: the KV cache and activations of a
# few thousand tokens. Generous on purpose; ComfyUI frees this much before loading.
_WORKING_TOKENS = 4096


class ManagedModule(torch.nn.Module):
    def __init__(self, module: torch.nn.Module, hidden_size: int, num_layers: int):
        super().__init__()
        self.module = module
        self.device = comfy.model_management.text_encoder_offload_device()
        self._hidden_size = hidden_size
        self._num_layers = num_layers

    def memory_required(self, input_shape=None) -> int:
        bytes_per_value = next(self.module.parameters()).element_size()
        kv_cache = 2 * self._num_layers * _WORKING_TOKENS * self._hidden_size
        return int(kv_cache * bytes_per_value)


def make_patcher(module: torch.nn.Module, *, hidden_size: int, num_layers: int):
    managed = ManagedModule(module, hidden_size, num_layers)
    return comfy.model_patcher.ModelPatcher(
        managed, load_device=comfy.model_management.text_encoder_device(),
        offload_device=comfy.model_management.text_encoder_offload_device())


def load_for_use(*patchers) -> None:
    """Load the patchers onto their load device; ComfyUI evicts other models if it must."""
    memory = sum(patcher.model.memory_required() for patcher in patchers)
    comfy.model_management.load_models_gpu(list(patchers), memory_required=memory)

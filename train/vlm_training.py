"""Stage 2's trainable parts inside the VLM, and their export as VLM deltas.

Groups: "projector" (the multimodal projector), "llm_norms_biases" (every norm weight and
bias of the language model), "llm_lora" (a LoRA on the language model's projections,
injected with peft). Trained parameters are kept in float32.

Delta format in the adapter file (m2chat_core.adapter_file.VLMDeltas), names are the
VLM's own parameter names:
- kind "full": the trained tensors' new values (projector, norms, biases);
- kind "lora": LoRA pairs as m2chat_core.adapter_file.VLMDeltas defines them (peft's
  `M.lora_A.default.weight` saved as `M.lora_A.weight`), merged as W += (lora_alpha / r)·B·A;
  any other tensor (the projector) is a full value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from torch import nn

from m2chat_core.adapter_file import VLMDeltas

from .config import LoraConfig
from .sharding import copy_whole_into, full_tensor


PROJECTOR_MODULES = ("multi_modal_projector", "visual.merger")  # LLaVA(-NeXT), Qwen2(.5)-VL
LORA_ADAPTER_NAME = "default"
_LORA_SUFFIX = re.compile(rf"\.(lora_[AB])\.{LORA_ADAPTER_NAME}\.weight$")


class VLMTrainingError(ValueError):
    """A requested VLM group does not exist in this model, or deltas do not fit it."""


def _module_name(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def _projector(model: nn.Module) -> tuple[str, nn.Module]:
    for name, module in model.named_modules():
        if name.endswith(PROJECTOR_MODULES):
            return name, module
    raise VLMTrainingError(
        f"{type(model).__name__} has no multimodal projector named like {PROJECTOR_MODULES}; "
        "remove 'projector' from groups."
    )


def _norms_and_biases(model: nn.Module) -> dict[str, nn.Parameter]:
    decoder = model.get_decoder()
    prefix = _module_name(model, decoder)
    selected = {}
    for module_name, module in decoder.named_modules():
        is_norm = "Norm" in type(module).__name__
        for name, parameter in module.named_parameters(recurse=False):
            if is_norm or name == "bias":
                selected[f"{prefix}.{module_name}.{name}".replace("..", ".")] = parameter
    return selected


def lora_target_pattern(model: nn.Module, target_modules: Iterable[str]) -> str:
    """Regex matching the named linear layers inside the language model only (the vision
    tower has layers with the same names)."""
    prefix = re.escape(_module_name(model, model.get_decoder()))
    return rf"{prefix}\..*\.({'|'.join(re.escape(name) for name in target_modules)})"


def inject_lora(model: nn.Module, rank: int, alpha: float, dropout: float, target_pattern: str) -> None:
    """Add LoRA layers (B initialised to zero, so the model is unchanged) in place."""
    config = PeftLoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_pattern)
    inject_adapter_in_model(config, model, adapter_name=LORA_ADAPTER_NAME)


def enable_vlm_groups(
    model: nn.Module, groups: Iterable[str], lora: LoraConfig
) -> dict[str, dict[str, nn.Parameter]]:
    """Make the requested VLM groups trainable (float32), everything else frozen; returns
    {group: {parameter name: parameter}}."""
    model.requires_grad_(False)
    selected: dict[str, dict[str, nn.Parameter]] = {}
    for group in groups:
        if group == "projector":
            name, projector = _projector(model)
            selected[group] = {f"{name}.{key}": parameter for key, parameter in projector.named_parameters()}
        elif group == "llm_norms_biases":
            selected[group] = _norms_and_biases(model)
        elif group == "llm_lora":
            inject_lora(model, lora.rank, lora.alpha, lora.dropout, lora_target_pattern(model, lora.target_modules))
            selected[group] = {name: parameter for name, parameter in model.named_parameters() if _LORA_SUFFIX.search(name)}
    for parameters in selected.values():
        for parameter in parameters.values():
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)
    return selected


def export_vlm_deltas(
    model: nn.Module, groups: Mapping[str, Mapping[str, nn.Parameter]], lora: LoraConfig
) -> VLMDeltas | None:
    """The trained VLM tensors as VLMDeltas (None when stage 2 trained nothing in the VLM).
    The parameters are looked up by name in `model` (sharding replaces the objects) and
    gathered where sharded, so every process calls this."""
    current = dict(model.named_parameters())
    tensors = {
        _LORA_SUFFIX.sub(r".\1.weight", name): full_tensor(current[name]).detach().cpu().clone()
        for parameters in groups.values()
        for name in parameters
    }
    if not tensors:
        return None
    if "llm_lora" in groups:
        config = {"r": lora.rank, "lora_alpha": lora.alpha, "target_modules": lora_target_pattern(model, lora.target_modules)}
        return VLMDeltas(kind="lora", tensors=tensors, config=config)
    return VLMDeltas(kind="full", tensors=tensors)


def load_vlm_deltas(model: nn.Module, deltas: VLMDeltas) -> None:
    """Copy trained values into a model prepared by `enable_vlm_groups` with the same
    groups (LoRA layers injected): resuming, or continuing from a stage-2 file."""
    parameters = dict(model.named_parameters())
    for pair in deltas.lora_pairs():
        for matrix, tensor in (("lora_A", pair.down), ("lora_B", pair.up)):
            _copy_into(parameters, f"{pair.module}.{matrix}.{LORA_ADAPTER_NAME}.weight", tensor)
    for name, tensor in deltas.full_tensors().items():
        _copy_into(parameters, name, tensor)


def merge_vlm_deltas(model: nn.Module, deltas: VLMDeltas) -> None:
    """Apply deltas to a stock VLM for inference: full values replace the weights, LoRA
    pairs are merged into their linear layers, W += scale·B·A."""
    parameters = dict(model.named_parameters())
    for pair in deltas.lora_pairs():
        weight = parameters.get(f"{pair.module}.weight")
        if weight is None:
            raise VLMTrainingError(f"LoRA delta {pair.module} names no linear layer in this VLM.")
        with torch.no_grad():
            up, down = (matrix.to(weight.device, torch.float32) for matrix in (pair.up, pair.down))
            update = deltas.lora_scale * up @ down
            weight += update.to(weight.dtype)
    for name, tensor in deltas.full_tensors().items():
        _copy_into(parameters, name, tensor)


def _copy_into(parameters: Mapping[str, nn.Parameter], name: str, tensor: torch.Tensor) -> None:
    parameter = parameters.get(name)
    if parameter is None or parameter.shape != tensor.shape:
        raise VLMTrainingError(
            f"VLM delta {name} {tuple(tensor.shape)} does not fit this VLM "
            f"({'no such parameter' if parameter is None else tuple(parameter.shape)}); "
            "the adapter file was trained on another VLM or with other groups."
        )
    copy_whole_into(parameter, tensor)

"""Stage-2 VLM deltas from an adapter file, applied the ComfyUI way: as patches on a
clone of the VLM's ModelPatcher (like a LoRA on a UNet), so the loaded VLM stays stock
and other graphs using it without this adapter are unaffected."""

from __future__ import annotations

from comfy.weight_adapter.lora import LoRAAdapter

from ..m2chat_core.adapter_file import VLMDeltas
from .types import M2ChatVLM

MODULE_PREFIX = "module."  # ManagedModule holds the VLM as `module`
LORA_DOWN, LORA_UP = ".lora_A.weight", ".lora_B.weight"


def delta_patches(deltas: VLMDeltas) -> dict[str, object]:
    """ModelPatcher patches: LoRA pairs (`<module>.lora_A/B.weight`) become LoRA patches on
    `<module>.weight` with scale alpha / rank, as peft computes it; every other tensor (all
    of a "full" delta, the projector beside a LoRA) replaces the VLM's tensor ("set")."""
    alpha = float(deltas.config.get("lora_alpha", deltas.config.get("r", 1))) if deltas.config else 1.0
    patches = {}
    for name, tensor in deltas.tensors.items():
        if name.endswith(LORA_DOWN):
            module = name[: -len(LORA_DOWN)]
            up = deltas.tensors[module + LORA_UP]
            patches[f"{MODULE_PREFIX}{module}.weight"] = LoRAAdapter(set(), (up, tensor, alpha, None, None, None))
        elif not name.endswith(LORA_UP):
            patches[MODULE_PREFIX + name] = ("set", (tensor,))
    return patches


def patched_vlm(vlm: M2ChatVLM, deltas: VLMDeltas | None):
    """The VLM's patcher with `deltas` applied: the same clone for the same deltas."""
    if deltas is None:
        return vlm.patcher
    if vlm.delta_patcher is not None and vlm.delta_patcher[0] is deltas:
        return vlm.delta_patcher[1]
    patcher = vlm.patcher.clone()
    patches = delta_patches(deltas)
    applied = patcher.add_patches(patches)
    missing = sorted(set(patches) - set(applied))
    if missing:
        raise ValueError(f"The adapter's VLM deltas name {len(missing)} weights this VLM does not "
                         f"have (e.g. {missing[0].removeprefix(MODULE_PREFIX)}): it was trained on "
                         "another VLM architecture. Load the VLM it was trained on.")
    vlm.delta_patcher = (deltas, patcher)
    return patcher

"""Stage-2 VLM deltas from an adapter file, applied the ComfyUI way: as patches on a
clone of the VLM's ModelPatcher (like a LoRA on a UNet), so the loaded VLM stays stock
and other graphs using it without this adapter are unaffected."""

from __future__ import annotations

from comfy.weight_adapter.lora import LoRAAdapter

from ..m2chat_core.adapter_file import VLMDeltas
from .types import M2ChatVLM

MODULE_PREFIX = "module."  # ManagedModule holds the VLM as `module`


def delta_patches(deltas: VLMDeltas) -> dict[str, object]:
    """ModelPatcher patches: each LoRA pair becomes a LoRA patch on `<module>.weight`,
    W + scale·B·A with the file's scale (VLMDeltas.lora_scale; ComfyUI divides the alpha it
    is given by the rank); every other tensor replaces the VLM's tensor ("set")."""
    patches: dict[str, object] = {
        f"{MODULE_PREFIX}{pair.module}.weight": LoRAAdapter(
            set(), (pair.up, pair.down, deltas.lora_scale * pair.down.shape[0], None, None, None))
        for pair in deltas.lora_pairs()
    }
    patches.update({MODULE_PREFIX + name: ("set", (tensor,)) for name, tensor in deltas.full_tensors().items()})
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

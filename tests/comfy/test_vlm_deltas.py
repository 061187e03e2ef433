"""Stage-2 VLM deltas in an adapter file change what the VLM computes while that adapter
is used, and leave the loaded VLM stock for everything else."""

import pytest
import torch

from m2chat_core.adapter_file import VLMDeltas, load_adapter_file, save_adapter_file
from tiny_graphs import TINY_ADAPTER, TINY_VLM

NORM = "model.language_model.norm.weight"
Q_PROJ = "model.language_model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def delta_adapters(comfy):
    folder = comfy.models_dir / "m2chat"
    stock = load_adapter_file(folder / TINY_ADAPTER).build_adapter()
    hidden = stock.config.vlm_hidden_size
    generator = torch.Generator().manual_seed(0)
    deltas = {
        "full-delta.safetensors": VLMDeltas("full", {NORM: torch.full((hidden,), 2.0)}),
        "lora-delta.safetensors": VLMDeltas("lora", {
            f"{Q_PROJ}.lora_A.weight": torch.randn(2, hidden, generator=generator),
            f"{Q_PROJ}.lora_B.weight": torch.randn(hidden, 2, generator=generator)},
            config={"r": 2, "lora_alpha": 4}),
        # stage 2 with a LoRA also trains the projector, stored as new values beside the pairs
        "lora-and-norm.safetensors": VLMDeltas("lora", {
            f"{Q_PROJ}.lora_A.weight": torch.zeros(2, hidden), f"{Q_PROJ}.lora_B.weight": torch.zeros(hidden, 2),
            NORM: torch.full((hidden,), 2.0)}, config={"r": 2, "lora_alpha": 4}),
        "foreign-delta.safetensors": VLMDeltas("full", {"model.no_such.weight": torch.ones(3)}),
    }
    for name, delta in deltas.items():
        save_adapter_file(folder / name, stock, delta)
    return list(deltas)


def _positive(comfy, vlm, adapter_name):
    adapter = comfy.node_class("M2ChatAdapterLoader").execute(adapter_name)[0]
    result = comfy.node_class("M2ChatEncode").execute(
        vlm=vlm, prompt="a red kite", task="text_to_image", draw_mode="always", gate_mode="adapter", gate_value=0.5,
        width=64, height=64, target_width=64, target_height=64, seed=0, max_new_tokens=4, temperature=0.0,
        top_p=1.0, adapter=adapter)
    return result.args[0][0][0]


@pytest.mark.parametrize("adapter_name", ["full-delta.safetensors", "lora-delta.safetensors",
                                          "lora-and-norm.safetensors"])
def test_deltas_apply_only_while_their_adapter_is_used(comfy, delta_adapters, adapter_name):
    vlm = comfy.node_class("M2ChatVLMLoader").execute(TINY_VLM, "float32", "none", False)[0]
    norm_before = vlm.loaded.model.state_dict()[NORM].clone()
    stock = _positive(comfy, vlm, TINY_ADAPTER)
    with_deltas = _positive(comfy, vlm, adapter_name)
    assert not torch.equal(stock, with_deltas)
    assert torch.equal(_positive(comfy, vlm, TINY_ADAPTER), stock)
    import comfy.model_management as model_management
    model_management.unload_all_models()
    assert torch.equal(vlm.loaded.model.state_dict()[NORM], norm_before)


def test_deltas_for_another_architecture_are_refused(comfy, delta_adapters):
    vlm = comfy.node_class("M2ChatVLMLoader").execute(TINY_VLM, "float32", "none", False)[0]
    with pytest.raises(ValueError, match="trained on another VLM architecture"):
        _positive(comfy, vlm, "foreign-delta.safetensors")


def test_node_patches_lora_with_the_exact_scale_and_matches_the_training_merge(comfy, delta_adapters):
    """The node (ComfyUI LoRA patches) and training's merge (train.vlm_training) apply the same
    file to the same weights: W + (lora_alpha / r)·B·A with lora_alpha / r = 4 / 2."""
    import sys

    from m2chat_core.vlm import load_vlm
    from train.vlm_training import merge_vlm_deltas

    vlm = comfy.node_class("M2ChatVLMLoader").execute(TINY_VLM, "float32", "none", False)[0]
    stock_weight = vlm.loaded.model.get_submodule(Q_PROJ).weight.detach().clone()
    deltas = load_adapter_file(comfy.models_dir / "m2chat" / "lora-delta.safetensors").vlm_deltas
    down, up = deltas.tensors[f"{Q_PROJ}.lora_A.weight"], deltas.tensors[f"{Q_PROJ}.lora_B.weight"]
    expected = stock_weight + (4 / 2) * up @ down

    node_deltas = sys.modules[comfy.node_class("M2ChatEncode").__module__.rsplit(".", 1)[0] + ".vlm_deltas"]
    patcher = node_deltas.patched_vlm(vlm, deltas)
    patcher.patch_model()
    try:
        node_weight = patcher.model.module.get_submodule(Q_PROJ).weight.detach().clone()
    finally:
        patcher.unpatch_model()
    assert torch.equal(vlm.loaded.model.get_submodule(Q_PROJ).weight, stock_weight)  # the loaded VLM stays stock

    merged = load_vlm(comfy.models_dir / "LLM" / TINY_VLM, dtype="float32").model
    merge_vlm_deltas(merged, deltas)
    training_weight = merged.get_submodule(Q_PROJ).weight.detach()
    torch.testing.assert_close(node_weight, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(training_weight, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(node_weight, training_weight, atol=1e-5, rtol=1e-5)

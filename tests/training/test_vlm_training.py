"""Stage 2's trainable VLM groups and their export as VLM deltas."""

from __future__ import annotations

import pytest
import torch

from m2chat_core.adapter_file import VLMDeltas
from m2chat_core.vlm import load_vlm
from train.config import LoraConfig
from train.vlm_training import (
    VLMTrainingError,
    enable_vlm_groups,
    export_vlm_deltas,
    load_vlm_deltas,
    merge_vlm_deltas,
)

IDS = torch.tensor([[1, 50, 51, 52, 53]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _perturbed(assets, groups, lora=LoraConfig(rank=2, alpha=4)):
    model = load_vlm(assets / "vlm").model
    selected = enable_vlm_groups(model, groups, lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameters in selected.values():
            for parameter in parameters.values():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model, selected


def test_groups_select_projector_norms_and_biases_only_in_the_language_model(assets):
    model, selected = _perturbed(assets, ["projector", "llm_norms_biases"])
    assert all("multi_modal_projector" in name for name in selected["projector"])
    norms = selected["llm_norms_biases"]
    assert norms and all(".language_model." in name and "norm" in name for name in norms)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == set(selected["projector"]) | set(norms)
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters() if parameter.requires_grad)


@pytest.mark.parametrize("groups", [["projector", "llm_norms_biases"], ["projector", "llm_lora"]])
def test_exported_deltas_reproduce_the_trained_vlm(assets, groups):
    lora = LoraConfig(rank=2, alpha=4)
    trained, selected = _perturbed(assets, groups, lora)
    deltas = export_vlm_deltas(trained, selected, lora)
    assert deltas.kind == ("lora" if "llm_lora" in groups else "full")
    if deltas.kind == "lora":  # peft's adapter name never reaches the file; no vision-tower layer is adapted
        assert all(".default." not in name for name in deltas.tensors)
        assert not any("vision_tower" in name for name in deltas.tensors)

    merged = load_vlm(assets / "vlm").model
    merge_vlm_deltas(merged, deltas)  # inference: a stock VLM plus the file
    torch.testing.assert_close(_logits(merged), _logits(trained), atol=1e-5, rtol=1e-5)

    resumed = load_vlm(assets / "vlm").model
    enable_vlm_groups(resumed, groups, lora)
    load_vlm_deltas(resumed, deltas)  # resuming: the same groups, values loaded
    torch.testing.assert_close(_logits(resumed), _logits(trained), atol=0, rtol=0)


def test_deltas_that_do_not_fit_are_refused(assets):
    model = load_vlm(assets / "vlm").model
    wrong = VLMDeltas(kind="full", tensors={"model.language_model.norm.weight": torch.ones(3)})
    with pytest.raises(VLMTrainingError, match="does not fit this VLM"):
        merge_vlm_deltas(model, wrong)
    with pytest.raises(VLMTrainingError, match="no such parameter"):
        merge_vlm_deltas(model, VLMDeltas(kind="full", tensors={"model.nothing.weight": torch.ones(3)}))

"""The run's models: M²Chat reads the VLM with the adapter's stage-2 deltas merged in,
the "VLM+SD" baseline the stock VLM, so the baseline has to come first."""

import pytest
import torch

from m2chat_core.adapter import M3Adapter
from m2chat_core.adapter_file import VLMDeltas, load_adapter_file, save_adapter_file
from m2chat_core.tiny import build_tiny_adapter, build_tiny_vlm
from train.evaluate.config import ModelsConfig
from train.evaluate.models import EvaluationModels

Q_PROJ = "model.language_model.layers.0.self_attn.q_proj"
PROJECTOR_BIAS = "model.multi_modal_projector.linear_1.bias"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    vlm = build_tiny_vlm(root / "vlm", seed=0)
    plain = build_tiny_adapter(root / "plain.safetensors", vlm_hidden_size=64, vision_feature_size=64,
                               trained_on_vlm="vlm")
    generator = torch.Generator().manual_seed(3)
    deltas = VLMDeltas("lora", {
        f"{Q_PROJ}.lora_A.weight": torch.randn(2, 64, generator=generator),
        f"{Q_PROJ}.lora_B.weight": torch.randn(64, 2, generator=generator),
        PROJECTOR_BIAS: torch.full((64,), 0.25),
    }, config={"r": 2, "lora_alpha": 4.0, "target_modules": "q_proj"})
    adapter = M3Adapter(load_adapter_file(plain).config)
    return vlm, save_adapter_file(root / "stage2.safetensors", adapter, deltas), deltas


def test_deltas_are_merged_once_for_m2chat_after_the_stock_baseline(folders):
    vlm_folder, adapter_path, deltas = folders
    models = EvaluationModels(ModelsConfig(vlm=str(vlm_folder), adapter=str(adapter_path), device="cpu"))
    parameters = dict(models.vlm(with_deltas=False).model.named_parameters())
    stock_q = parameters[f"{Q_PROJ}.weight"].detach().clone()
    assert not torch.equal(parameters[PROJECTOR_BIAS], deltas.tensors[PROJECTOR_BIAS])

    models.vlm(with_deltas=True)
    models.vlm(with_deltas=True)  # merged once, not twice
    lora_a, lora_b = deltas.tensors[f"{Q_PROJ}.lora_A.weight"], deltas.tensors[f"{Q_PROJ}.lora_B.weight"]
    assert torch.allclose(parameters[f"{Q_PROJ}.weight"], stock_q + (4.0 / 2) * lora_b @ lora_a, atol=1e-5)
    assert torch.equal(parameters[PROJECTOR_BIAS], deltas.tensors[PROJECTOR_BIAS])
    with pytest.raises(RuntimeError, match="stock VLM"):
        models.vlm(with_deltas=False)

"""The M³Adapter: config, shapes, masks, gated fusion (Eq. 3), parameter groups."""

import dataclasses

import pytest
import torch

from m2chat_core.adapter import (
    AdapterConfigError,
    AdapterInputError,
    M3Adapter,
    M3AdapterConfig,
    trainable_parameter_groups,
)
from m2chat_core.encoding import VLMFeatures
from m2chat_core.losses import alignment_loss, stage1_loss, stage2_loss
from m2chat_core.special_tokens import SPECIAL_TOKENS

VLM_HIDDEN, VISION_WIDTH = 32, 24


def tiny_config(**overrides) -> M3AdapterConfig:
    values = dict(
        vlm_hidden_size=VLM_HIDDEN,
        vision_feature_size=VISION_WIDTH,
        chosen_layers=(-1, -2, -3),
        width=32,
        depth=2,
        heads=4,
        trained_on_vlm="tiny-vlm",
    )
    values.update(overrides)
    return M3AdapterConfig(**values)


def tiny_adapter(**overrides) -> M3Adapter:
    torch.manual_seed(0)
    return M3Adapter(tiny_config(**overrides)).eval()


def make_features(batch_size=2, num_layers=3, with_image=True, tokens=6, patches=5, seed=1) -> VLMFeatures:
    generator = torch.Generator().manual_seed(seed)
    caption_mask = torch.ones(batch_size, tokens, dtype=torch.bool)
    caption_mask[0, -2:] = False  # padding in the first sample
    return VLMFeatures(
        caption_hidden_states=torch.randn(batch_size, num_layers, tokens, VLM_HIDDEN, generator=generator),
        caption_mask=caption_mask,
        answer_embedding=torch.randn(batch_size, VLM_HIDDEN, generator=generator),
        caption_embedding=torch.randn(batch_size, VLM_HIDDEN, generator=generator),
        has_answer=torch.ones(batch_size, dtype=torch.bool),
        image_features=(
            torch.randn(batch_size, patches, VISION_WIDTH, generator=generator) if with_image else None
        ),
        image_mask=torch.ones(batch_size, patches, dtype=torch.bool) if with_image else None,
    )


# --- shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("with_image", [True, False])
@pytest.mark.parametrize("chosen_layers", [(-1,), (-1, -4, -8), (2, -1, -5, -9)])
def test_output_shapes_and_scale(batch_size, with_image, chosen_layers):
    adapter = tiny_adapter(chosen_layers=chosen_layers)
    features = make_features(batch_size, num_layers=len(chosen_layers), with_image=with_image)
    with torch.no_grad():
        output = adapter(features)
    assert output.context.shape == (batch_size, 77, 2048)
    assert output.pooled.shape == (batch_size, 1280)
    assert output.gate.shape == (batch_size,)
    for tensor in (output.context, output.pooled, output.gate):
        assert torch.isfinite(tensor).all()
    # An untrained adapter gives conditioning of roughly unit scale, not 0 nor huge.
    assert 0.1 < output.context.std().item() < 3.0
    assert 0.1 < output.pooled.std().item() < 3.0
    if not with_image:
        assert torch.equal(output.gate, torch.ones(batch_size))


def test_half_precision_features_run_through_a_float32_adapter():
    features = make_features()
    half = dataclasses.replace(
        features,
        caption_hidden_states=features.caption_hidden_states.bfloat16(),
        image_features=features.image_features.bfloat16(),
    )
    with torch.no_grad():
        output = tiny_adapter()(half)
    assert output.context.dtype == torch.float32 and torch.isfinite(output.context).all()


def test_special_token_embeddings_have_one_row_per_special_token():
    adapter = tiny_adapter()
    assert adapter.special_token_embeddings.shape == (len(SPECIAL_TOKENS), VLM_HIDDEN)
    assert adapter.config.special_tokens == SPECIAL_TOKENS


# --- masks and fusion -------------------------------------------------------------------


def test_masked_caption_and_image_positions_are_ignored():
    adapter = tiny_adapter()
    features = make_features()
    image_mask = features.image_mask.clone()
    image_mask[1, -1] = False
    features = dataclasses.replace(features, image_mask=image_mask)

    def run(hidden, image):
        changed = dataclasses.replace(features, caption_hidden_states=hidden, image_features=image)
        with torch.no_grad():
            return adapter(changed, gate_mode="fixed", gate_value=0.5)

    reference = run(features.caption_hidden_states, features.image_features)
    hidden, image = features.caption_hidden_states.clone(), features.image_features.clone()
    hidden[0, :, -2:] = torch.randn(3, 2, VLM_HIDDEN) * 10  # masked caption positions of sample 0
    image[1, -1] = torch.randn(VISION_WIDTH) * 10  # masked patch of sample 1
    perturbed = run(hidden, image)
    assert torch.allclose(reference.context, perturbed.context, atol=1e-5)
    assert torch.allclose(reference.pooled, perturbed.pooled, atol=1e-5)
    # Controls: the same change at an unmasked position does matter.
    hidden[0, :, 0] = torch.randn(3, VLM_HIDDEN) * 10
    assert not torch.allclose(reference.context[0], run(hidden, image).context[0], atol=1e-3)
    image[1, 0] = torch.randn(VISION_WIDTH) * 10
    assert not torch.allclose(reference.context[1], run(hidden, image).context[1], atol=1e-3)


def test_gate_one_reads_only_h_l():
    adapter = tiny_adapter()
    features = make_features()
    other_image = dataclasses.replace(features, image_features=torch.randn_like(features.image_features))
    no_image = dataclasses.replace(features, image_features=None, image_mask=None)
    with torch.no_grad():
        reference = adapter(features, gate_mode="fixed", gate_value=1.0)
        with_other_image = adapter(other_image, gate_mode="fixed", gate_value=1.0)
        without_image = adapter(no_image)
    assert torch.equal(reference.context, with_other_image.context)
    assert torch.equal(reference.pooled, with_other_image.pooled)
    assert torch.equal(reference.context, without_image.context)
    # Control: at g = 0.5 the image does change the output.
    with torch.no_grad():
        half_gate = adapter(features, gate_mode="fixed", gate_value=0.5)
        half_gate_other = adapter(other_image, gate_mode="fixed", gate_value=0.5)
    assert not torch.allclose(half_gate.context, half_gate_other.context, atol=1e-4)


def test_gate_zero_reads_only_f_img():
    adapter = tiny_adapter()
    features = make_features()
    other_text = dataclasses.replace(
        features,
        caption_hidden_states=torch.randn_like(features.caption_hidden_states),
        caption_mask=torch.ones_like(features.caption_mask),
    )
    with torch.no_grad():
        reference = adapter(features, gate_mode="fixed", gate_value=0.0)
        with_other_text = adapter(other_text, gate_mode="fixed", gate_value=0.0)
        half_gate = adapter(features, gate_mode="fixed", gate_value=0.5)
        half_gate_other = adapter(other_text, gate_mode="fixed", gate_value=0.5)
    assert torch.equal(reference.gate, torch.zeros(2))
    assert torch.equal(reference.context, with_other_text.context)
    assert torch.equal(reference.pooled, with_other_text.pooled)
    assert not torch.allclose(half_gate.context, half_gate_other.context, atol=1e-4)


def test_gate_is_per_sample_and_follows_the_config_mode():
    features = make_features(batch_size=3)
    features = dataclasses.replace(features, has_answer=torch.tensor([True, False, True]))
    answer = features.answer_embedding.clone()
    answer[2] = features.caption_embedding[2]  # cos = 1
    features = dataclasses.replace(features, answer_embedding=answer)
    with torch.no_grad():
        gate = tiny_adapter(gate_mode="paper")(features).gate
        fixed = tiny_adapter(gate_mode="fixed", gate_value=0.2)(features).gate
    expected_first = torch.cosine_similarity(
        features.answer_embedding[0], features.caption_embedding[0], dim=0
    )
    assert gate[0].item() == pytest.approx(expected_first.clamp(0, 1).item(), abs=1e-6)
    assert gate[1].item() == 1.0  # no answer
    assert gate[2].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(fixed, torch.full((3,), 0.2))


def test_sample_without_image_in_an_image_batch_is_finite_and_text_only():
    features = make_features(batch_size=2)
    image_mask = features.image_mask.clone()
    image_mask[1] = False
    features = dataclasses.replace(features, image_mask=image_mask)
    with torch.no_grad():
        output = tiny_adapter()(features, gate_mode="fixed", gate_value=0.3)
    assert torch.isfinite(output.context).all() and torch.isfinite(output.pooled).all()
    assert output.gate.tolist() == pytest.approx([0.3, 1.0])


def test_samples_do_not_leak_across_the_batch():
    adapter = tiny_adapter()
    features = make_features(batch_size=2)
    first_alone = VLMFeatures(**{
        field.name: None if getattr(features, field.name) is None else getattr(features, field.name)[:1]
        for field in dataclasses.fields(features)
    })
    with torch.no_grad():
        batched, alone = adapter(features), adapter(first_alone)
    assert torch.allclose(batched.context[:1], alone.context, atol=1e-5)


# --- inputs and config validation -------------------------------------------------------


def test_features_from_another_vlm_are_refused():
    adapter = tiny_adapter()
    with pytest.raises(AdapterInputError, match="tiny-vlm"):
        adapter(make_features(num_layers=2))
    features = make_features()
    with pytest.raises(AdapterInputError, match="image_features"):
        adapter(dataclasses.replace(features, image_features=torch.zeros(2, 5, VISION_WIDTH + 1)))
    with pytest.raises(AdapterInputError, match="caption_mask"):
        adapter(dataclasses.replace(features, caption_mask=torch.zeros_like(features.caption_mask)))


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"width": 30}, "width"),
        ({"depth": 0}, "depth"),
        ({"heads": True}, "heads"),
        ({"chosen_layers": ()}, "chosen_layers"),
        ({"chosen_layers": (-1, -1)}, "chosen_layers"),
        ({"chosen_layers": (-1.5,)}, "chosen_layers"),
        ({"gate_mode": "cosine"}, "gate_mode"),
        ({"gate_value": 2.0}, "gate_value"),
        ({"special_tokens": ("<|IC|>", "")}, "special_tokens"),
        ({"trained_on_vlm": None}, "trained_on_vlm"),
        ({"format_version": 99}, "format_version"),
        ({"vlm_hidden_size": -4}, "vlm_hidden_size"),
    ],
)
def test_config_errors_name_the_field(overrides, field_name):
    with pytest.raises(AdapterConfigError, match=field_name):
        tiny_config(**overrides)


def test_config_json_round_trip():
    config = tiny_config(chosen_layers=[-1, 4], gate_mode="learned")
    assert config.chosen_layers == (-1, 4)
    as_dict = config.to_dict()
    assert as_dict["chosen_layers"] == [-1, 4] and as_dict["special_tokens"] == list(SPECIAL_TOKENS)
    assert M3AdapterConfig.from_dict(as_dict) == config
    with pytest.raises(AdapterConfigError, match="num_image_tokens"):
        M3AdapterConfig.from_dict({key: value for key, value in as_dict.items() if key != "num_image_tokens"})
    with pytest.raises(AdapterConfigError, match="colour"):
        M3AdapterConfig.from_dict({**as_dict, "colour": "blue"})


@pytest.mark.parametrize("chosen_layers", [(-1, -8, -16), (-1, -6, -12, -18)])
def test_default_config_for_a_7b_vlm_is_at_most_100m_parameters(chosen_layers):
    config = M3AdapterConfig(vlm_hidden_size=4096, vision_feature_size=1024, chosen_layers=chosen_layers)
    with torch.device("meta"):
        adapter = M3Adapter(config)
    count = adapter.parameter_count()
    assert count == sum(parameter.numel() for parameter in adapter.parameters())
    assert 20_000_000 < count <= 100_000_000


# --- training groups --------------------------------------------------------------------


def _train_step(adapter, stage):
    groups = trainable_parameter_groups(adapter, stage)
    adapter.requires_grad_(False)
    for group in groups.values():
        for parameter in group.values():
            parameter.requires_grad_(True)
    output = adapter(make_features(), gate_mode="learned")
    torch.manual_seed(3)
    align = alignment_loss(output.context, output.pooled, torch.randn(2, 77, 2048), torch.randn(2, 1280))
    ddpm = output.context.square().mean()  # stands in for the UNet's Eq. 5 term
    loss = stage1_loss(ddpm, align) if stage == 1 else stage2_loss(ddpm, align, torch.tensor(0.0))
    loss.total.backward()
    return groups


def test_stage1_trains_adapter_and_special_tokens_not_the_gate():
    adapter = tiny_adapter(gate_mode="learned")
    groups = _train_step(adapter, stage=1)
    assert set(groups) == {"adapter", "special_tokens"}
    assert set(groups["special_tokens"]) == {"special_token_embeddings"}
    assert "queries" in groups["adapter"] and "multi_level_mix.mix_logits" in groups["adapter"]
    for name, parameter in groups["adapter"].items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert adapter.learned_gate.scale.grad is None and adapter.learned_gate.shift.grad is None


def test_stage2_adds_the_gate_factor():
    adapter = tiny_adapter(gate_mode="learned")
    groups = _train_step(adapter, stage=2)
    assert set(groups["gate"]) == {"learned_gate.scale", "learned_gate.shift"}
    assert adapter.learned_gate.scale.grad is not None and adapter.learned_gate.scale.grad != 0
    named = {name for group in groups.values() for name in group}
    assert named == {name for name, _ in adapter.named_parameters()}
    with pytest.raises(ValueError, match="stage"):
        trainable_parameter_groups(adapter, 3)

"""The seeded tiny SDXL diffusers folder: deterministic, loads offline, keeps SDXL's shapes."""

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from train.tiny_sdxl import CLIP_EOS, build_tiny_sdxl_diffusers, train_clip_vocab

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory) -> Path:
    return build_tiny_sdxl_diffusers(tmp_path_factory.mktemp("tiny_sdxl"), seed=0)


@pytest.fixture(scope="module")
def pipeline(sdxl_dir) -> StableDiffusionXLPipeline:
    pipeline = StableDiffusionXLPipeline.from_pretrained(sdxl_dir, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def prompt_embeddings(pipeline) -> tuple[torch.Tensor, torch.Tensor]:
    prompt_embeds, _, pooled_prompt_embeds, _ = pipeline.encode_prompt(
        "a red fox in the snow", device="cpu", do_classifier_free_guidance=False
    )
    return prompt_embeds, pooled_prompt_embeds


def test_same_seed_rebuilds_byte_identical_and_other_seed_changes_weights(sdxl_dir, tmp_path):
    original = _files(sdxl_dir)
    assert "model_index.json" in original
    assert {path.split("/")[0] for path in original if "/" in path} == set(COMPONENTS)
    assert _files(build_tiny_sdxl_diffusers(tmp_path / "same", seed=0)) == original

    other = _files(build_tiny_sdxl_diffusers(tmp_path / "other", seed=1))
    changed = {path for path in original if other[path] != original[path]}
    assert changed == {path for path in original if path.endswith(".safetensors")}


def test_clip_vocab_training_is_repeatable():
    # Equally frequent merges used to come out in hash order, differing between runs.
    first_vocab, first_merges = train_clip_vocab()
    assert len(first_vocab) == 1000
    for _ in range(4):
        assert train_clip_vocab() == (first_vocab, first_merges)


def test_loads_offline_with_sdxl_contract_sizes(pipeline):
    assert pipeline.vae_scale_factor == 8
    assert pipeline.vae.config.latent_channels == 4
    assert pipeline.vae.config.scaling_factor == 0.13025
    assert pipeline.unet.config.cross_attention_dim == 2048
    assert pipeline.unet.config.projection_class_embeddings_input_dim == 2816
    assert pipeline.scheduler.config.beta_schedule == "scaled_linear"
    encoders = ((pipeline.tokenizer, pipeline.text_encoder), (pipeline.tokenizer_2, pipeline.text_encoder_2))
    for tokenizer, text_encoder in encoders:
        assert tokenizer.model_max_length == 77
        assert tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids(CLIP_EOS) == text_encoder.config.eos_token_id
        assert text_encoder.config.eos_token_id != 2  # transformers' legacy CLIP pooling path


@pytest.mark.parametrize(
    ("component_class", "subfolder"),
    [
        (UNet2DConditionModel, "unet"),
        (AutoencoderKL, "vae"),
        (CLIPTextModel, "text_encoder"),
        (CLIPTextModelWithProjection, "text_encoder_2"),
        (CLIPTokenizer, "tokenizer_2"),
        (EulerDiscreteScheduler, "scheduler"),
    ],
)
def test_components_load_by_class(sdxl_dir, component_class, subfolder):
    assert isinstance(component_class.from_pretrained(sdxl_dir, subfolder=subfolder, local_files_only=True), component_class)


def test_clip_tokenizers_pad_to_77_and_round_trip(pipeline):
    ids = pipeline.tokenizer("A Golden Kite", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == pipeline.tokenizer.bos_token_id and ids[4] == pipeline.tokenizer.eos_token_id
    assert pipeline.tokenizer.decode(ids[:5], skip_special_tokens=True) == "a golden kite"


def test_prompt_encoding_is_penultimate_concat_and_projected_pool(pipeline, prompt_embeddings):
    prompt_embeds, pooled_prompt_embeds = prompt_embeddings
    assert prompt_embeds.shape == (1, 77, 2048)
    assert pooled_prompt_embeds.shape == (1, 1280)

    def token_ids(tokenizer):
        return tokenizer("a red fox in the snow", padding="max_length", max_length=77, return_tensors="pt").input_ids

    with torch.no_grad():
        clip_l = pipeline.text_encoder(token_ids(pipeline.tokenizer), output_hidden_states=True)
        clip_g = pipeline.text_encoder_2(token_ids(pipeline.tokenizer_2), output_hidden_states=True)
    penultimate = torch.cat([clip_l.hidden_states[-2], clip_g.hidden_states[-2]], dim=-1)
    torch.testing.assert_close(prompt_embeds, penultimate)
    torch.testing.assert_close(pooled_prompt_embeds, clip_g.text_embeds)


def test_unet_forward_with_text_time_conditioning(pipeline, prompt_embeddings):
    prompt_embeds, pooled_prompt_embeds = prompt_embeddings
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])  # original size, crop, target size
    with torch.no_grad():
        noise_prediction = pipeline.unet(
            latents,
            torch.tensor([500]),
            encoder_hidden_states=prompt_embeds,
            added_cond_kwargs={"text_embeds": pooled_prompt_embeds, "time_ids": time_ids},
        ).sample
    assert noise_prediction.shape == latents.shape
    assert torch.isfinite(noise_prediction).all()


def test_pipeline_denoises_from_prompt_embeddings(pipeline, prompt_embeddings):
    prompt_embeds, pooled_prompt_embeds = prompt_embeddings
    images = pipeline(
        prompt_embeds=prompt_embeds,
        pooled_prompt_embeds=pooled_prompt_embeds,
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 3, 64, 64)
    assert torch.isfinite(images).all()
    assert 0.0 <= images.min() and images.max() <= 1.0

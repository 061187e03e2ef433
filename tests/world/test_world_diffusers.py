"""`python -m train.world diffusers`: the world's SDXL as a diffusers folder that train/'s
load_sdxl reads, computing what the world's ComfyUI-built parts compute (the UNet, the
text encoders through train/'s caption path, the taesdxl VAE through train/'s latent
path), and a bad weights folder refused before anything is written."""

from __future__ import annotations

import random
import shutil

import pytest
import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

from train.sdxl import FrozenEncoders, load_sdxl
from train.world.__main__ import main
from train.world.language import caption
from train.world.layout import WeightsLayout
from train.world.scenes import random_scene
from train.world.sdxl import alphas_cumprod, build_text_encoders, encode_captions, load_unet, new_unet, save_unet
from train.world.taesd import TinyAutoencoder, load_taesd, save_taesd

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> WeightsLayout:
    """A weights folder in the shipped layout with random weights, none zero (ComfyUI
    zero-initialises the UNet's output layers, which would hide a wrong mapping)."""
    layout = WeightsLayout(tmp_path_factory.mktemp("world-weights"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        unet = new_unet(0)
        with torch.no_grad():
            for name, parameter in unet.named_parameters():
                if parameter.ndim > 1:
                    parameter.copy_(torch.randn_like(parameter) / parameter[0].numel() ** 0.5)
                else:  # norm weights near 1, biases near 0
                    parameter.copy_(torch.randn_like(parameter) * 0.05 + name.endswith("weight"))
        save_unet(unet, layout.unet)
        save_taesd(TinyAutoencoder(), layout.vae)
    return layout


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("world-diffusers") / "sdxl"
    assert main(["diffusers", "--weights", str(weights.root), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def frozen(exported) -> FrozenEncoders:
    return FrozenEncoders(load_sdxl(exported, None, torch.float32, CPU))


def test_the_folder_loads_with_train_sdxl_loader_as_sdxl_with_a_tiny_vae(exported, frozen):
    parts = frozen.parts
    assert isinstance(parts.vae, AutoencoderTiny) and frozen.latent_scaling_factor == 1.0
    assert parts.unet.config.cross_attention_dim == 2048 and parts.unet.config.addition_embed_type == "text_time"
    assert parts.text_encoder_2.config.projection_dim == 1280
    assert parts.noise_scheduler.config.prediction_type == "epsilon"
    torch.testing.assert_close(parts.noise_scheduler.alphas_cumprod, alphas_cumprod())  # the world UNet's schedule
    assert parts.tokenizer_2.pad_token == "!" and parts.tokenizer.pad_token == "<|endoftext|>"
    assert {path.suffix for path in exported.rglob("*") if path.is_file()} == {".json", ".safetensors"}
    assert len(list(exported.glob("*/*.safetensors"))) == 4  # unet, vae, both text encoders
    assert not list(exported.parent.glob(".*.tmp"))  # written atomically: no temporary left


def _sdxl_adm(pooled: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """ComfyUI's 2816-wide ADM vector: pooled text embedding, then 256-wide sinusoidal
    embeddings of the six size and crop ids (comfy.model_base.SDXL.encode_adm)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

    return torch.cat([pooled, Timestep(256)(time_ids.flatten()).reshape(len(time_ids), -1)], dim=1)


def test_the_unet_computes_what_the_comfyui_unet_computes(weights, frozen):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    context = torch.randn(2, 77, 2048, generator=generator)
    pooled = torch.randn(2, 1280, generator=generator)
    timesteps = torch.tensor([10, 700])
    time_ids = torch.tensor([[128.0, 128, 0, 0, 128, 128], [96.0, 112, 8, 16, 128, 128]])
    with torch.no_grad():
        expected = load_unet(weights.unet)(latents, timesteps, context=context, y=_sdxl_adm(pooled, time_ids))
        exported = frozen.parts.unet(latents, timesteps, encoder_hidden_states=context,
                                     added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    assert expected.abs().mean() > 0.1  # a non-trivial output to compare
    torch.testing.assert_close(exported, expected, atol=1e-4, rtol=1e-4)


def test_train_caption_targets_equal_the_world_text_encoders(frozen):
    rng = random.Random(0)
    captions = [caption(random_scene(rng, "train")) for _ in range(4)] + [""]
    assert any(" and " in text for text in captions)  # a two-object caption among them
    expected_context, expected_pooled = encode_captions(build_text_encoders(), captions)
    context, pooled = frozen.caption_targets(captions)
    assert context.shape == (5, 77, 2048) and pooled.shape == (5, 1280)
    torch.testing.assert_close(context, expected_context, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-4, rtol=1e-4)


def test_train_latents_and_decodes_equal_the_taesdxl_ones(weights, frozen):
    """train/ trains on (mean + std * noise) * scaling factor: here exactly the encoder's
    raw output z, the latent ComfyUI's taesdxl hands the UNet."""
    taesd = load_taesd(weights.vae)
    pixels = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))  # [0, 1], TAESD's input
    with torch.no_grad():
        mean, std = frozen.latent_distribution(pixels * 2 - 1)  # train/'s images are in [-1, 1]
        expected = taesd.encoder(pixels)
        decoded = frozen.parts.vae.decode(expected).sample
        expected_pixels = taesd.decoder(expected)
    torch.testing.assert_close(mean * frozen.latent_scaling_factor, expected, atol=1e-5, rtol=1e-5)
    assert std.abs().max() == 0
    torch.testing.assert_close((decoded + 1) / 2, expected_pixels, atol=1e-5, rtol=1e-5)


def test_a_folder_without_world_weights_is_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "sdxl"
    assert main(["diffusers", "--weights", str(tmp_path), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "weights" in error and "m2chat-world-sdxl.safetensors" in error and "train.world build" in error
    assert not out.exists()


def test_weights_of_another_model_are_refused_before_writing(weights, tmp_path, capsys):
    other = WeightsLayout(tmp_path / "other")
    shutil.copytree(weights.vae, other.vae)
    save_file({"input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, other.unet)
    out = tmp_path / "sdxl"
    assert main(["diffusers", "--weights", str(other.root), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "does not hold the world's weights" in error and str(other.unet) in error
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_an_out_folder_that_is_not_a_diffusers_folder_is_kept(weights, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["diffusers", "--weights", str(weights.root), "--out", str(tmp_path)]) == 2
    assert "out" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"

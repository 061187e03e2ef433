"""The shapes world's VAE loads through ComfyUI's native VAELoader as "taesdxl" and
computes there exactly what train/world computes (identity blocks included)."""

from __future__ import annotations

import shutil

import pytest
import torch

from train.world.taesd import DECODER_FILE, ENCODER_FILE, TinyAutoencoder, load_taesd, save_taesd

SDXL_SCALE = 0.13025  # ComfyUI's vae_scale for "taesdxl" and SDXL's latent scale factor


@pytest.fixture
def world_vae(comfy, tmp_path):
    """A seeded world VAE (every trained block non-zero) put in models/vae_approx in place
    of the tiny one, which is put back afterwards."""
    torch.manual_seed(0)
    model = TinyAutoencoder()
    model.prepare_training()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.mul_(0.5).add_(0.01 * torch.randn_like(parameter))
    folder = comfy.models_dir / "vae_approx"
    backup = tmp_path / "tiny"
    shutil.copytree(folder, backup)
    for path in save_taesd(model, tmp_path / "world"):
        shutil.copy(path, folder / path.name)
    yield load_taesd(tmp_path / "world")  # the float16 weights as saved
    for name in (ENCODER_FILE, DECODER_FILE):
        shutil.copy(backup / name, folder / name)


def test_native_vae_loader_reads_the_world_vae_and_matches_it(comfy, world_vae):
    loader = comfy.node_class("VAELoader")
    assert "taesdxl" in loader.vae_list(loader)
    vae = loader().load_vae("taesdxl")[0]
    pixels = torch.rand(2, 64, 64, 3)
    with torch.no_grad():
        latent = vae.encode(pixels)  # ComfyUI's latent space (divided by the scale)
        decoded = vae.decode(latent)
        expected_latent = world_vae.encoder(pixels.permute(0, 3, 1, 2)) / SDXL_SCALE
        expected_pixels = world_vae.decoder(latent.float() * SDXL_SCALE).clamp(0, 1).permute(0, 2, 3, 1)
    assert latent.shape == (2, 4, 8, 8)
    torch.testing.assert_close(latent.float(), expected_latent, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(decoded.reshape(expected_pixels.shape).float(), expected_pixels, atol=1e-4, rtol=0)

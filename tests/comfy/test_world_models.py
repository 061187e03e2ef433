"""The shapes world's shipped SDXL parts load through ComfyUI's native loaders and compute
there exactly what train/world trained: the UNet (detected as SDXL), the taesdxl VAE
(identity blocks included), the text encoders, and SDXL's size conditioning; and all
three from one single-file checkpoint through CheckpointLoaderSimple."""

from __future__ import annotations

import torch

from train.world.checkpoint import CHECKPOINT_FILE, write_checkpoint
from train.world.layout import SHIPPED
from train.world.sdxl import alphas_cumprod, build_text_encoders, encode_captions, load_unet, size_vector
from train.world.taesd import TAESDXL_SCALE, load_taesd

CAPTIONS = ["a small red star at the top left on a grey background",
            "a large blue circle in the middle and a small green cross at the bottom on a white background", ""]


def test_native_vae_loader_reads_the_world_vae_and_matches_it(comfy):
    loader = comfy.node_class("VAELoader")
    assert "taesdxl" in loader.vae_list(loader)
    vae = loader().load_vae("taesdxl")[0]
    world_vae = load_taesd(SHIPPED.vae)
    pixels = torch.rand(2, 64, 64, 3)
    with torch.no_grad():
        latent = vae.encode(pixels)  # ComfyUI's latent space (divided by the scale)
        decoded = vae.decode(latent)
        expected_latent = world_vae.encoder(pixels.permute(0, 3, 1, 2)) / TAESDXL_SCALE
        expected_pixels = world_vae.decoder(latent.float() * TAESDXL_SCALE).clamp(0, 1).permute(0, 2, 3, 1)
    assert latent.shape == (2, 4, 8, 8)
    torch.testing.assert_close(latent.float(), expected_latent, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(decoded.reshape(expected_pixels.shape).float(), expected_pixels, atol=1e-3, rtol=0)


def test_native_unet_loader_reads_the_world_unet_as_sdxl_and_matches_it(comfy):
    from comfy.model_base import SDXL

    patcher, = comfy.node_class("UNETLoader")().load_unet(SHIPPED.unet.name, "default")
    model = patcher.model
    assert isinstance(model, SDXL) and type(model.model_config).__name__ == "WorldSDXL"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=generator)
    context = torch.randn(2, 77, 2048, generator=generator)
    pooled = torch.randn(2, 1280, generator=generator)
    timesteps = torch.tensor([10, 700])
    y = model.encode_adm(pooled_output=pooled, width=128, height=128)  # what KSampler feeds it
    torch.testing.assert_close(y, torch.cat([pooled, size_vector(2, 128)], dim=1))
    with torch.no_grad():
        native = model.diffusion_model(x, timesteps, context=context, y=y).float()
        trained = load_unet(SHIPPED.unet)(x, timesteps, context=context, y=y)
    torch.testing.assert_close(native, trained, atol=1e-4, rtol=1e-4)
    sigmas = model.model_sampling.sigmas.float()  # ComfyUI's schedule: sigma^2 = (1 - a) / a
    alphas = alphas_cumprod()
    torch.testing.assert_close(sigmas, ((1 - alphas) / alphas).sqrt(), atol=1e-4, rtol=1e-4)


def test_text_encoders_match_clip_text_encode(comfy):
    clip, = comfy.node_class("TinySDXLCLIPLoader")().load(seed=0)
    contexts, pooled = encode_captions(build_text_encoders(0), CAPTIONS)
    for index, text in enumerate(CAPTIONS):
        (context, extra), = comfy.node_class("CLIPTextEncode")().encode(clip, text)[0]
        torch.testing.assert_close(context[0], contexts[index])
        torch.testing.assert_close(extra["pooled_output"][0], pooled[index])
    assert (contexts[0] - contexts[1]).abs().amax() > 1  # different captions, different contexts


def test_checkpoint_loader_reads_the_world_checkpoint_as_its_three_parts(comfy):
    path = comfy.models_dir / "checkpoints" / CHECKPOINT_FILE
    write_checkpoint(path)
    try:
        model, clip, vae = comfy.node_class("CheckpointLoaderSimple")().load_checkpoint(CHECKPOINT_FILE)[:3]
    finally:
        path.unlink()  # 298 MB
    assert type(model.model.model_config).__name__ == "WorldSDXL"
    generator = torch.Generator().manual_seed(1)
    x, context = torch.randn(1, 4, 16, 16, generator=generator), torch.randn(1, 77, 2048, generator=generator)
    y = torch.cat([torch.randn(1, 1280, generator=generator), size_vector(1, 128)], dim=1)
    with torch.no_grad():
        native = model.model.diffusion_model(x, torch.tensor([500]), context=context, y=y).float()
        trained = load_unet(SHIPPED.unet)(x, torch.tensor([500]), context=context, y=y)
    torch.testing.assert_close(native, trained, atol=1e-4, rtol=1e-4)

    # ComfyUI runs a checkpoint's text encoders in float16 (1e-3 from float32 here); other
    # weights or layers would be off by about 1.
    contexts, pooled = encode_captions(build_text_encoders(0), CAPTIONS[:1])
    (context, extra), = comfy.node_class("CLIPTextEncode")().encode(clip, CAPTIONS[0])[0]
    torch.testing.assert_close(context[0].float(), contexts[0], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(extra["pooled_output"][0].float(), pooled[0], atol=1e-2, rtol=1e-2)

    pixels = torch.rand(1, 64, 64, 3)
    expected = comfy.node_class("VAELoader")().load_vae("taesdxl")[0].encode(pixels)
    torch.testing.assert_close(vae.encode(pixels), expected)

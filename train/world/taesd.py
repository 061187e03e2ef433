"""The world's VAE in the Tiny AutoEncoder (TAESD) layout that ComfyUI's VAELoader reads
as "taesdxl": `taesdxl_encoder.safetensors` and `taesdxl_decoder.safetensors` in
models/vae_approx, with the same module indices (so the same state-dict keys) as
comfy/taesd/taesd.py. 8× down, 4 latent channels.

Scales, as ComfyUI applies them for "taesdxl" (vae_scale 0.13025 = SDXL's scale factor):
the encoder's raw output z is the latent the UNet sees (ComfyUI divides by 0.13025 on
encode and SDXL's latent format multiplies it back), and the decoder reads z again. So z
is trained to have about unit spread, as SDXL's scaled latents do.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from m2chat_core.atomic_files import atomic_path

WIDTH = 64
LATENT_CHANNELS = 4
ENCODER_FILE = "taesdxl_encoder.safetensors"
DECODER_FILE = "taesdxl_decoder.safetensors"
TAESDXL_SCALE = 0.13025  # ComfyUI's vae_scale for "taesdxl": SDXL's latent scale factor
# Blocks trained as a plain ReLU (zero convolutions): the full-resolution block and one
# 64²-level block of each half; the rest of the layout is ComfyUI's, unchanged.
IDENTITY_BLOCKS = {"encoder": (1, 3), "decoder": (13, 18)}


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(width, width), nn.ReLU(), _conv(width, width), nn.ReLU(), _conv(width, width))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.frozen_identity = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen_identity:  # conv(x) is exactly 0: skip computing it
            return self.fuse(x)
        return self.fuse(self.conv(x) + self.skip(x))

    def freeze_as_identity(self) -> None:
        for parameter in self.conv.parameters():
            nn.init.zeros_(parameter)
            parameter.requires_grad_(False)
        self.frozen_identity = True


def encoder() -> nn.Sequential:
    """[0, 1] RGB -> z."""
    return nn.Sequential(
        _conv(3, WIDTH), _Block(WIDTH),
        _conv(WIDTH, WIDTH, stride=2, bias=False), _Block(WIDTH), _Block(WIDTH), _Block(WIDTH),
        _conv(WIDTH, WIDTH, stride=2, bias=False), _Block(WIDTH), _Block(WIDTH), _Block(WIDTH),
        _conv(WIDTH, WIDTH, stride=2, bias=False), _Block(WIDTH), _Block(WIDTH), _Block(WIDTH),
        _conv(WIDTH, LATENT_CHANNELS),
    )


def decoder() -> nn.Sequential:
    """z -> [0, 1] RGB."""
    def up() -> list[nn.Module]:
        return [nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False)]
    return nn.Sequential(
        _Clamp(), _conv(LATENT_CHANNELS, WIDTH), nn.ReLU(),
        _Block(WIDTH), _Block(WIDTH), _Block(WIDTH), *up(),
        _Block(WIDTH), _Block(WIDTH), _Block(WIDTH), *up(),
        _Block(WIDTH), _Block(WIDTH), _Block(WIDTH), *up(),
        _Block(WIDTH), _conv(WIDTH, 3),
    )


class TinyAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = encoder()
        self.decoder = decoder()

    def prepare_training(self) -> None:
        """Start every block as the identity (its last convolution zero), and keep the
        blocks of IDENTITY_BLOCKS so: on a CPU the full-resolution blocks cost most of the
        time. Their zero weights are saved too, so ComfyUI computes the same function."""
        for module in self.modules():
            if isinstance(module, _Block):
                nn.init.zeros_(module.conv[4].weight)
                nn.init.zeros_(module.conv[4].bias)
        for part, indices in ((self.encoder, IDENTITY_BLOCKS["encoder"]), (self.decoder, IDENTITY_BLOCKS["decoder"])):
            for index in indices:
                part[index].freeze_as_identity()


def save_taesd(model: TinyAutoencoder, folder: Path) -> tuple[Path, Path]:
    """Write the two files ComfyUI's VAELoader pairs as "taesdxl" (float16), atomically."""
    paths = folder / ENCODER_FILE, folder / DECODER_FILE
    for part, path in zip((model.encoder, model.decoder), paths):
        tensors = {name: value.detach().to(torch.float16).contiguous() for name, value in part.state_dict().items()}
        with atomic_path(path) as temporary:
            save_file(tensors, temporary, metadata={"format": "taesd", "trained_on": "m2chat shapes world"})
    return paths


def load_taesd(folder: Path) -> TinyAutoencoder:
    model = TinyAutoencoder()
    for part, name in ((model.encoder, ENCODER_FILE), (model.decoder, DECODER_FILE)):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; train the world's VAE with `python -m train.world vae`.")
        part.load_state_dict({key: value.float() for key, value in load_file(path).items()})
    return model

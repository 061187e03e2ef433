"""Target images at the training resolution, with SDXL's micro-conditioning ids.

SDXL's UNet is told each image's original size, the top-left corner of the crop taken
from the resized image, and the target size (the six "time ids"); recording the real
values lets the model learn what cropping looks like, as SDXL itself was trained.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class TargetImage:
    """pixels: (3, R, R) float32 in [-1, 1]. time_ids: (6,) float32, SDXL's
    (original height, original width, crop top, crop left, target height, target width)."""

    pixels: torch.Tensor
    time_ids: torch.Tensor


def prepare_target_image(image: Image.Image, resolution: int, crop: str, rng: random.Random) -> TargetImage:
    """Resize the shorter side to `resolution`, then take a `resolution`² crop ("center" or
    "random", the latter drawn from `rng`)."""
    image = image.convert("RGB")
    original_width, original_height = image.size
    scale = resolution / min(original_width, original_height)
    width = max(resolution, round(original_width * scale))
    height = max(resolution, round(original_height * scale))
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    if crop == "random":
        top, left = rng.randint(0, height - resolution), rng.randint(0, width - resolution)
    else:
        top, left = (height - resolution) // 2, (width - resolution) // 2
    cropped = resized.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    time_ids = torch.tensor(
        [original_height, original_width, top, left, resolution, resolution], dtype=torch.float32
    )
    return TargetImage(pixels=pixels, time_ids=time_ids)

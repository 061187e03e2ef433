"""Conversions between ComfyUI IMAGE tensors (B×H×W×C floats in [0, 1]) and PIL."""

import numpy as np
import torch
from PIL import Image


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Each image of a batch as RGB; grayscale and RGBA inputs are converted."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    pil = []
    for array in arrays:
        if array.shape[-1] == 1:
            array = array[..., 0]
        pil.append(Image.fromarray(array).convert("RGB"))
    return pil


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).unsqueeze(0)

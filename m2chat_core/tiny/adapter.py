"""A seeded, untrained M³Adapter file sized for a given VLM (tests and the demo)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..adapter import M3Adapter, M3AdapterConfig
from ..adapter_file import save_adapter_file


def build_tiny_adapter(path: str | Path, *, vlm_hidden_size: int, vision_feature_size: int,
                       trained_on_vlm: str, seed: int = 0) -> Path:
    """Write a small random adapter (width 64, one block, K = 4) for the given VLM sizes."""
    config = M3AdapterConfig(vlm_hidden_size=vlm_hidden_size, vision_feature_size=vision_feature_size,
                             chosen_layers=(-1, -2, -3), num_image_tokens=4, width=64, depth=1,
                             heads=4, trained_on_vlm=trained_on_vlm)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        adapter = M3Adapter(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_adapter_file(path, adapter)

"""The world's weights on disk: the shipped folder's layout, and where each file goes in a
ComfyUI `models` folder (the one definition both the build and the installers use)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .sdxl import UNET_FILE
from .taesd import DECODER_FILE, ENCODER_FILE

WEIGHTS = Path(__file__).parent / "weights"  # the shipped, trained world models
JUDGE_FILE = "judge.safetensors"
VLM_NAME = "m2chat-world-vlm"  # its folder name in models/LLM (what M2ChatVLMLoader lists)
ADAPTER_FILE = "m2chat-world-adapter.safetensors"  # M³FT on the world (train/configs/world_stage*.yaml)
CLIP_NAME = "clip"  # the world's CLIP folder (clip.py), read by the benchmarks, not by ComfyUI
TRAINING_FIGURES = "training.json"  # each stage's last learning-curve point


@dataclass(frozen=True)
class WeightsLayout:
    root: Path

    @property
    def judge(self) -> Path:
        return self.root / JUDGE_FILE

    @property
    def vae(self) -> Path:
        return self.root / "vae"

    @property
    def unet(self) -> Path:
        return self.root / UNET_FILE

    @property
    def vlm(self) -> Path:
        return self.root / "vlm"

    @property
    def clip(self) -> Path:
        return self.root / CLIP_NAME

    @property
    def adapter(self) -> Path:
        return self.root / ADAPTER_FILE

    def install(self, models_dir: Path) -> dict[str, Path]:
        """Copy the world's models where ComfyUI's loaders look: the UNet for UNETLoader
        (diffusion_models/), the VAE for VAELoader's "taesdxl" (vae_approx/), and, where
        there are, the VLM for M2ChatVLMLoader (LLM/) and the adapter for
        M2ChatAdapterLoader (m2chat/)."""
        targets = {
            "unet": (self.unet, models_dir / "diffusion_models" / UNET_FILE),
            "taesdxl_encoder": (self.vae / ENCODER_FILE, models_dir / "vae_approx" / ENCODER_FILE),
            "taesdxl_decoder": (self.vae / DECODER_FILE, models_dir / "vae_approx" / DECODER_FILE),
        }
        for source, target in targets.values():
            if not source.is_file():
                raise FileNotFoundError(f"{source} is missing; rebuild the world with `python -m train.world build`.")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        installed = {name: target for name, (_, target) in targets.items()}
        if self.vlm.is_dir():  # a Hugging Face folder, listed by M2ChatVLMLoader
            installed["vlm"] = Path(shutil.copytree(self.vlm, models_dir / "LLM" / VLM_NAME, dirs_exist_ok=True))
        if self.adapter.is_file():
            (models_dir / "m2chat").mkdir(parents=True, exist_ok=True)
            installed["adapter"] = Path(shutil.copyfile(self.adapter, models_dir / "m2chat" / ADAPTER_FILE))
        return installed


SHIPPED = WeightsLayout(WEIGHTS)

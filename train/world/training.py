"""Training the judge and the VAE with the world's procedural images (loop.py runs them)."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from m2chat_core.atomic_files import atomic_path

from . import judge as judging
from .config import JudgeConfig, VaeConfig
from .judge import Judge
from .layout import JUDGE_FILE
from .loop import train
from .render import render
from .scenes import ANY, Scene, random_scene
from .taesd import TinyAutoencoder, save_taesd
from .vocabulary import BACKGROUNDS, IMAGE_SIZE, SIZES, cell_centre

logger = logging.getLogger(__name__)

SNAPSHOTS = "snapshots"  # the VAE at every evaluation, for the judged learning curve


def _batch_rng(seed: int, name: str, step: int) -> random.Random:
    return random.Random(f"{name}:{seed}:{step}")


def _eval_set(seed: int, name: str, count: int, split: str) -> tuple[torch.Tensor, list[Scene]]:
    """Images no training step draws (their own random stream)."""
    return judging.scene_batch(random.Random(f"{name}-eval:{seed}:{split}"), count, split)


class JudgeTask:
    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self.model = Judge(config.width)
        self.eval_images, self.eval_scenes = _eval_set(config.seed, "judge", config.eval_images, ANY)

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        images, scenes = judging.scene_batch(_batch_rng(self.config.seed, "judge", step), self.config.batch_size)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        if step % 2:  # half the batches clean, half degraded
            images = judging.degrade(images, generator)
        return judging.judge_loss(self.model, images, judging.scene_labels(scenes)), {}

    def evaluate(self) -> dict[str, float]:
        return judging.accuracy(self.model, self.eval_images, self.eval_scenes)


def train_judge(config: JudgeConfig, stop_after: int | None = None) -> list[dict[str, float]]:
    task = JudgeTask(config)
    out = Path(config.out)
    curve = train(task, config.loop_settings(), out, {"model": "judge", **asdict(config)}, stop_after)
    if curve and curve[-1]["step"] == config.steps:
        save_judge(task.model, out / JUDGE_FILE)
    return curve


def save_judge(model: Judge, path: Path) -> Path:
    tensors = {name: value.detach().to(torch.float16).contiguous() for name, value in model.state_dict().items()}
    width = model.background.in_features // 2
    with atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata={"format": "m2chat-world-judge", "width": str(width)})
    logger.info("Saved the judge to %s", path)
    return path


def load_judge(path: str | Path) -> Judge:
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        raise FileNotFoundError(f"{path} is not a judge .safetensors file; train one with `python -m train.world judge`.")
    with safe_open(path, framework="pt") as file:
        metadata = file.metadata() or {}
        if metadata.get("format") != "m2chat-world-judge":
            raise ValueError(f"{path} is not a world judge (its metadata has no format 'm2chat-world-judge').")
        tensors = {key: file.get_tensor(key).float() for key in file.keys()}  # noqa: SIM118
    model = Judge(int(metadata["width"]))
    model.load_state_dict(tensors)
    return model.eval()


class VaeTask:
    """Reconstruction of crops around the shapes, pixels on and near a shape weighted
    `shape_weight` times more (a small shape is few pixels but all of its meaning)."""

    def __init__(self, config: VaeConfig) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self.model = TinyAutoencoder()
        self.model.prepare_training()
        self.snapshots = Path(config.out) / SNAPSHOTS
        half = config.eval_images // 2
        self.eval_sets = {split: _eval_set(config.seed, "vae", half, split) for split in ("train", "test")}
        self.step = 0

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        self.step = step + 1
        rng = _batch_rng(self.config.seed, "vae", step)
        scenes = [random_scene(rng, "train") for _ in range(self.config.batch_size)]
        images = judging.to_tensor([render(scene) for scene in scenes])
        crops = torch.stack([self._crop(rng, image, scene) for image, scene in zip(images, scenes)])
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        latents = self.model.encoder(crops)
        noise = torch.randn(latents.shape, generator=generator) * self.config.latent_noise
        decoded = self.model.decoder(latents + noise.to(latents.dtype)).float()
        backgrounds = torch.tensor([BACKGROUNDS[scene.background] for scene in scenes], dtype=torch.float32) / 255
        weight = 1 + self.config.shape_weight * _shape_mask(crops, backgrounds)
        reconstruction = (weight * (decoded - crops).abs()).mean() / weight.mean()
        latent_size = latents.float().pow(2).mean()
        return reconstruction + self.config.latent_penalty * latent_size, {"latent_rms": latent_size.sqrt().item()}

    def _crop(self, rng: random.Random, image: torch.Tensor, scene: Scene) -> torch.Tensor:
        """A crop on the 8-pixel latent grid, containing (part of) one of the scene's objects."""
        size = self.config.crop
        obj = rng.choice(scene.objects)
        x, y = cell_centre(obj.row, obj.column)
        reach = max(0, size // 2 - SIZES[obj.size] // 2)
        def corner(centre: float) -> int:
            start = centre - size / 2 + rng.uniform(-reach, reach)
            return min(max(0, round(start / 8) * 8), IMAGE_SIZE - size)
        left, top = corner(x), corner(y)
        return image[:, top:top + size, left:left + size]

    def evaluate(self) -> dict[str, float]:
        """PSNR over whole images and over the shapes' pixels, and the latents' spread; the
        weights are kept as a snapshot, so `measure` can read a judged learning curve later."""
        figures = {}
        for split, (images, scenes) in self.eval_sets.items():
            latents = self.model.encoder(images)
            decoded = self.model.decoder(latents).float().clamp(0, 1)
            backgrounds = torch.tensor([BACKGROUNDS[s.background] for s in scenes], dtype=torch.float32) / 255
            mask = _shape_mask(images, backgrounds).expand_as(images)
            error = (decoded - images).pow(2)
            figures[f"{split}_psnr"] = (-10 * torch.log10(error.mean())).item()
            figures[f"{split}_shape_psnr"] = (-10 * torch.log10(error[mask > 0].mean())).item()
            figures[f"{split}_latent_std"] = latents.float().std().item()
        save_taesd(self.model, self.snapshots / f"step-{self.step:06d}")
        return figures


def _shape_mask(images: torch.Tensor, backgrounds: torch.Tensor) -> torch.Tensor:
    """1 on pixels that differ from their image's background colour (B, 3), and 3 px around them."""
    on_shape = ((images - backgrounds.view(-1, 3, 1, 1)).abs().amax(dim=1, keepdim=True) > 0.05).float()
    return F.max_pool2d(on_shape, 7, stride=1, padding=3)


def train_vae(config: VaeConfig, stop_after: int | None = None) -> list[dict[str, float]]:
    task = VaeTask(config)
    out = Path(config.out)
    curve = train(task, config.loop_settings(), out, {"model": "vae", **asdict(config)}, stop_after)
    if curve and curve[-1]["step"] == config.steps:
        save_taesd(task.model, out)
        with atomic_path(out / "figures.json") as temporary:
            temporary.write_text(json.dumps(curve[-1], indent=2) + "\n")
    return curve

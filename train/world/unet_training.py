"""Training the world's SDXL UNet: epsilon-prediction on the world VAE's latents of
train-split scenes, conditioned on the world's text encoders' outputs for their captions
(DDPM, Ho et al. 2020; SDXL's schedule). Evaluation draws held-out prompts with DDIM and
classifier-free guidance and lets the judge read the pictures.

The training pool (latents, 77x2048 contexts in bfloat16, pooled vectors) is computed once
per run from the seed and kept in the run folder, so a resumed run trains on the same data
without encoding it again."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from m2chat_core.atomic_files import atomic_path

from .config import UnetConfig
from .judge import accuracy, to_tensor
from .language import caption
from .loop import WithAverage, train
from .render import render
from .scenes import random_scene
from .sdxl import (UNET_FILE, alphas_cumprod, build_text_encoders, encode_captions, load_unet, new_unet, save_unet,
                   size_vector)
from .taesd import TinyAutoencoder, load_taesd
from .training import load_judge
from .vocabulary import IMAGE_SIZE

logger = logging.getLogger(__name__)

# The image sizes SDXL's micro-conditioning tells the UNet during training, drawn per
# sample (the first is the world's): pictures come out the same whatever size a graph
# declares (CLIPTextEncode declares 768, the pack the latent's size).
SIZE_IDS = (IMAGE_SIZE, 512, 768, 1024)


POOL_FILE = "pool.safetensors"  # the run's training pool, kept so a resumed run skips encoding it


@dataclass(frozen=True)
class ConditionPool:
    """Latents, 77x2048 contexts (bfloat16) and pooled vectors of the training scenes."""

    latents: torch.Tensor
    contexts: torch.Tensor
    pooled: torch.Tensor

    @classmethod
    def encode(cls, scenes: list, vae: TinyAutoencoder, clip, batch: int = 64) -> ConditionPool:
        latents = []
        for first in tqdm(range(0, len(scenes), batch), desc="encoding the training pool"):
            images = to_tensor([render(scene) for scene in scenes[first:first + batch]])
            with torch.no_grad():
                latents.append(vae.encoder(images).float())
        contexts, pooled = encode_captions(clip, [caption(scene) for scene in scenes])
        return cls(torch.cat(latents), contexts.to(torch.bfloat16), pooled)

    @classmethod
    def cached(cls, path: Path, identity: str, build: Callable[[], ConditionPool]) -> ConditionPool:
        """The pool saved at `path` if it was built for `identity`, else built and saved."""
        if path.is_file():
            with safe_open(path, framework="pt") as file:
                if (file.metadata() or {}).get("identity") == identity:
                    return cls(*(file.get_tensor(name) for name in ("latents", "contexts", "pooled")))
        pool = build()
        with atomic_path(path) as temporary:
            tensors = {"latents": pool.latents, "contexts": pool.contexts, "pooled": pool.pooled}
            save_file({name: value.contiguous() for name, value in tensors.items()}, temporary,
                      metadata={"identity": identity})
        return pool


class DdimSampler:
    """Draws scenes' canonical captions with a world UNet: DDIM (eta 0), classifier-free
    guidance against the empty caption, at the world's size; pictures decoded by the VAE."""

    def __init__(self, unet: torch.nn.Module, clip, vae: TinyAutoencoder, bf16: bool) -> None:
        self.unet, self.clip, self.vae, self.bf16 = unet, clip, vae, bf16
        self.empty = encode_captions(clip, [""])
        self.alphas = alphas_cumprod()
        self.size = size_vector(1)

    @torch.no_grad()
    def __call__(self, scenes: list, steps: int, guidance: float, seed: int) -> torch.Tensor:
        """Images in [0, 1], one per scene."""
        context, pooled = encode_captions(self.clip, [caption(scene) for scene in scenes])
        count = len(scenes)
        negative = self.empty[0].expand(count, -1, -1), self.empty[1].expand(count, -1)
        contexts = torch.cat([context, negative[0]])
        y = torch.cat([torch.cat([pooled, negative[1]]), self.size.expand(2 * count, -1)], dim=1)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((count, 4, 16, 16), generator=generator)
        timesteps = torch.linspace(len(self.alphas) - 1, 0, steps).round().long()
        for index, t in enumerate(timesteps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                eps = self.unet(torch.cat([x, x]), t.repeat(2 * count), contexts, y).float()
            eps = eps[count:] + guidance * (eps[:count] - eps[count:])
            alpha = self.alphas[t]
            x0 = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()
            alpha_next = self.alphas[timesteps[index + 1]] if index + 1 < steps else torch.tensor(1.0)
            x = alpha_next.sqrt() * x0 + (1 - alpha_next).sqrt() * eps
        return self.vae.decoder(x).float().clamp(0, 1)


class UnetTask:
    def __init__(self, config: UnetConfig) -> None:
        self.config = config
        self.unet = load_unet(Path(config.init)).train() if config.init else new_unet(config.seed)
        self.model = WithAverage(self.unet, config.ema_decay) if config.ema_decay else self.unet
        # What evaluation draws with and what is saved: the moving average when there is one.
        self.result = self.model.average if config.ema_decay else self.unet
        self.clip = build_text_encoders()
        self.vae = load_taesd(Path(config.vae)).eval()
        self.sample = DdimSampler(self.result, self.clip, self.vae, config.bf16)  # the evaluation's
        self.alphas = alphas_cumprod()  # the training noise schedule, SDXL's
        rng = random.Random(f"unet-pool:{config.seed}")
        scenes = [random_scene(rng, "train") for _ in range(config.pool_scenes)]
        identity = json.dumps({"seed": config.seed, "scenes": config.pool_scenes,
                               "vae": str(Path(config.vae).resolve())})
        self.pool = ConditionPool.cached(Path(config.out) / POOL_FILE, identity,
                                         lambda: ConditionPool.encode(scenes, self.vae, self.clip))
        self.sizes = torch.cat([size_vector(1, size) for size in SIZE_IDS])
        eval_rng = random.Random(f"unet-eval:{config.seed}")
        self.eval_scenes = [random_scene(eval_rng, "test") for _ in range(config.eval_prompts)]
        self.judge = load_judge(config.judge) if config.judge else None

    def _unconditional(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Half the empty caption's encoding, half all zeros (the pack's adapter negative)."""
        zero = torch.rand(count, generator=generator) < 0.5
        empty_context, empty_pooled = self.sample.empty
        context = empty_context.expand(count, -1, -1).clone()
        pooled = empty_pooled.expand(count, -1).clone()
        context[zero], pooled[zero] = 0, 0
        return context, pooled

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        index = torch.randint(len(self.pool.latents), (self.config.batch_size,), generator=generator)
        # Indexing with a tensor copies, so the batch's rows can be overwritten without touching the pool.
        latents, context, pooled = self.pool.latents[index], self.pool.contexts[index].float(), self.pool.pooled[index]
        drop = torch.rand(len(index), generator=generator) < self.config.uncond_probability
        if drop.any():  # classifier-free guidance: learn the unconditional prediction too
            context[drop], pooled[drop] = self._unconditional(int(drop.sum()), generator)
        timesteps = torch.randint(len(self.alphas), (len(index),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        # Offset noise: a random per-channel constant in the noise, so the pure noise a
        # sampler starts from carries no usable hint of the picture's mean colour (SDXL's
        # schedule leaves sqrt(alpha_T) = 0.07 of the latent in x_T, which a UNet otherwise
        # learns to read, then draws random backgrounds from random noise).
        noise = noise + self.config.offset_noise * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
        alpha = self.alphas[timesteps].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise  # q(x_t | x_0)
        sizes = self.sizes[torch.randint(len(SIZE_IDS), (len(index),), generator=generator)]
        y = torch.cat([pooled, sizes], dim=1)
        predicted = self.unet(noisy, timesteps, context, y)
        # Noisy timesteps weighted up to 1/SNR (the error x0 inherits from epsilon there),
        # capped: a sampler's first steps amplify the epsilon error by sqrt(1/SNR), so an
        # unweighted loss leaves them worse than guessing the mean latent.
        weight = ((1 - alpha) / alpha).clamp(1, self.config.noisy_weight_cap)
        return (weight * (predicted.float() - noise).pow(2)).mean() / weight.mean(), {}

    def evaluate(self) -> dict[str, float]:
        if self.judge is None:
            return {}
        images = self.sample(self.eval_scenes, self.config.eval_steps, self.config.guidance, self.config.seed)
        return {f"heldout_{name}": value for name, value in accuracy(self.judge, images, self.eval_scenes).items()}


def train_unet(config: UnetConfig, stop_after: int | None = None) -> list[dict[str, float]]:
    task = UnetTask(config)
    out = Path(config.out)
    curve = train(task, config.loop_settings(), out, {"model": "unet", **asdict(config)}, stop_after)
    if curve and curve[-1]["step"] == config.steps:
        save_unet(task.result, out / UNET_FILE)
        with atomic_path(out / "figures.json") as temporary:
            temporary.write_text(json.dumps(curve[-1], indent=2) + "\n")
    return curve

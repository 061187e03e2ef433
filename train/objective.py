"""One M³FT step's computation: teacher-forced VLM -> M³Adapter -> frozen UNet, and the
losses of Eq. 6 (stage 1) or Eq. 7 (stage 2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn
from torch.distributed.tensor import DTensor

from m2chat_core.adapter import M3Adapter, M3AdapterOutput
from m2chat_core.losses import alignment_loss, diffusion_loss, stage1_loss, stage2_loss, text_loss
from m2chat_core.teacher_forcing import TeacherForcingBatch, teacher_force
from m2chat_core.vlm import LoadedVLM

from .config import ConfigError
from .data.batches import TrainingBatch
from .sdxl import FrozenEncoders


@dataclass(frozen=True)
class DiffusionTargets:
    """What the step compares against: CLIP targets (Eq. 2) and the noised latents (Eq. 4-5)."""

    context: torch.Tensor  # (B, 77, 2048) e_clip
    pooled: torch.Tensor  # (B, 1280) e_pclip
    latents: torch.Tensor  # (B, 4, R/8, R/8) scaled VAE latents, the clean x_0
    noise: torch.Tensor  # ε, same shape
    timesteps: torch.Tensor  # (B,) long
    time_ids: torch.Tensor  # (B, 6) SDXL size and crop ids


def diffusion_targets(
    batch: TrainingBatch,
    frozen: FrozenEncoders,
    generator: torch.Generator,
    num_train_timesteps: int,
    device: torch.device,
) -> DiffusionTargets:
    """Targets from the cache or the frozen encoders; the latent sample, noise and
    timesteps come from `generator` (seeded per step, so a resumed run draws the same)."""
    if batch.cached is not None:
        cached = batch.cached
        context, pooled, time_ids = cached.context, cached.pooled, cached.time_ids
        latent_mean, latent_std = cached.latent_mean, cached.latent_std
    else:
        context, pooled = frozen.caption_targets(list(batch.captions))
        latent_mean, latent_std = frozen.latent_distribution(batch.pixels)
        time_ids = batch.time_ids
    latent_mean, latent_std = latent_mean.float().cpu(), latent_std.float().cpu()
    latents = (latent_mean + latent_std * torch.randn(latent_mean.shape, generator=generator)) * frozen.latent_scaling_factor
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (latents.shape[0],), generator=generator)
    return DiffusionTargets(
        context=context.to(device, torch.float32),
        pooled=pooled.to(device, torch.float32),
        latents=latents.to(device),
        noise=noise.to(device),
        timesteps=timesteps.to(device),
        time_ids=time_ids.to(device, torch.float32),
    )


PREDICTION_TYPES = ("epsilon", "v_prediction")  # what the frozen UNet predicts, from its scheduler


def check_prediction_type(noise_scheduler: DDPMScheduler) -> None:
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(
            f"the SDXL scheduler's prediction_type is {prediction_type!r}; M³FT trains through a UNet that "
            f"predicts one of {list(PREDICTION_TYPES)}: use such an SDXL (its scheduler/scheduler_config.json)."
        )


def unet_target(noise_scheduler: DDPMScheduler, targets: DiffusionTargets) -> torch.Tensor:
    """What the UNet must predict (diffusers' convention): ε itself for an ε-prediction
    model (Eq. 5 as written), v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0 for a v-prediction fine-tune."""
    check_prediction_type(noise_scheduler)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(targets.latents, targets.noise, targets.timesteps)
    return targets.noise


class M3FTModel(nn.Module):
    """Everything a step runs, as one module so that accelerate/DDP see every trainable
    parameter (the adapter's and, in stage 2, the VLM's). Returns a dict of scalars:
    "total", each loss term, and "gate" (the mean g of the batch). Every trainable parameter
    gets a gradient on every process, zero where the batch does not use it (a batch without
    pictures leaves the image path unused; called with None, a batch whose samples were all
    skipped, the loss is zero), so reductions that walk the parameters (DDP, DeepSpeed)
    see the same set on every process."""

    def __init__(
        self,
        vlm: LoadedVLM,
        adapter: M3Adapter,
        unet: UNet2DConditionModel,
        noise_scheduler: DDPMScheduler,
        *,
        stage: int,
        phi: float,
        lambda_text: float,
        ddpm_weight: float = 1.0,
        blank_picture: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.adapter = adapter
        self.vlm_model = vlm.model  # registered: stage 2 trains parts of it
        self.unet = unet
        self.vlm = vlm
        check_prediction_type(noise_scheduler)  # refused before the first step
        self.noise_scheduler = noise_scheduler
        self.stage, self.phi, self.lambda_text, self.ddpm_weight = stage, phi, lambda_text, ddpm_weight
        self.blank_picture = blank_picture  # sharded parameters: see teacher_force

    def forward(
        self, forced: TeacherForcingBatch | None, targets: DiffusionTargets | None
    ) -> dict[str, torch.Tensor]:
        if forced is None or targets is None:
            return {"total": self.every_trained_parameter_touched()}
        adapter = self.adapter
        vlm_output = teacher_force(
            self.vlm,
            forced,
            adapter.special_token_embeddings,
            adapter.config.chosen_layers,
            with_text_logits=self.stage == 2,
            blank_picture=self.blank_picture,
        )
        adapted = adapter(vlm_output.features)  # h_align (B, 77, 2048), h_palign (B, 1280)
        align = alignment_loss(adapted.context, adapted.pooled, targets.context, targets.pooled)  # Eq. 2

        ddpm = self.unet_loss(adapted, targets) if self.ddpm_weight else align.new_zeros(())
        if self.stage == 1:
            losses = stage1_loss(ddpm, align, self.phi, self.ddpm_weight)  # Eq. 6
        else:
            text = text_loss(vlm_output.logits, vlm_output.labels)
            losses = stage2_loss(ddpm, align, text, self.phi, self.lambda_text, self.ddpm_weight)  # Eq. 7
        total = losses.total + self.every_trained_parameter_touched()
        return {"total": total, **losses.terms, "gate": adapted.gate.mean().detach()}

    def every_trained_parameter_touched(self) -> torch.Tensor:
        """0, with a (zero) gradient path to every trainable parameter. Under FSDP a layer
        sharded on its own holds its parameters as DTensor shards outside its forward; those
        layers (the adapter's blocks, the VLM's decoder layers) run on every process at every
        step, so their parameters have gradients already and are left out."""
        touched = [parameter.sum() for parameter in self.parameters()
                   if parameter.requires_grad and not isinstance(parameter, DTensor)]
        return sum(touched) * 0.0

    def unet_loss(self, adapted: M3AdapterOutput, targets: DiffusionTargets) -> torch.Tensor:
        """Eq. 5 on the frozen UNet's prediction, Eq. 4: h_unet = θ_unet(δ_noise(I, t), h_align, h_palign, t)."""
        noisy_latents = self.noise_scheduler.add_noise(targets.latents, targets.noise, targets.timesteps)
        unet_dtype = self.unet.dtype
        prediction = self.unet(
            noisy_latents.to(unet_dtype),
            targets.timesteps,
            encoder_hidden_states=adapted.context.to(unet_dtype),
            added_cond_kwargs={"text_embeds": adapted.pooled.to(unet_dtype), "time_ids": targets.time_ids.to(unet_dtype)},
        ).sample
        return diffusion_loss(prediction, unet_target(self.noise_scheduler, targets))

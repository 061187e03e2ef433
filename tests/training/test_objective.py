"""The diffusion target follows the frozen SDXL's scheduler: ε for an ε-prediction UNet,
v for a v-prediction fine-tune, and anything else is refused before the first step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler

from train.config import ConfigError
from train.objective import DiffusionTargets, M3FTModel, unet_target


def _targets() -> DiffusionTargets:
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    return DiffusionTargets(context=torch.zeros(3, 77, 2048), pooled=torch.zeros(3, 1280), latents=latents,
                            noise=noise, timesteps=torch.tensor([0, 500, 999]), time_ids=torch.zeros(3, 6))


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, EulerDiscreteScheduler])
def test_epsilon_prediction_trains_on_the_noise(scheduler_class):
    targets = _targets()
    scheduler = scheduler_class(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert scheduler.config.prediction_type == "epsilon"
    assert torch.equal(unet_target(scheduler, targets), targets.noise)


def test_v_prediction_trains_on_the_velocity():
    targets = _targets()
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction")
    cumulative = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dim=0)[targets.timesteps]
    alpha, sigma = cumulative.sqrt().view(3, 1, 1, 1), (1 - cumulative).sqrt().view(3, 1, 1, 1)
    expected = alpha * targets.noise - sigma * targets.latents  # v = √ᾱ·ε − √(1−ᾱ)·x_0
    assert torch.allclose(unet_target(scheduler, targets), expected, atol=1e-5)
    assert not torch.allclose(expected, targets.noise, atol=0.1)


def test_other_prediction_types_are_refused_with_the_fix():
    scheduler = DDPMScheduler(prediction_type="sample")
    with pytest.raises(ConfigError, match=r"prediction_type is 'sample'.*\['epsilon', 'v_prediction'\].*scheduler"):
        unet_target(scheduler, _targets())
    with pytest.raises(ConfigError, match="prediction_type is 'sample'"):
        M3FTModel(SimpleNamespace(model=None), None, None, scheduler, stage=1, phi=1.0, lambda_text=1.0)

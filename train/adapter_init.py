"""The M³Adapter a stage starts from: a fresh one (stage 1) or a stage-1 file (stage 2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch

from m2chat_core.adapter import M3Adapter, M3AdapterConfig
from m2chat_core.adapter_file import check_compatible, load_adapter_file
from m2chat_core.encoder import text_marker_embeddings
from m2chat_core.m3ft_settings import AdapterArchitecture
from m2chat_core.vlm import LoadedVLM

from .config import AdapterConfig, ConfigError
from .data.samples import SkippedSample, TrainingSample
from .sdxl import FrozenEncoders



def check_chosen_layers(chosen_layers: tuple[int, ...], num_layers: int, vlm_name: str) -> None:
    """ConfigError unless every chosen layer is a hidden-state index of a VLM with `num_layers` layers."""
    bad_layers = [layer for layer in chosen_layers if not -(num_layers + 1) <= layer <= num_layers]
    if bad_layers:
        raise ConfigError(
            f"adapter.chosen_layers {bad_layers} are not hidden-state indices of {vlm_name}, which has "
            f"{num_layers} layers (valid: {-(num_layers + 1)} to {num_layers})."
        )


def new_adapter(settings: AdapterConfig, vlm: LoadedVLM) -> M3Adapter:
    """A float32 adapter for `vlm`; the special-token rows start as the mean embedding of
    each marker's text tokens, the stand-ins the encoder uses without an adapter."""
    info = vlm.info
    check_chosen_layers(settings.chosen_layers, info.num_layers, info.name)
    architecture = {item.name: getattr(settings, item.name) for item in dataclasses.fields(AdapterArchitecture)}
    config = M3AdapterConfig(**architecture, vlm_hidden_size=info.hidden_size,
                             vision_feature_size=info.vision_feature_size, trained_on_vlm=info.name)
    adapter = M3Adapter(config).to(vlm.device)
    with torch.no_grad():
        adapter.special_token_embeddings.copy_(text_marker_embeddings(vlm).float())
    return adapter


def adapter_from_file(path: str | Path, vlm: LoadedVLM, gate_mode: str) -> M3Adapter:
    """The stage-1 adapter in `path`, float32, with `gate_mode`; refuses files with VLM
    deltas (continue a stage-2 run with --resume instead)."""
    adapter_file = load_adapter_file(path)
    if adapter_file.vlm_deltas is not None:
        raise ConfigError(
            f"init_from {path} already holds stage-2 VLM deltas; start stage 2 from a stage-1 adapter file, "
            "or continue that stage-2 run with --resume."
        )
    info = vlm.info
    check_compatible(adapter_file.config, info.hidden_size, info.vision_feature_size, info.name)
    adapter = M3Adapter(dataclasses.replace(adapter_file.config, gate_mode=gate_mode))
    adapter.load_state_dict({name: tensor.float() for name, tensor in adapter_file.adapter_state.items()})
    return adapter.to(vlm.device)


def mean_caption_targets(
    samples: Iterable[TrainingSample | SkippedSample], frozen: FrozenEncoders, count: int, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CLIP targets of the first `count` usable samples: (2048,) over samples and
    the 77 positions, and (1280,) pooled; cached targets are used when present."""
    context_sum, pooled_sum, used, positions, captions = 0.0, 0.0, 0, 0, []

    def add(context: torch.Tensor, pooled: torch.Tensor) -> None:
        nonlocal context_sum, pooled_sum, used, positions
        context_sum = context_sum + context.double().sum(dim=(0, 1))
        pooled_sum = pooled_sum + pooled.double().sum(dim=0)
        used += pooled.shape[0]
        positions += context.shape[0] * context.shape[1]

    for sample in samples:
        if used + len(captions) >= count:
            break
        if isinstance(sample, SkippedSample):
            continue
        if sample.cached is not None:
            add(sample.cached.context[None], sample.cached.pooled[None])
        else:
            captions.append(sample.turn.caption)
        if len(captions) == batch_size:
            add(*frozen.caption_targets(captions))
            captions = []
    if captions:
        add(*frozen.caption_targets(captions))
    if not used:
        raise ValueError("No usable training sample to compute the mean CLIP target from.")
    return (context_sum / positions).float(), (pooled_sum / used).float()


def start_at_mean_target(adapter: M3Adapter, mean_context: torch.Tensor, mean_pooled: torch.Tensor) -> None:
    """Zero the output projections' weights and set their biases to the mean targets, so the
    untrained adapter predicts the mean (Eq. 2's predict-the-mean baseline)."""
    with torch.no_grad():
        for projection, mean in ((adapter.context_projection, mean_context), (adapter.pooled_projection, mean_pooled)):
            projection.weight.zero_()
            projection.bias.copy_(mean.to(projection.bias))

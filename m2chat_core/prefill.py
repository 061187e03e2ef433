"""What a turn's prompt prefill has to compute, given what a `PrefixCache` already holds.

The prompt's units (token ids, image placeholders paired with their image's digest) are
looked up in the cache; the longest shared prefix is reused, cut back so that at least
the last prompt position is fed (its logits start generation) and so that no image's
placeholder run is split (the forward takes whole images). Only images after the cut
are fed to the language model, and only images whose features the cache lacks go
through the vision tower (f_img of the new turn's images is always returned).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .prefix_cache import PrefixCache, Units
from .vlm import LoadedVLM

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptPrefill:
    units: Units | None  # None when the prompt's images cannot be told apart in its ids
    reused: int  # prompt positions taken from the cache
    kv_cache: Any  # a KV cache holding those positions, or None
    forward_inputs: dict[str, Any]  # the rest of the prompt, for the model's forward
    new_image_features: list[torch.Tensor]  # f_img: (P_i, D_vis) per image of the new turn


def plan_prefill(
    vlm: LoadedVLM,
    inputs: Mapping[str, Any],
    prompt_images: Sequence[bytes],
    num_new_images: int,
    prefix_cache: PrefixCache | None,
) -> PromptPrefill:
    """`inputs`: the processor outputs of the prompt, whose images are `prompt_images`
    (PNG bytes, in prompt order; the last `num_new_images` belong to the new turn)."""
    digests = [hashlib.sha256(image).hexdigest() for image in prompt_images]
    token_ids = inputs["input_ids"][0].tolist()
    runs = _placeholder_runs(token_ids, vlm.image_token_id)
    units = _units(token_ids, runs, digests) if len(runs) == len(digests) else None
    if units is None:
        logger.debug("Prefix cache not used: %d images but %d placeholder runs in the prompt.", len(digests), len(runs))

    reused, kv_cache = 0, None
    if prefix_cache is not None and units is not None:
        reused, kv_cache = prefix_cache.longest_prefix(
            units, lambda shared: _usable_prefix(shared, runs, len(token_ids))
        )

    if units is None:
        fed_images = list(range(len(digests)))
    else:
        fed_images = [index for index, (start, _) in enumerate(runs) if start >= reused]
    new_images = list(range(len(digests) - num_new_images, len(digests)))
    features = _image_features(vlm, inputs, digests, sorted({*fed_images, *new_images}), prefix_cache)
    forward_inputs = vlm.forward_inputs(inputs, reused, fed_images)
    encoder_outputs = vlm.image_encoder_outputs([features[index] for index in fed_images])
    if encoder_outputs is not None:
        forward_inputs["mm_encoder_outputs"] = encoder_outputs
    return PromptPrefill(units, reused, kv_cache, forward_inputs, [features[index] for index in new_images])


def _placeholder_runs(token_ids: list[int], image_token_id: int | None) -> list[tuple[int, int]]:
    """(start, end) of every run of consecutive image placeholder tokens."""
    runs: list[tuple[int, int]] = []
    for position, token in enumerate(token_ids):
        if token != image_token_id:
            continue
        if runs and runs[-1][1] == position:
            runs[-1] = (runs[-1][0], position + 1)
        else:
            runs.append((position, position + 1))
    return runs


def _units(token_ids: list[int], runs: list[tuple[int, int]], digests: list[str]) -> Units:
    units: list[Any] = list(token_ids)
    for (start, end), digest in zip(runs, digests):
        units[start:end] = [(token_ids[start], digest)] * (end - start)
    return tuple(units)


def _usable_prefix(shared: int, runs: list[tuple[int, int]], prompt_length: int) -> int:
    usable = min(shared, prompt_length - 1)
    for start, end in runs:
        if start < usable < end:
            return start
    return usable


def _image_features(
    vlm: LoadedVLM,
    inputs: Mapping[str, Any],
    digests: list[str],
    indices: list[int],
    prefix_cache: PrefixCache | None,
) -> dict[int, torch.Tensor]:
    """f_img of the images at `indices`, from the cache where it has them; the others go
    through the vision tower in one call and are kept."""
    features = {}
    if prefix_cache is not None:
        for index in indices:
            cached = prefix_cache.image_features(digests[index])
            if cached is not None:
                features[index] = cached
    missing = [index for index in indices if index not in features]
    if missing:
        _, encoded = vlm.encode_images(inputs, missing)
        for index, image_features in zip(missing, encoded):
            features[index] = image_features
            if prefix_cache is not None:
                prefix_cache.store_image_features(digests[index], image_features)
    if prefix_cache is not None and len(missing) < len(indices):
        logger.debug("Vision features reused for %d of %d images.", len(indices) - len(missing), len(indices))
    return features

"""A bounded cache of the VLM's work on earlier turns: KV entries of processed prompts,
keyed by their token sequence, and the vision features of images already seen.

A turn's prompt (Eq. 1: the dialogue yhat so far, then the new user turn) starts with the
prompts of the turns before it, so a story panel or a chained Encode node finds most of
its prompt here and prefills only the rest. An entry is keyed by *units*: the token ids,
with each image placeholder token paired with the digest of the image it stands for (two
images give the same ids but different features). Every entry belongs to one weights
version of the VLM (the loaded model plus any stage-2 deltas): `for_weights` with another
version empties the cache.

Memory is bounded by `max_tokens` (KV entries, least recently used dropped first) and
`max_images` (vision features); `clear` drops everything (the nodes call it when ComfyUI
unloads the VLM or takes memory from it). Hits and misses are logged at debug level.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

Units = tuple[Hashable, ...]  # token ids; image placeholders as (token id, image digest)


@dataclass
class _Entry:
    units: Units
    kv_cache: Any  # a transformers Cache holding exactly len(units) positions


def common_prefix_length(first: Sequence[Hashable], second: Sequence[Hashable]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


def _crop(kv_cache: Any, length: int) -> bool:
    """Cut `kv_cache` in place to its first `length` positions; False where its layers
    cannot be cut back (sliding-window layers past their window)."""
    try:
        kv_cache.crop(length - kv_cache.get_seq_length())  # a negative count: positions removed from the end
    except (RuntimeError, ValueError) as error:
        logger.debug("Prefix cache not used: this KV cache cannot be cut back (%s).", error)
        return False
    return True


class PrefixCache:
    """KV entries of processed prompts and vision features of images, for one weights version."""

    def __init__(self, *, max_tokens: int, max_images: int = 64) -> None:
        if max_tokens < 0 or max_images < 0:
            raise ValueError(f"Cache limits must be >= 0, got max_tokens={max_tokens}, max_images={max_images}.")
        self.max_tokens = max_tokens
        self.max_images = max_images
        self._weights_key: Hashable = None
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._image_features: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._next_id = 0

    @property
    def cached_tokens(self) -> int:
        return sum(len(entry.units) for entry in self._entries.values())

    @property
    def cached_images(self) -> int:
        return len(self._image_features)

    def for_weights(self, weights_key: Hashable) -> PrefixCache:
        """This cache, emptied first when `weights_key` names other weights than its entries'."""
        if weights_key != self._weights_key:
            if self._entries or self._image_features:
                self.clear("the VLM's weights changed")
            self._weights_key = weights_key
        return self

    def clear(self, reason: str) -> None:
        if self._entries or self._image_features:
            logger.debug(
                "Prefix cache dropped (%s): %d tokens in %d entries, %d images.",
                reason, self.cached_tokens, len(self._entries), len(self._image_features),
            )
        self._entries.clear()
        self._image_features.clear()

    def longest_prefix(self, units: Units, usable: Callable[[int], int] = lambda shared: shared) -> tuple[int, Any]:
        """(n, KV cache of the first n units) from the entry sharing the longest prefix with
        `units`, n = usable(length shared) (a caller may cut it back). The KV cache is a
        copy, so the entry stays intact. (0, None) on a miss."""
        best_id, shared = None, 0
        for entry_id, entry in self._entries.items():
            length = common_prefix_length(entry.units, units)
            if length > shared:
                best_id, shared = entry_id, length
        reused = usable(shared) if best_id is not None else 0
        if reused == 0:
            logger.debug("Prefix cache miss: no usable prefix among %d entries for %d tokens.",
                         len(self._entries), len(units))
            return 0, None
        self._entries.move_to_end(best_id)
        entry = self._entries[best_id]
        kv_cache = copy.deepcopy(entry.kv_cache)
        if not _crop(kv_cache, reused):
            return 0, None
        logger.debug("Prefix cache hit: %d of %d tokens reused.", reused, len(units))
        return reused, kv_cache

    def store(self, units: Units, kv_cache: Any) -> None:
        """Keep `kv_cache`, cut in place to its first len(units) positions, for later turns;
        the least recently used entries go when the token limit is exceeded. Entries that
        are a prefix of the new one are redundant and go first."""
        if len(units) > self.max_tokens:
            logger.debug("Prefix cache: %d tokens exceed the limit of %d; not kept.", len(units), self.max_tokens)
            return
        for entry_id, entry in list(self._entries.items()):
            if common_prefix_length(entry.units, units) == len(entry.units):
                del self._entries[entry_id]
        while self._entries and self.cached_tokens + len(units) > self.max_tokens:
            self._entries.popitem(last=False)
        if not _crop(kv_cache, len(units)):  # drop the generated positions
            return
        self._entries[self._next_id] = _Entry(tuple(units), kv_cache)
        self._next_id += 1

    def image_features(self, digest: str) -> torch.Tensor | None:
        features = self._image_features.get(digest)
        if features is not None:
            self._image_features.move_to_end(digest)
        return features

    def store_image_features(self, digest: str, features: torch.Tensor) -> None:
        if self.max_images == 0:
            return
        self._image_features[digest] = features
        while len(self._image_features) > self.max_images:
            self._image_features.popitem(last=False)

"""DataLoaders of a run: the stage's sample source, the optional target cache and the
teacher-forcing collator, from the config."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from torch.utils.data import DataLoader

from m2chat_core.vlm import LoadedVLM

from .cache import CacheSettings, build_target_cache
from .config import TrainConfig, expand_data_paths
from .data.batches import Collator, TrainingDataset
from .data.dialogue import DialogueRecords
from .data.samples import SampleSource
from .data.shards import ImageTextShards
from .sdxl import FrozenEncoders, SDXLParts


def sample_source(config: TrainConfig, entries: tuple[str, ...]) -> SampleSource:
    """Stage 1: image-text shards; stage 2: dialogue JSONL."""
    data, seed = config.data, config.engine.seed
    paths = [path for entry in entries for path in expand_data_paths("data", entry, config.data_suffix)]
    if config.stage == 1:
        return ImageTextShards(paths, resolution=data.resolution, crop=data.crop, seed=seed)
    return DialogueRecords(
        paths, resolution=data.resolution, crop=data.crop, seed=seed, max_history_turns=data.max_history_turns
    )


def make_loader(
    config: TrainConfig,
    entries: tuple[str, ...],
    *,
    shuffle: bool,
    vlm: LoadedVLM,
    num_image_tokens: int,
    sdxl: SDXLParts,
    frozen: FrozenEncoders,
    cache_guard: Callable[[], AbstractContextManager],
) -> DataLoader:
    """`cache_guard()` wraps building the cache (the main process first, under accelerate)."""
    source = sample_source(config, entries)
    cache = None
    if config.cache.enabled:
        settings = CacheSettings(
            folder=Path(config.cache.dir),
            dtype=config.cache.dtype,
            resolution=config.data.resolution,
            crop=config.data.crop,
            seed=config.engine.seed,
            sdxl_identity=sdxl.identity,
        )
        with cache_guard():
            cache = build_target_cache(source, frozen, settings)
    tokenizer = vlm.tokenizer
    collator = Collator(
        vlm.processor,
        num_image_tokens=num_image_tokens,
        max_length=vlm.info.max_context_length,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        max_answer_tokens=config.data.max_answer_tokens,
        max_caption_tokens=config.data.max_caption_tokens,
    )
    return DataLoader(
        TrainingDataset(source, cache),
        batch_size=config.optim.batch_size,
        shuffle=shuffle,
        collate_fn=collator,
        num_workers=config.data.num_workers,
    )

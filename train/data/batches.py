"""From samples to training batches: the dataset wrapper that reads cached targets, and the
collator that builds the teacher-forcing inputs (in DataLoader workers) and sets bad
samples aside with their reasons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from m2chat_core.teacher_forcing import (
    ForcedTurn,
    TeacherForcingBatch,
    TeacherForcingError,
    forced_turn,
    prepare_batch,
)

from .samples import CachedTargets, SampleSource, SkippedSample, TrainingSample



class TargetCache(Protocol):
    def row(self, index: int) -> CachedTargets | SkippedSample: ...


@dataclass(frozen=True)
class TrainingBatch:
    """The usable samples of one batch and the skipped ones. Exactly one of `pixels` (with
    `time_ids`) and `cached` holds the target images; `forced` is None when every sample
    was skipped."""

    keys: tuple[str, ...]
    captions: tuple[str, ...]
    forced: TeacherForcingBatch | None
    pixels: torch.Tensor | None
    time_ids: torch.Tensor | None
    cached: CachedTargets | None
    skipped: tuple[SkippedSample, ...]

    def __len__(self) -> int:
        return len(self.keys)


class TrainingDataset(Dataset):
    """Samples of `source`; with a cache, the frozen parts' outputs replace the decoded image."""

    def __init__(self, source: SampleSource, cache: TargetCache | None = None) -> None:
        self.source, self.cache = source, cache

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> TrainingSample | SkippedSample:
        if self.cache is None:
            return self.source.load(index, decode_target=True)
        cached = self.cache.row(index)
        if isinstance(cached, SkippedSample):
            return cached
        sample = self.source.load(index, decode_target=False)
        return sample if isinstance(sample, SkippedSample) else replace(sample, cached=cached)


class Collator:
    """DataLoader collate_fn: samples -> TrainingBatch (picklable, runs in the workers)."""

    def __init__(
        self,
        processor: Any,
        *,
        num_image_tokens: int,
        max_length: int,
        pad_token_id: int,
        max_answer_tokens: int,
        max_caption_tokens: int,
    ) -> None:
        self.processor = processor
        self.num_image_tokens, self.max_length, self.pad_token_id = num_image_tokens, max_length, pad_token_id
        self.max_answer_tokens, self.max_caption_tokens = max_answer_tokens, max_caption_tokens

    def __call__(self, items: Sequence[TrainingSample | SkippedSample]) -> TrainingBatch:
        skipped = [item for item in items if isinstance(item, SkippedSample)]
        usable: list[tuple[TrainingSample, ForcedTurn]] = []
        for sample in (item for item in items if isinstance(item, TrainingSample)):
            try:
                usable.append((sample, self._forced_turn(sample)))
            except TeacherForcingError as error:
                skipped.append(SkippedSample(sample.key, f"cannot teacher-force: {error}"))
        try:
            forced = self._prepare([example for _, example in usable]) if usable else None
        except TeacherForcingError:  # some example is too long: find it, keep the others
            usable = [(sample, example) for sample, example in usable if self._fits(sample, example, skipped)]
            forced = self._prepare([example for _, example in usable]) if usable else None
        samples = [sample for sample, _ in usable]
        return TrainingBatch(
            keys=tuple(sample.key for sample in samples),
            captions=tuple(sample.turn.caption for sample in samples),
            forced=forced,
            pixels=_stack([sample.target.pixels for sample in samples if sample.target is not None]),
            time_ids=_stack([sample.target.time_ids for sample in samples if sample.target is not None]),
            cached=_stack_cached([sample.cached for sample in samples if sample.cached is not None]),
            skipped=tuple(skipped),
        )

    def _forced_turn(self, sample: TrainingSample) -> ForcedTurn:
        return forced_turn(
            self.processor.tokenizer,
            sample.turn,
            sample.history,
            max_answer_tokens=self.max_answer_tokens,
            max_caption_tokens=self.max_caption_tokens,
        )

    def _fits(self, sample: TrainingSample, example: ForcedTurn, skipped: list[SkippedSample]) -> bool:
        try:
            self._prepare([example])
        except TeacherForcingError as error:
            skipped.append(SkippedSample(sample.key, f"cannot teacher-force: {error}"))
            return False
        return True

    def _prepare(self, examples: list[ForcedTurn]) -> TeacherForcingBatch:
        return prepare_batch(
            self.processor,
            examples,
            num_image_tokens=self.num_image_tokens,
            max_length=self.max_length,
            pad_token_id=self.pad_token_id,
        )


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.stack(tensors) if tensors else None


def _stack_cached(rows: list[CachedTargets]) -> CachedTargets | None:
    if not rows:
        return None
    return CachedTargets(
        **{name: torch.stack([getattr(row, name) for row in rows]) for name in CachedTargets.__dataclass_fields__}
    )

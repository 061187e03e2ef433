"""Precompute cache of the frozen parts' outputs: per sample the VAE posterior (mean and
std, so each epoch still draws a fresh latent sample), the CLIP targets (77×2048 and
1280) and the size/crop ids.

Files are safetensors chunks of CHUNK_SIZE samples of one data file, named by a key
over everything the values depend on: the data file (path, size, mtime), the image
settings, the SDXL weights (`SDXLParts.identity`) and the storage dtype. A changed input
gives a new key, so stale values are never read; unchanged inputs reuse the chunks
across epochs and runs. Chunks are written to a temporary file, then renamed.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from m2chat_core.atomic_files import atomic_path

from .data.samples import CachedTargets, DataFileSpan, SampleSource, SkippedSample, TrainingSample
from .sdxl import FrozenEncoders

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
CHUNK_SIZE = 1024
ENCODE_BATCH = 16
_TENSORS = ("latent_mean", "latent_std", "context", "pooled", "time_ids")
_FLOAT32_TENSORS = ("time_ids",)  # small and exact: never stored in the cache dtype
_SKIPPED_KEY = "m2chat.skipped"  # metadata: {row: [sample key, reason]} of samples that could not be encoded
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class CacheSettings:
    folder: Path
    dtype: str
    resolution: int
    crop: str
    seed: int  # matters only for random crops
    sdxl_identity: str


def chunk_key(span: DataFileSpan, chunk: int, settings: CacheSettings) -> str:
    stat = span.path.stat()
    description = {
        "format": CACHE_FORMAT_VERSION,
        "data": [str(span.path.resolve()), stat.st_size, stat.st_mtime_ns],
        "chunk": [chunk, CHUNK_SIZE],
        "image": [settings.resolution, settings.crop, settings.seed if settings.crop == "random" else None],
        "sdxl": settings.sdxl_identity,
        "dtype": settings.dtype,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]


def _chunk_path(span: DataFileSpan, chunk: int, settings: CacheSettings) -> Path:
    return settings.folder / f"{span.path.stem}-{chunk:05d}-{chunk_key(span, chunk, settings)}.safetensors"


def _chunks(span: DataFileSpan) -> range:
    return range((span.count + CHUNK_SIZE - 1) // CHUNK_SIZE)


class TargetCacheFiles:
    """Reads cached rows by dataset index (DataLoader workers open their own files)."""

    def __init__(self, spans: list[DataFileSpan], settings: CacheSettings) -> None:
        self.spans = spans
        self._starts = [span.start for span in spans]
        self._paths = {
            (number, chunk): _chunk_path(span, chunk, settings)
            for number, span in enumerate(spans)
            for chunk in _chunks(span)
        }
        self._open: dict[tuple[int, int], tuple[object, dict[int, SkippedSample]]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def row(self, index: int) -> CachedTargets | SkippedSample:
        number = bisect.bisect_right(self._starts, index) - 1
        chunk, row = divmod(index - self.spans[number].start, CHUNK_SIZE)
        if (number, chunk) not in self._open:
            file = safe_open(self._paths[number, chunk], framework="pt", device="cpu")
            skipped = json.loads(file.metadata()[_SKIPPED_KEY])
            self._open[number, chunk] = (file, {int(row): SkippedSample(*entry) for row, entry in skipped.items()})
        file, skipped = self._open[number, chunk]
        if row in skipped:
            return skipped[row]
        return CachedTargets(**{name: file.get_slice(name)[row].float() for name in _TENSORS})


def build_target_cache(source: SampleSource, frozen: FrozenEncoders, settings: CacheSettings) -> TargetCacheFiles:
    """Compute the missing chunks (existing ones are reused), with a progress bar over the
    samples to encode, and return their reader."""
    settings.folder.mkdir(parents=True, exist_ok=True)
    chunks = [(span, chunk, _chunk_path(span, chunk, settings)) for span in source.spans for chunk in _chunks(span)]
    missing = {path: _chunk_indices(span, chunk) for span, chunk, path in chunks if not path.exists()}
    samples = sum(map(len, missing.values()))
    if missing:
        logger.info("Target cache in %s: encoding %d samples (%d chunks) ...", settings.folder, samples, len(missing))
    with tqdm(total=samples, desc="M³FT target cache", unit="sample", disable=not missing) as progress:
        for path, indices in missing.items():
            _write_chunk(path, source, indices, frozen, settings, progress)
    logger.info("Target cache in %s: %d chunks computed, %d reused", settings.folder, len(missing),
                len(chunks) - len(missing))
    return TargetCacheFiles(source.spans, settings)


def _chunk_indices(span: DataFileSpan, chunk: int) -> range:
    start = span.start + chunk * CHUNK_SIZE
    return range(start, min(start + CHUNK_SIZE, span.start + span.count))


def _write_chunk(
    path: Path, source: SampleSource, indices: range, frozen: FrozenEncoders, settings: CacheSettings,
    progress: tqdm,
) -> None:
    columns: dict[str, list[torch.Tensor]] = {name: [] for name in _TENSORS}
    skipped: dict[int, tuple[str, str]] = {}
    pending: list[tuple[int, TrainingSample]] = []

    def encode_pending() -> None:
        samples = [sample for _, sample in pending]
        context, pooled = frozen.caption_targets([sample.turn.caption for sample in samples])
        latent_mean, latent_std = frozen.latent_distribution(torch.stack([sample.target.pixels for sample in samples]))
        for position, (row, sample) in enumerate(pending):
            values = {
                "latent_mean": latent_mean[position],
                "latent_std": latent_std[position],
                "context": context[position],
                "pooled": pooled[position],
                "time_ids": sample.target.time_ids,
            }
            for name, value in values.items():
                columns[name].append((row, value.cpu()))
        pending.clear()

    for row, index in enumerate(indices):
        progress.update()
        sample = source.load(index, decode_target=True)
        if isinstance(sample, SkippedSample):
            skipped[row] = (sample.key, sample.reason)
            continue
        pending.append((row, sample))
        if len(pending) == ENCODE_BATCH:
            encode_pending()
    if pending:
        encode_pending()
    tensors = {
        name: _rows_tensor(values, len(indices), torch.float32 if name in _FLOAT32_TENSORS else _DTYPES[settings.dtype])
        for name, values in columns.items()
    }
    with atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata={_SKIPPED_KEY: json.dumps(skipped)})
    if skipped:
        reasons = sorted({reason for _, reason in skipped.values()})
        logger.warning("Cache chunk %s: %d samples skipped (%s)", path.name, len(skipped), ", ".join(reasons))


def _rows_tensor(values: list[tuple[int, torch.Tensor]], rows: int, dtype: torch.dtype) -> torch.Tensor:
    """One tensor with a row per sample (zeros in skipped rows)."""
    if not values:
        return torch.zeros(rows, 1, dtype=dtype)
    tensor = torch.zeros((rows, *values[0][1].shape), dtype=dtype)
    for row, value in values:
        tensor[row] = value.to(dtype)
    return tensor

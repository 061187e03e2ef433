"""Stage-1 image-text pairs from WebDataset tar shards in img2dataset's layout.

A sample is the tar members sharing a key (the member name up to the first dot of its
file name): an image (.jpg/.jpeg/.png/.webp) and its caption in .txt or in the "caption"
field of .json. A shard that is not a readable tar is skipped with a warning naming it;
when no shard is readable, DataFault names them all. The shards are indexed once (member offsets), then read by random
access, so shuffling is a seeded sampler and a resumed run can skip batches exactly.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from m2chat_core.session import ChatTurn

from ..faults import DataFault
from .images import prepare_target_image
from .samples import DataFileSpan, SkippedSample, TrainingSample, sample_rng

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _split_key(name: str) -> tuple[str, str]:
    folder, _, file_name = name.rpartition("/")
    stem, _, extension = file_name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def index_shard(path: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """(key, {extension: (data offset, size)}) of every sample in a tar shard, in file order."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            if member.isfile():
                key, extension = _split_key(member.name)
                samples.setdefault(key, {})[extension] = (member.offset_data, member.size)
    return list(samples.items())


class ImageTextShards:
    """Map-style dataset over tar shards; `load` returns a TrainingSample for the
    text-to-image task, or a SkippedSample saying what is wrong with it."""

    def __init__(self, shard_paths: list[Path], *, resolution: int, crop: str, seed: int) -> None:
        self.resolution, self.crop, self.seed = resolution, crop, seed
        self.spans: list[DataFileSpan] = []
        self._entries: list[tuple[int, str, dict[str, tuple[int, int]]]] = []
        self.unreadable_shards: dict[Path, str] = {}  # path -> why it was skipped
        for path in shard_paths:
            try:
                samples = index_shard(path)
            except (tarfile.TarError, OSError) as error:
                self.unreadable_shards[path] = str(error) or type(error).__name__
                logger.warning("Skipping the unreadable shard %s (%s)", path, self.unreadable_shards[path])
                continue
            shard_number = len(self.spans)
            self.spans.append(DataFileSpan(path=path, start=len(self._entries), count=len(samples)))
            self._entries += [(shard_number, key, members) for key, members in samples]
        if not self.spans:
            named = "; ".join(f"{path} ({why})" for path, why in self.unreadable_shards.items())
            raise DataFault(f"no readable training shard: {named}. Replace these files with valid .tar shards.")
        self._files: dict[int, io.BufferedReader] = {}  # opened lazily, per process
        logger.info("Indexed %d samples in %d shards, skipped %d unreadable shards",
                    len(self._entries), len(self.spans), len(self.unreadable_shards))

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict:  # DataLoader workers open their own file handles
        return {**self.__dict__, "_files": {}}

    def _read(self, shard_number: int, location: tuple[int, int]) -> bytes:
        if shard_number not in self._files:
            self._files[shard_number] = open(self.spans[shard_number].path, "rb")  # noqa: SIM115 - kept open
        file = self._files[shard_number]
        offset, size = location
        file.seek(offset)
        return file.read(size)

    def load(self, index: int, *, decode_target: bool) -> TrainingSample | SkippedSample:
        shard_number, key, members = self._entries[index]
        sample_key = f"{self.spans[shard_number].path.name}/{key}"
        caption = self._caption(shard_number, members)
        if caption is None:
            return SkippedSample(sample_key, "missing caption")
        if not caption:
            return SkippedSample(sample_key, "empty caption")
        image_extension = next((extension for extension in IMAGE_EXTENSIONS if extension in members), None)
        if image_extension is None:
            return SkippedSample(sample_key, "no image")
        turn = ChatTurn(user_text=caption, caption=caption, task="text_to_image")
        if not decode_target:
            return TrainingSample(key=sample_key, turn=turn)
        try:
            with Image.open(io.BytesIO(self._read(shard_number, members[image_extension]))) as image:
                target = prepare_target_image(image, self.resolution, self.crop, sample_rng(self.seed, sample_key))
        except (UnidentifiedImageError, OSError, ValueError):
            return SkippedSample(sample_key, "unreadable image")
        return TrainingSample(key=sample_key, turn=turn, target=target)

    def _caption(self, shard_number: int, members: dict[str, tuple[int, int]]) -> str | None:
        """The caption text (stripped), "" when empty, None when the sample has none."""
        if "txt" in members:
            return self._read(shard_number, members["txt"]).decode("utf-8", errors="replace").strip()
        if "json" in members:
            try:
                caption = json.loads(self._read(shard_number, members["json"])).get("caption")
            except (ValueError, AttributeError):
                return None
            return caption.strip() if isinstance(caption, str) else None
        return None

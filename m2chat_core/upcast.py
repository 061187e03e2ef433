"""Upcast a model loaded lazily from memory-mapped safetensors, one tensor at a time,
returning each source tensor's file pages to the OS once it is copied.

Loading float32 straight from a bfloat16 folder keeps every bfloat16 page of the mapped
file resident until the load ends, beside the float32 copies: a peak of 3× the folder's
size. Loaded in the folder's own dtype the weights are views of the mapped file (no
memory yet); upcasting them here, with `madvise(MADV_DONTNEED)` on the pages a copied
tensor alone occupied, keeps the peak at the float32 weights plus one tensor. Only pages
of a mapped `.safetensors` file are released: they are clean, so touching them again
just reads the file (nothing is lost even if another tensor views them).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

_MADV_DONTNEED = 4  # Linux
_MAPS = Path("/proc/self/maps")


def upcast_releasing_file_pages(model: nn.Module, dtype: torch.dtype) -> None:
    """Convert `model`'s floating-point parameters and buffers to `dtype` in place."""
    file_ranges = _mapped_safetensors_ranges()
    release = _madvise() if file_ranges else None
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for name, tensor in tensors.items():
                if tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype:
                    continue  # tied weights are one Parameter: converted once
                source = tensor.data
                tensor.data = source.to(dtype)
                if release is not None:
                    _release_pages(release, source, file_ranges)


def _mapped_safetensors_ranges() -> list[tuple[int, int]]:
    if not _MAPS.is_file():
        return []
    ranges = []
    for line in _MAPS.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(".safetensors"):
            start, end = (int(address, 16) for address in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def _madvise():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.madvise
    except (OSError, AttributeError):
        logger.debug("madvise is unavailable; upcasting without releasing file pages.")
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return function


def _release_pages(madvise, tensor: torch.Tensor, file_ranges: list[tuple[int, int]]) -> None:
    """Drop the pages lying wholly inside `tensor`'s bytes, when they map a safetensors file."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first_page = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last_page = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last_page <= first_page:
        return
    if any(low <= first_page and last_page <= high for low, high in file_ranges):
        madvise(first_page, last_page - first_page, _MADV_DONTNEED)

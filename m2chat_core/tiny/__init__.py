"""Seeded tiny models for tests, the demo and CPU benchmarks (no model hub here)."""

from .adapter import build_tiny_adapter
from .vlm import build_tiny_vlm

__all__ = ["build_tiny_adapter", "build_tiny_vlm"]

"""Seeded tiny models for tests, the demo and CPU benchmarks (no model hub here)."""

from .vlm import build_tiny_vlm

__all__ = ["build_tiny_vlm"]

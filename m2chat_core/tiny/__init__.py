"""Seeded tiny models for tests, the demo and CPU benchmarks (no model hub here)."""

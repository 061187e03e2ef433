"""Test harness: real ComfyUI in-process and as an HTTP server, with the tiny models."""

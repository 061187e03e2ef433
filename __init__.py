"""M²Chat for ComfyUI: a vision-language model drives SDXL through the M³Adapter."""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]

"""M²Chat for ComfyUI: a vision-language model drives SDXL through the M³Adapter."""

from .nodes import UNSUPPORTED_REASON

if UNSUPPORTED_REASON is None:
    from .nodes import comfy_entrypoint

    WEB_DIRECTORY = "./web"  # shows the VLM's answer and caption on the nodes
    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
else:
    NODE_CLASS_MAPPINGS: dict = {}  # too old a ComfyUI (logged by nodes): register nothing
    __all__ = ["NODE_CLASS_MAPPINGS"]

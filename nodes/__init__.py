"""The pack's ComfyUI nodes. On a ComfyUI older than the oldest supported, nothing that
needs the V3 API is imported: one line is logged and no node is registered."""

import logging

from .comfyui_support import unsupported_reason

UNSUPPORTED_REASON = unsupported_reason()

if UNSUPPORTED_REASON is None:
    from .extension import comfy_entrypoint

    __all__ = ["UNSUPPORTED_REASON", "comfy_entrypoint"]
else:
    logging.getLogger(__name__).error(UNSUPPORTED_REASON)
    __all__ = ["UNSUPPORTED_REASON"]

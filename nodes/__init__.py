"""The pack's ComfyUI nodes (V3 API). Node IDs are permanent once released."""

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from . import model_folders
from .storyboard import M2ChatStoryboard


class M2ChatExtension(ComfyExtension):
    @override
    async def on_load(self) -> None:
        model_folders.register()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [M2ChatStoryboard]


async def comfy_entrypoint() -> M2ChatExtension:
    return M2ChatExtension()

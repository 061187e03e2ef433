"""The pack's ComfyUI extension (V3 API): its node list. Node IDs are permanent once released."""

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .encode import M2ChatEncode
from .loaders import M2ChatAdapterLoader, M2ChatVLMLoader
from .story import M2ChatStory
from .storyboard import M2ChatStoryboard


class M2ChatExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [M2ChatVLMLoader, M2ChatAdapterLoader, M2ChatEncode, M2ChatStory, M2ChatStoryboard]


async def comfy_entrypoint() -> M2ChatExtension:
    return M2ChatExtension()

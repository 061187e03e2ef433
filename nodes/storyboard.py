"""M2ChatStoryboard: one page from the panels of a story and their text."""

from comfy_api.latest import io

from ..m2chat_core.storyboard import layout_storyboard
from .images import pil_to_tensor, tensor_to_pil


class M2ChatStoryboard(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="M2ChatStoryboard",
            display_name="M²Chat Storyboard",
            category="M²Chat",
            description="Lays the story panels out as one page, each with its text under it.",
            inputs=[
                io.Image.Input("panels", tooltip="The panel images, one per story step (a batch)."),
                io.String.Input("texts", multiline=True, default="",
                                tooltip="One text per panel, one per line (M²Chat Story's "
                                        "captions output). Empty: panels only."),
                io.String.Input("title", default="", tooltip="Printed above the panels."),
                io.Int.Input("columns", default=0, min=0, max=16,
                             tooltip="Panels per row; 0 picks a near-square grid."),
                io.Int.Input("font_size", default=0, min=0, max=256,
                             tooltip="Text size in pixels; 0 scales with the panel width."),
            ],
            outputs=[io.Image.Output(display_name="page")],
        )

    @classmethod
    def execute(cls, panels, texts, title, columns, font_size) -> io.NodeOutput:
        lines = [line for line in texts.splitlines() if line.strip()]
        page = layout_storyboard(tensor_to_pil(panels), lines, columns=columns, title=title,
                                 font_size=font_size)
        return io.NodeOutput(pil_to_tensor(page))

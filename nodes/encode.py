"""M2ChatEncode: one turn of text-to-image, image editing or multimodal dialogue."""

from __future__ import annotations

import comfy.utils
from comfy_api.latest import io
from comfy_execution.graph_utils import ExecutionBlocker

from ..m2chat_core.encoder import DRAW_MODES, TurnOptions
from ..m2chat_core.tasks import TASKS
from ..m2chat_core.session import ChatSession
from .images import tensor_to_pil
from .inputs import gate_inputs, generation_inputs, model_inputs, size_inputs
from .turn import (SizeConditioning, TurnSettings, adapter_conditioning, check_prompt,
                   clip_conditioning, require_conditioning_source, run_turn)
from .types import SessionType


class M2ChatEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="M2ChatEncode",
            display_name="M²Chat Encode",
            category="M²Chat",
            description="One turn: the VLM answers, writes a caption, and the M³Adapter turns its "
                        "hidden states into SDXL conditioning for a native KSampler.",
            inputs=[
                *model_inputs(),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What you say or ask for in this turn."),
                io.Image.Input("image", optional=True,
                               tooltip="Optional input image(s) for editing or dialogue; a batch "
                                       "counts as several images of this turn."),
                io.Combo.Input("task", options=list(TASKS), default="text_to_image",
                               tooltip="Which instruction the VLM follows (Eq. 1)."),
                io.Combo.Input("draw_mode", options=list(DRAW_MODES), default="always",
                               tooltip="always: every turn draws; auto: a tuned VLM decides "
                                       "(no picture blocks the sampler); never: text only."),
                *gate_inputs(),
                *size_inputs(),
                *generation_inputs(default_max_tokens=96),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.String.Output(display_name="answer"),
                io.String.Output(display_name="caption"),
                SessionType.Output(display_name="session"),
                io.Float.Output(display_name="gate"),
            ],
        )

    @classmethod
    def execute(cls, vlm, prompt, task, draw_mode, gate_mode, gate_value, width, height,
                target_width, target_height, seed, max_new_tokens, temperature, top_p,
                adapter=None, clip=None, session=None, image=None) -> io.NodeOutput:
        prompt = check_prompt(prompt)
        require_conditioning_source(adapter, clip)
        settings = TurnSettings(TurnOptions(task, draw_mode, seed, max_new_tokens, temperature, top_p),
                                gate_mode, gate_value)
        images = tensor_to_pil(image) if image is not None else []
        result, output = run_turn(vlm, adapter, session or ChatSession(), prompt, images, settings,
                                  comfy.utils.ProgressBar(1))
        size = SizeConditioning(width, height, target_width, target_height)
        ui = {"text": [result.answer, result.caption]}
        if not result.draws_image:
            blocked = ExecutionBlocker(None)  # no picture this turn: the sampler is skipped
            return io.NodeOutput(blocked, blocked, result.answer, "", result.session, 0.0, ui=ui)
        if output is not None:
            positive, negative = adapter_conditioning([output], size)
            gate = float(output.gate[0])
        else:
            positive, negative = clip_conditioning(clip, [result.caption or result.answer], size)
            gate = 1.0  # the caption alone conditions the image
        return io.NodeOutput(positive, negative, result.answer, result.caption, result.session,
                             gate, ui=ui)

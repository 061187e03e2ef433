"""M2ChatStory: N panels of a story in one multi-turn session, as one batched CONDITIONING
(one panel per latent of a batch-N EmptyLatentImage: one KSampler call draws the story
with a shared seed and style).

Panel-to-panel image consistency (each drawn panel fed back as f_img) is done in the
graph, not here: chain M²Chat Encode nodes, each taking the previous panel's decoded
image and session (see workflows/). That keeps every sampler a native node."""

from __future__ import annotations

import comfy.utils
from comfy_api.latest import io

from ..m2chat_core.encoder import TurnOptions
from ..m2chat_core.prompt import panel_prompt
from ..m2chat_core.session import ChatSession
from .inputs import gate_inputs, generation_inputs, model_inputs, size_inputs
from .turn import (SizeConditioning, TurnSettings, adapter_conditioning, check_prompt,
                   clip_conditioning, require_conditioning_source, run_turn)
from .types import SessionType

MAX_PANELS = 16


class M2ChatStory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="M2ChatStory",
            display_name="M²Chat Story",
            category="M²Chat",
            description="Writes a story of N parts with a caption each, and returns the panels' "
                        "conditioning batched for one KSampler over a batch-N latent.",
            inputs=[
                *model_inputs(),
                io.String.Input("premise", multiline=True, default="",
                                tooltip="What the story is about."),
                io.Int.Input("panels", default=4, min=1, max=MAX_PANELS,
                             tooltip="Story parts, one picture each; set the latent's batch size to match."),
                *gate_inputs(),
                *size_inputs(),
                *generation_inputs(default_max_tokens=64),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.String.Output(display_name="story"),
                io.String.Output(display_name="captions"),
                SessionType.Output(display_name="session"),
            ],
        )

    @classmethod
    def execute(cls, vlm, premise, panels, gate_mode, gate_value, width, height, target_width,
                target_height, seed, max_new_tokens, temperature, top_p, adapter=None, clip=None,
                session=None) -> io.NodeOutput:
        premise = check_prompt(premise)
        require_conditioning_source(adapter, clip)
        session = session or ChatSession()
        progress = comfy.utils.ProgressBar(panels)
        results, outputs = [], []
        for index in range(panels):
            options = TurnOptions("storytelling", "always", seed + index, max_new_tokens, temperature, top_p)
            settings = TurnSettings(options, gate_mode, gate_value)
            result, output = run_turn(vlm, adapter, session, panel_prompt(premise, index, panels),
                                      [], settings)
            session = result.session
            results.append(result)
            outputs.append(output)
            progress.update_absolute(index + 1, panels)
        size = SizeConditioning(width, height, target_width, target_height)
        captions = [result.caption.replace("\n", " ") for result in results]
        if adapter is not None:
            positive, negative = adapter_conditioning(outputs, size)
        else:
            positive, negative = clip_conditioning(clip, captions, size)
        story = "\n\n".join(f"{i + 1}. {result.answer}" for i, result in enumerate(results))
        return io.NodeOutput(positive, negative, story, "\n".join(captions), session,
                             ui={"text": [story]})

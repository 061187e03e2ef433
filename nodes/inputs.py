"""Inputs shared by M2ChatEncode and M2ChatStory."""

from comfy_api.latest import io

from ..m2chat_core.m3ft_settings import FILE_GATE_MODE, GATE_MODE_CHOICES
from .types import AdapterType, SessionType, VLMType

MAX_SIZE = 16384


def size_inputs() -> list:
    return [
        io.Int.Input("width", default=1024, min=64, max=MAX_SIZE, step=8,
                     tooltip="Image width SDXL is told about (size conditioning); match the latent."),
        io.Int.Input("height", default=1024, min=64, max=MAX_SIZE, step=8,
                     tooltip="Image height SDXL is told about (size conditioning); match the latent."),
        io.Int.Input("target_width", default=1024, min=64, max=MAX_SIZE, step=8,
                     tooltip="SDXL's target-size conditioning; usually the same as width."),
        io.Int.Input("target_height", default=1024, min=64, max=MAX_SIZE, step=8,
                     tooltip="SDXL's target-size conditioning; usually the same as height."),
    ]


def generation_inputs(default_max_tokens: int) -> list:
    return [
        io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                     tooltip="Seed of the VLM's sampling; the same seed gives the same text."),
        io.Int.Input("max_new_tokens", default=default_max_tokens, min=1, max=4096,
                     tooltip="Most tokens the VLM writes for the answer and for the caption, each."),
        io.Float.Input("temperature", default=0.0, min=0.0, max=2.0, step=0.05,
                       tooltip="0 picks the likeliest token (deterministic); higher is more varied."),
        io.Float.Input("top_p", default=1.0, min=0.05, max=1.0, step=0.05,
                       tooltip="Nucleus sampling: keep the smallest token set with this much probability."),
    ]


def model_inputs() -> list:
    return [
        VLMType.Input("vlm", tooltip="From M²Chat VLM Loader."),
        AdapterType.Input("adapter", optional=True,
                          tooltip="From M²Chat Adapter Loader. Without it, connect a CLIP: the "
                                  "caption is then encoded by SDXL's own text encoders."),
        io.Clip.Input("clip", optional=True,
                      tooltip="SDXL CLIP for the no-adapter fallback; ignored when an adapter is connected."),
        SessionType.Input("session", optional=True,
                          tooltip="The session of the previous turn, to continue a conversation."),
    ]


def gate_inputs() -> list:
    return [
        io.Combo.Input("gate_mode", options=list(GATE_MODE_CHOICES), default=FILE_GATE_MODE,
                       tooltip="How image features and VLM features mix (Eq. 3): the "
                               "adapter's own mode, paper (cosine), learned, or fixed."),
        io.Float.Input("gate_value", default=0.5, min=0.0, max=1.0, step=0.05,
                       tooltip="g for gate_mode fixed: 1 = VLM features only, 0 = image features only."),
    ]

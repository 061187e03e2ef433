"""The M²Chat instruction format (Eq. 1):

    Instruction: T
    Input: yhat                      (the preceding dialogue and the new user turn)
    Response: y_res <|IC|> yhat_cap <|img|>×K

`build_prompt` renders everything up to "Response:" through the VLM's chat template
(one user message; the assistant's turn starts with "Response:"), so image placeholders
are the ones the processor expands. Earlier turns keep their images; their responses
are plain text, the `<|IC|>` marker included. Only the new turn's `<|IC|>` and
`<|img|>` tokens are fed as learned embeddings, by the encoder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .special_tokens import CAPTION_START, IMAGE_TOKEN
from .tasks import get_task

if TYPE_CHECKING:
    from .session import ChatTurn

RESPONSE_LABEL = "Response:"


class PromptFormatError(ValueError):
    """A prompt cannot be rendered with the VLM's processor."""


class PromptTooLongError(ValueError):
    """The new turn alone exceeds the token budget (no history left to drop)."""

    def __init__(self, prompt_length: int, max_prompt_length: int) -> None:
        super().__init__(f"The new turn alone needs {prompt_length} prompt tokens; at most {max_prompt_length} fit.")
        self.prompt_length = prompt_length


@dataclass(frozen=True)
class FittedPrompt:
    inputs: Any  # the processor's outputs (token ids with image placeholders expanded, pixels)
    dropped_turns: int  # oldest history turns left out
    images: list[bytes]  # the prompt's images (PNG bytes), in prompt order


def format_response(answer: str, caption: str, num_image_tokens: int = 0) -> str:
    """Response of Eq. 1 as text: `y_res <|IC|> yhat_cap <|img|>×K` (no caption: the answer)."""
    if not caption:
        return answer.strip()
    response = " ".join(part for part in (answer.strip(), CAPTION_START, caption.strip()) if part)
    return response + IMAGE_TOKEN * num_image_tokens


def parse_generation(text: str) -> tuple[str, str]:
    """Split generated text into (answer, caption) at the first `<|IC|>`.

    No marker: all of it is the answer. Later `<|IC|>` markers and every `<|img|>` are
    dropped, and whitespace left around them is collapsed.
    """
    answer, marker, caption = text.partition(CAPTION_START)
    return strip_markers(answer), strip_markers(caption) if marker else ""


def strip_markers(text: str) -> str:
    """`text` without `<|IC|>` / `<|img|>` markers, whitespace collapsed."""
    text = text.replace(CAPTION_START, " ").replace(IMAGE_TOKEN, " ")
    return re.sub(r"\s+", " ", text).strip()


def panel_prompt(premise: str, index: int, panels: int) -> str:
    """The user turn asking for part `index` (from 0) of a story in `panels` parts."""
    if index == 0:
        return f"{premise}\nTell this story in {panels} parts. Part 1 of {panels}."
    return f"Continue the story: part {index + 1} of {panels}."


def build_prompt(processor: Any, history: Sequence[ChatTurn], new_turn: ChatTurn) -> str:
    """Eq. 1 prompt text for `new_turn` after `history`, ending with "Response:".

    Images appear in turn order (history first, then the new turn's), which is the
    order the caller must hand them to the processor. With no chat template the text
    carries the processor's own image placeholder.
    """
    task = get_task(new_turn.task)
    parts: list[dict[str, str]] = [{"type": "text", "text": f"Instruction: {task.description}\nInput:"}]
    for turn in history:
        parts += _user_parts(turn)
        parts.append({"type": "text", "text": f"\nAssistant: {format_response(turn.answer, turn.caption)}"})
    parts += _user_parts(new_turn)

    template = getattr(processor, "chat_template", None)
    if template:
        messages = [{"role": "user", "content": parts}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        prompt = "".join(_as_plain_text(processor, part) for part in parts) + "\n"
    return prompt + ("" if prompt[-1:].isspace() else " ") + RESPONSE_LABEL


def fit_prompt(
    processor: Any, history: Sequence[ChatTurn], new_turn: ChatTurn, max_prompt_length: int
) -> FittedPrompt:
    """The prompt of `new_turn` after the longest recent part of `history` (oldest turns
    dropped first) that has at most `max_prompt_length` tokens. Inference (the encoder)
    and training (teacher forcing) both fit context with it, so they drop the same turns."""
    for dropped in range(len(history) + 1):
        kept = history[dropped:]
        turns = (*kept, new_turn)
        pil_images = [image for turn in turns for image in turn.pil_images()]
        inputs = processor(text=build_prompt(processor, kept, new_turn), images=pil_images or None,
                           return_tensors="pt")
        if inputs["input_ids"].shape[1] <= max_prompt_length:
            return FittedPrompt(inputs, dropped, [image for turn in turns for image in turn.images])
    raise PromptTooLongError(inputs["input_ids"].shape[1], max_prompt_length)


def _user_parts(turn: ChatTurn) -> list[dict[str, str]]:
    return [{"type": "text", "text": f"\nUser: {turn.user_text}"}] + [{"type": "image"} for _ in turn.images]


def _as_plain_text(processor: Any, part: dict[str, str]) -> str:
    if part["type"] == "text":
        return part["text"]
    placeholder = getattr(processor, "image_token", None)
    if not placeholder:
        raise PromptFormatError(
            "This VLM's processor has neither a chat template nor an image_token, so there is no way to "
            "place an image in its prompt; use a VLM folder whose processor_config/chat_template is complete."
        )
    return placeholder

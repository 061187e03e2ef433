"""The M²Chat instruction format (Eq. 1):

    Instruction: T
    Input: ŷ                      (the preceding dialogue and the new user turn)
    Response: y_res <|IC|> ŷ_cap <|img|>×K

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

if TYPE_CHECKING:
    from .session import ChatTurn

RESPONSE_LABEL = "Response:"


class PromptFormatError(ValueError):
    """A prompt cannot be rendered with the VLM's processor."""


@dataclass(frozen=True)
class Task:
    """One M²Chat task. `description` is T in Eq. 1; `answer_first` says whether a
    response y_res precedes `<|IC|>` when the turn draws an image."""

    name: str
    description: str
    answer_first: bool


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "text_to_image",
            f"Draw the image the user asks for. Write {CAPTION_START} and then one detailed caption "
            "of the image: its subject, setting, colours and style.",
            answer_first=False,
        ),
        Task(
            "image_editing",
            "Edit the input image as the user asks. Say in one sentence what you change, then write "
            f"{CAPTION_START} and one detailed caption of the edited image.",
            answer_first=True,
        ),
        Task(
            "storytelling",
            "Continue the story with its next short part, then write "
            f"{CAPTION_START} and one detailed caption of the picture for that part.",
            answer_first=True,
        ),
        Task(
            "multimodal_dialogue",
            "Reply to the user in the conversation. When an image helps, write "
            f"{CAPTION_START} after your reply and one detailed caption of the image to show.",
            answer_first=True,
        ),
    )
}


def panel_prompt(premise: str, index: int, panels: int) -> str:
    """The user text of story panel `index` (0-based) of `panels` (storytelling task)."""
    if index == 0:
        return f"{premise}\nTell this story in {panels} parts. Part 1 of {panels}."
    return f"Continue the story: part {index + 1} of {panels}."


def get_task(name: str) -> Task:
    """The task called `name`, or a ValueError listing the task names."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"Unknown M²Chat task {name!r}; choose one of {sorted(TASKS)}.") from None


def format_response(answer: str, caption: str, num_image_tokens: int = 0) -> str:
    """Response of Eq. 1 as text: `y_res <|IC|> ŷ_cap <|img|>×K` (no caption: the answer)."""
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

"""The M²Chat tasks: the instruction T of Eq. 1 for each, and whether an answer comes
before the caption. Shared by the prompt format, the chat session and the nodes."""

from __future__ import annotations

from dataclasses import dataclass

from .special_tokens import CAPTION_START


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


def get_task(name: str) -> Task:
    """The task called `name`, or a ValueError listing the task names."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"Unknown M²Chat task {name!r}; choose one of {sorted(TASKS)}.") from None

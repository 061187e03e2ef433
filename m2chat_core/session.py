"""An immutable multimodal chat session: the dialogue yhat that Eq. 1 feeds back as Input.

Images are kept as RGB PNG bytes and serialised as base64 inside the JSON, so a
session file is self-contained, and the JSON (keys sorted, no whitespace) is a pure
function of the session: identical sessions give identical JSON and fingerprints,
which is what ComfyUI's output cache keys on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from .tasks import get_task

SESSION_FORMAT = "m2chat-session"
SESSION_VERSION = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class SessionFormatError(ValueError):
    """Session JSON or a turn field that cannot be read."""


def image_to_png(image: Image.Image | torch.Tensor) -> bytes:
    """RGB PNG bytes of a PIL image or of one ComfyUI IMAGE, (H, W, C) or (1, H, W, C) in [0, 1]."""
    if isinstance(image, torch.Tensor):
        pixels = image.squeeze(0) if image.dim() == 4 and image.shape[0] == 1 else image
        if pixels.dim() != 3 or pixels.shape[-1] not in (1, 3, 4):
            raise SessionFormatError(
                f"An image tensor must be (H, W, C) or (1, H, W, C) with C in 1, 3, 4; got {tuple(image.shape)}. "
                "Split a batch into single images first."
            )
        array = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class ChatTurn:
    """One exchange: the user's text and images, and the VLM's answer and caption
    (empty caption: the turn drew no image)."""

    user_text: str
    images: tuple[bytes, ...] = ()  # RGB PNG bytes, in prompt order
    answer: str = ""
    caption: str = ""
    task: str = "multimodal_dialogue"

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(self.images))
        for name in ("user_text", "answer", "caption", "task"):
            if not isinstance(getattr(self, name), str):
                raise SessionFormatError(f"ChatTurn.{name} must be a string, got {getattr(self, name)!r}.")
        try:
            get_task(self.task)
        except ValueError as error:
            raise SessionFormatError(str(error)) from None
        if any(not isinstance(image, bytes) or not image.startswith(_PNG_SIGNATURE) for image in self.images):
            raise SessionFormatError("ChatTurn.images must hold PNG bytes; convert images with image_to_png().")

    def pil_images(self) -> list[Image.Image]:
        """The turn's images, decoded to RGB PIL images."""
        return [Image.open(io.BytesIO(image)).convert("RGB") for image in self.images]

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_text": self.user_text,
            "images": [base64.b64encode(image).decode("ascii") for image in self.images],
            "answer": self.answer,
            "caption": self.caption,
            "task": self.task,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ChatTurn:
        expected = {"user_text", "images", "answer", "caption", "task"}
        if not isinstance(data, dict) or set(data) != expected:
            raise SessionFormatError(f"A session turn must be an object with exactly the keys {sorted(expected)}.")
        if not isinstance(data["images"], list) or any(not isinstance(image, str) for image in data["images"]):
            raise SessionFormatError("A session turn's images must be a list of base64 PNG strings.")
        try:
            images = tuple(base64.b64decode(image, validate=True) for image in data["images"])
        except binascii.Error as error:
            raise SessionFormatError(f"A session image is not valid base64: {error}.") from None
        return cls(data["user_text"], images, data["answer"], data["caption"], data["task"])


@dataclass(frozen=True)
class ChatSession:
    """The dialogue so far, oldest turn first. Every change returns a new session."""

    turns: tuple[ChatTurn, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "turns", tuple(self.turns))
        if any(not isinstance(turn, ChatTurn) for turn in self.turns):
            raise SessionFormatError("ChatSession.turns must hold ChatTurn objects.")

    def with_turn(self, turn: ChatTurn) -> ChatSession:
        """This session with `turn` appended."""
        return replace(self, turns=(*self.turns, turn))

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, images as base64 PNG."""
        payload = {
            "format": SESSION_FORMAT,
            "version": SESSION_VERSION,
            "turns": [turn.to_dict() for turn in self.turns],
        }
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ChatSession:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise SessionFormatError(f"Session text is not JSON: {error}.") from None
        if not isinstance(payload, dict) or payload.get("format") != SESSION_FORMAT:
            raise SessionFormatError(f"Not an M²Chat session: the JSON needs \"format\": \"{SESSION_FORMAT}\".")
        if payload.get("version") != SESSION_VERSION:
            raise SessionFormatError(
                f"Session format version {payload.get('version')!r} is not supported; this comfyui-m2chat "
                f"reads version {SESSION_VERSION}."
            )
        if not isinstance(payload.get("turns"), list):
            raise SessionFormatError("A session's \"turns\" must be a list.")
        return cls(tuple(ChatTurn.from_dict(turn) for turn in payload["turns"]))

    def fingerprint(self) -> str:
        """SHA-256 hex digest of `to_json()`: equal for equal sessions, stable across runs."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

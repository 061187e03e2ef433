"""The immutable chat session: turns, images, canonical JSON and fingerprints."""

import dataclasses
import json

import pytest
import torch
from PIL import Image

from m2chat_core.session import ChatSession, ChatTurn, SessionFormatError, image_to_png


def _image(colour=(255, 0, 0), size=(6, 4)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _session() -> ChatSession:
    first = ChatTurn("Draw a fox", (image_to_png(_image()),), "Here.", "a red fox", "text_to_image")
    second = ChatTurn("Make it blue", (), "Done.", "a blue fox", "image_editing")
    return ChatSession().with_turn(first).with_turn(second)


def test_with_turn_returns_a_new_session_and_leaves_the_old_one_alone():
    empty = ChatSession()
    turn = ChatTurn("hello")
    one = empty.with_turn(turn)
    assert empty.turns == () and one.turns == (turn,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.turns = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        turn.answer = "changed"  # type: ignore[misc]


def test_json_round_trip_keeps_every_field_and_pixel():
    session = _session()
    restored = ChatSession.from_json(session.to_json())
    assert restored == session
    assert restored.turns[0].pil_images()[0].tobytes() == _image().tobytes()
    assert restored.fingerprint() == session.fingerprint()


def test_identical_sessions_give_identical_json_and_fingerprints():
    assert _session().to_json() == _session().to_json()
    assert _session().fingerprint() == _session().fingerprint()
    payload = json.loads(_session().to_json())
    assert payload["format"] == "m2chat-session" and payload["version"] == 1
    assert " " not in _session().to_json().split('"turns"')[0]  # compact, canonical separators


@pytest.mark.parametrize(
    "change",
    [
        lambda turn: dataclasses.replace(turn, caption="a red dog"),
        lambda turn: dataclasses.replace(turn, task="storytelling"),
        lambda turn: dataclasses.replace(turn, images=(image_to_png(_image((254, 0, 0))),)),
        lambda turn: dataclasses.replace(turn, images=()),
    ],
)
def test_any_change_changes_the_fingerprint(change):
    session = _session()
    changed = ChatSession((change(session.turns[0]), session.turns[1]))
    assert changed.fingerprint() != session.fingerprint()
    assert len(session.fingerprint()) == 64


def test_image_to_png_accepts_comfyui_image_tensors():
    pixels = torch.zeros(1, 4, 6, 3)
    pixels[..., 0] = 1.0  # red, (1, H, W, C) in [0, 1] as ComfyUI's IMAGE
    assert image_to_png(pixels) == image_to_png(_image())
    assert image_to_png(pixels[0]) == image_to_png(_image())
    with pytest.raises(SessionFormatError, match="Split a batch"):
        image_to_png(torch.zeros(2, 4, 6, 3))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ('{"format": "other", "version": 1, "turns": []}', "Not an M²Chat session"),
        ('{"format": "m2chat-session", "version": 99, "turns": []}', "version 99"),
        ('{"format": "m2chat-session", "version": 1, "turns": [{"user_text": "hi"}]}', "exactly the keys"),
        (
            '{"format": "m2chat-session", "version": 1, "turns": [{"user_text": "hi", "images": ["@@"], '
            '"answer": "", "caption": "", "task": "storytelling"}]}',
            "base64",
        ),
        (
            '{"format": "m2chat-session", "version": 1, "turns": [{"user_text": "hi", "images": ["aGVsbG8="], '
            '"answer": "", "caption": "", "task": "storytelling"}]}',
            "PNG",
        ),
        (
            '{"format": "m2chat-session", "version": 1, "turns": [{"user_text": "hi", "images": [], '
            '"answer": "", "caption": "", "task": "painting"}]}',
            "Unknown M²Chat task",
        ),
    ],
)
def test_from_json_rejects_malformed_sessions_with_a_reason(text, message):
    with pytest.raises(SessionFormatError, match=message):
        ChatSession.from_json(text)

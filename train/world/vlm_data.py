"""The world's VLM samples: M²Chat turns (history + the turn to learn), generated on the fly.

Every sample is a pure function of (seed, split, kind, index), drawn with dataset.py's
own generators (text-to-image requests, dialogues with follow-ups, image edits, 4-panel
stories) plus describing a picture, and becomes the `ChatTurn`s the pack's encoder
builds its Eq. 1 prompt from (m2chat_core.prompt), with the turns' pictures as PNG
bytes. The train split never shows a held-out (colour, shape) pair.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from m2chat_core.session import ChatTurn
from m2chat_core.special_tokens import SPECIAL_TOKENS
from m2chat_core.tasks import TASKS

from . import language
from .dataset import _dialogue, _editing, _story, _text_to_image, sample_rng
from .render import png_bytes, render
from .scenes import Scene, random_scene
from .vocabulary import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES

# How often each kind of turn is drawn in training.
KIND_WEIGHTS: dict[str, float] = {"describe": 0.3, "text_to_image": 0.15, "dialogue": 0.35, "editing": 0.1,
                                  "story": 0.1}


@dataclass(frozen=True)
class WorldTurn:
    """A turn to learn (or to measure): the dialogue before it, the turn with its known
    answer and caption, and the scene its caption describes."""

    history: tuple[ChatTurn, ...]
    turn: ChatTurn
    scene: Scene
    kind: str


@functools.lru_cache(maxsize=4096)
def picture(scene: Scene) -> bytes:
    """The scene's picture as PNG bytes (the form a ChatTurn keeps)."""
    return png_bytes(render(scene))


def _picture_writer(name: str, scene: Scene) -> bytes:  # dataset.py's image writer, kept in memory
    return picture(scene)


def _chat_turns(record: dict) -> tuple[ChatTurn, ...]:
    return tuple(ChatTurn(t["user_text"], tuple(t["images"]), t["answer"], t["caption"], record["task"])
                 for t in record["turns"])


def _from_record(record: dict, kind: str) -> WorldTurn:
    turns = _chat_turns(record)
    return WorldTurn(turns[:-1], turns[-1], Scene.from_dict(record["target_scene"]), kind)


def describe_turn(rng: random.Random, split: str, max_objects: int = 2) -> WorldTurn:
    """The user shows a picture and asks what it shows."""
    scene = random_scene(rng, split, max_objects)
    turn = ChatTurn(language.describe_request(rng), (picture(scene),), language.describe_answer(rng, scene),
                    language.caption(scene), "multimodal_dialogue")
    return WorldTurn((), turn, scene, "describe")


def world_turn(kind: str, rng: random.Random, split: str) -> WorldTurn:
    """One turn of `kind` (a KIND_WEIGHTS key); from dialogues and stories a random one
    of their turns, with the turns before it as history."""
    if kind == "describe":
        return describe_turn(rng, split)
    if kind == "text_to_image":
        return _from_record(_text_to_image(rng, split, _picture_writer, 0)[0], kind)
    if kind == "editing":
        return _from_record(_editing(rng, split, _picture_writer, 0)[0], kind)
    if kind == "dialogue":
        return _from_record(rng.choice(_dialogue(rng, split, _picture_writer, 0)), kind)
    if kind == "story":
        return _from_record(rng.choice(_story(rng, split, _picture_writer, 0)), kind)
    raise ValueError(f"Unknown kind of world turn {kind!r}; choose one of {sorted(KIND_WEIGHTS)}.")


def training_turn(seed: int, step: int, index: int) -> WorldTurn:
    """Sample `index` of training step `step`: a pure function of its arguments."""
    rng = sample_rng(seed, "train", "vlm", step * 100_003 + index)
    kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
    return world_turn(kind, rng, "train")


def follow_up_turns(seed: int, count: int, split: str = "test") -> list[WorldTurn]:
    """`count` dialogue follow-ups ("now make it green", "move it to the right", "add ...")
    whose edited scene is in `split`, each from its own dialogue."""
    turns, index = [], 0
    while len(turns) < count:
        rng = sample_rng(seed, split, "vlm-follow-up", index)
        records = [r for r in _dialogue(rng, split, _picture_writer, 0) if len(r["turns"]) > 1]
        if records:
            turns.append(_from_record(rng.choice(records), "dialogue"))
        index += 1
    return turns


def describe_turns(seed: int, count: int, split: str = "test") -> list[WorldTurn]:
    """`count` single-object pictures of `split` to describe (test: held-out pairs)."""
    return [describe_turn(sample_rng(seed, split, "vlm-describe", index), split, max_objects=1)
            for index in range(count)]


def tokenizer_corpus(seed: int = 0, samples: int = 1000) -> list[str]:
    """The text the world's VLM reads and writes: the prompt scaffolding, the tasks'
    instructions, and the turns of training samples (BPE merges are learnt from it)."""
    texts = ["USER: ASSISTANT: Instruction: Input: User: Assistant: Response:", *SPECIAL_TOKENS]
    texts += [task.description for task in TASKS.values()]
    texts += [" ".join((*COLOURS, *SHAPES, *SIZES, *BACKGROUNDS, *POSITIONS.values()))]
    for index in range(samples):
        sample = training_turn(seed, -1, index)  # step -1: no training step draws these
        for turn in (*sample.history, sample.turn):
            texts += [turn.user_text, turn.answer, turn.caption]
    return [text for text in texts if text]


def named_objects(scene: Scene) -> Sequence[tuple[str, str, tuple[int, int]]]:
    """What a follow-up must get right: each object's colour, shape and position."""
    return [(o.colour, o.shape, o.cell) for o in scene.objects]

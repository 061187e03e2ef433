"""The world's text: one canonical caption per scene (what a VLM must write and a text
encoder reads), and requests, answers and edit instructions in varied phrasing."""

from __future__ import annotations

import random

from .scenes import Edit, Scene, WorldObject
from .vocabulary import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES

REQUESTS = (
    "draw {}",
    "please draw {}",
    "can you draw {}?",
    "show me {}",
    "make a picture of {}",
    "I would like {}",
    "paint {}",
    "create an image of {}",
)
ANSWERS = ("Here is {}.", "Sure, here is {}.", "I drew {}.", "Done: {}.")

EDIT_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "recolour": ("now make it {}", "make it {}", "change its colour to {}", "turn it {}", "colour it {}"),
    "reshape": ("now make it a {}", "turn it into a {}", "change it to a {}", "make it a {} instead"),
    "resize": ("now make it {}", "make it {}", "I want it {}"),
    "move": ("move it {}", "now move it {}", "shift it {}", "put it one step {}"),
    "background": ("change the background to {}", "now use a {} background", "make the background {}"),
    "add": ("add {}", "now add {}", "also draw {}", "put {} in the picture too"),
}
SIZE_WORDS = {"small": ("smaller", "small"), "large": ("bigger", "large")}
MOVE_WORDS = {"left": ("to the left", "left"), "right": ("to the right", "right"), "up": ("up", "upwards"),
              "down": ("down", "downwards")}


def describe_object(obj: WorldObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape} {POSITIONS[obj.cell]}"


def caption(scene: Scene) -> str:
    """The canonical caption: 'a small red star at the top left and a large blue circle
    in the middle on a grey background'."""
    return " and ".join(describe_object(o) for o in scene.objects) + f" on a {scene.background} background"


def parse_caption(text: str) -> Scene | None:
    """The scene a canonical caption describes (the inverse of `caption`, objects centred in
    their cells); None when `text` is not a canonical caption."""
    body, on_a, background = text.strip().rstrip(".").rpartition(" on a ")
    background = background.removesuffix(" background")
    objects = tuple(_OBJECTS_BY_DESCRIPTION.get(part) for part in body.split(" and "))
    if not on_a or background not in BACKGROUNDS or None in objects:
        return None
    return Scene(background, objects)


_OBJECTS_BY_DESCRIPTION = {describe_object(obj): obj for obj in (
    WorldObject(colour, shape, size, row, column)
    for colour in COLOURS for shape in SHAPES for size in SIZES for row, column in POSITIONS)}


def request(rng: random.Random, scene: Scene) -> str:
    return rng.choice(REQUESTS).format(caption(scene))


def answer(rng: random.Random, scene: Scene) -> str:
    return rng.choice(ANSWERS).format(caption(scene))


def edit_instruction(rng: random.Random, edit: Edit) -> str:
    template = rng.choice(EDIT_INSTRUCTIONS[edit.kind])
    if edit.kind == "resize":
        return template.format(rng.choice(SIZE_WORDS[edit.value]))
    if edit.kind == "move":
        return template.format(rng.choice(MOVE_WORDS[edit.value]))
    if edit.kind == "add":
        return template.format(describe_object(edit.value))
    return template.format(edit.value)


def _place(obj: WorldObject) -> str:
    """'the top left' from 'at the top left'."""
    return POSITIONS[obj.cell].split(" ", 1)[1]


def edit_answer(edit: Edit, result: Scene) -> str:
    """One sentence saying what changed (the image-editing task answers first)."""
    it = result.objects[0]
    sentences = {
        "recolour": f"The {it.shape} is now {it.colour}.",
        "reshape": f"It is now a {it.colour} {it.shape}.",
        "resize": f"The {it.shape} is now {it.size}.",
        "move": f"I moved the {it.shape} to {_place(it)}.",
        "background": f"The background is now {result.background}.",
        "add": f"I added {describe_object(result.objects[-1])}.",
    }
    return sentences[edit.kind]


STORY_EDIT_KINDS = ("recolour", "resize", "move", "background")


def story_sentence(edit: Edit | None, scene: Scene) -> str:
    """A panel's part of the story (its answer, before the caption); edit None: the first panel."""
    it = scene.objects[0]
    if edit is None:
        return f"Once upon a time there was a {it.size} {it.colour} {it.shape} {POSITIONS[it.cell]}."
    sentences = {
        "recolour": f"Then the {it.shape} turned {it.colour}.",
        "resize": f"Then the {it.shape} {'grew' if it.size == 'large' else 'shrank'}.",
        "move": f"Then the {it.shape} moved to {_place(it)}.",
        "background": f"Then the sky around the {it.shape} turned {scene.background}.",
    }
    return sentences[edit.kind]


def story_premise(scene: Scene) -> str:
    it = scene.objects[0]
    return f"a story about a {it.colour} {it.shape}"


# --- describing a picture (the VLM reads an image and says what it shows) -------------------

DESCRIBE_REQUESTS = (
    "what is in this picture?",
    "describe this image",
    "what do you see?",
    "tell me what this picture shows",
    "describe the picture",
)
DESCRIBE_ANSWERS = ("I see {}.", "It shows {}.", "This picture shows {}.")


def describe_request(rng: random.Random) -> str:
    return rng.choice(DESCRIBE_REQUESTS)


def describe_answer(rng: random.Random, scene: Scene) -> str:
    """A short answer naming each object's colour and shape; the caption gives the rest."""
    return rng.choice(DESCRIBE_ANSWERS).format(" and ".join(f"a {o.colour} {o.shape}" for o in scene.objects))

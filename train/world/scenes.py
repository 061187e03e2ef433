"""Scenes (a background and one or two objects on the 3×3 grid), their seeded sampling,
the edits a user can ask for, and the held-out split."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from .vocabulary import BACKGROUNDS, COLOURS, GRID, HELD_OUT_PAIRS, JITTER, POSITIONS, SHAPES, SIZES


@dataclass(frozen=True)
class WorldObject:
    colour: str
    shape: str
    size: str
    row: int
    column: int
    offset: tuple[int, int] = (0, 0)  # (dx, dy) pixels off the cell centre, |d| <= JITTER

    @property
    def pair(self) -> tuple[str, str]:
        return self.colour, self.shape

    @property
    def cell(self) -> tuple[int, int]:
        return self.row, self.column


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[WorldObject, ...]

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "objects": [
                {"colour": o.colour, "shape": o.shape, "size": o.size, "row": o.row, "column": o.column,
                 "offset": list(o.offset)}
                for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        objects = tuple(
            WorldObject(o["colour"], o["shape"], o["size"], o["row"], o["column"], tuple(o["offset"]))
            for o in data["objects"]
        )
        return cls(data["background"], objects)

    def with_object(self, index: int, obj: WorldObject) -> Scene:
        objects = list(self.objects)
        objects[index] = obj
        return replace(self, objects=tuple(objects))


def is_held_out(scene: Scene) -> bool:
    return any(o.pair in HELD_OUT_PAIRS for o in scene.objects)


ANY = "any"  # not a data split: every pair (the judge must read held-out pairs too)


def allowed_pairs(split: str) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a split's first object is drawn from (test: held-out only)."""
    pairs = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    if split == ANY:
        return pairs
    if split == "test":
        return [pair for pair in pairs if pair in HELD_OUT_PAIRS]
    return [pair for pair in pairs if pair not in HELD_OUT_PAIRS]


def seen_pairs() -> list[tuple[str, str]]:
    return allowed_pairs("train")


def random_object(rng: random.Random, pairs: list[tuple[str, str]], cells: list[tuple[int, int]]) -> WorldObject:
    colour, shape = rng.choice(pairs)
    row, column = rng.choice(cells)
    offset = (rng.randint(-JITTER, JITTER), rng.randint(-JITTER, JITTER))
    return WorldObject(colour, shape, rng.choice(list(SIZES)), row, column, offset)


def all_cells() -> list[tuple[int, int]]:
    return list(POSITIONS)


def free_cells(scene: Scene) -> list[tuple[int, int]]:
    taken = {o.cell for o in scene.objects}
    return [cell for cell in all_cells() if cell not in taken]


def random_scene(rng: random.Random, split: str, max_objects: int = 2) -> Scene:
    """One or two objects; in the test split the first object is a held-out pair and
    any other one is seen, in the train split every object is seen."""
    first = random_object(rng, allowed_pairs(split), all_cells())
    scene = Scene(rng.choice(list(BACKGROUNDS)), (first,))
    if rng.randint(1, max_objects) == 2:
        other_pairs = allowed_pairs(ANY) if split == ANY else seen_pairs()
        scene = replace(scene, objects=(first, random_object(rng, other_pairs, free_cells(scene))))
    return scene


# --- edits: what "it" (the first object) can be asked to become -----------------------------

MOVES: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def edit_start(rng: random.Random, split: str, max_objects: int = 2) -> Scene:
    """A scene that an edit in `split` starts from: a train scene in the train split; in the
    test split a train or a held-out scene, half and half (the edit then keeps or makes a
    held-out pair, random_edit)."""
    return random_scene(rng, "train" if split == "train" or rng.random() < 0.5 else "test", max_objects)


@dataclass(frozen=True)
class Edit:
    """One change to object 0 of a scene, or an added object. kind is one of EDIT_KINDS;
    value is a colour, a shape, a size, a MOVES key, a background, or the added object."""

    kind: str
    value: str | WorldObject


EDIT_KINDS = ("recolour", "reshape", "resize", "move", "background", "add")


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    it = scene.objects[0]
    if edit.kind == "recolour":
        return scene.with_object(0, replace(it, colour=edit.value))
    if edit.kind == "reshape":
        return scene.with_object(0, replace(it, shape=edit.value))
    if edit.kind == "resize":
        return scene.with_object(0, replace(it, size=edit.value))
    if edit.kind == "move":
        d_row, d_column = MOVES[edit.value]
        return scene.with_object(0, replace(it, row=it.row + d_row, column=it.column + d_column))
    if edit.kind == "background":
        return replace(scene, background=edit.value)
    if edit.kind == "add":
        return replace(scene, objects=(*scene.objects, edit.value))
    raise ValueError(f"Unknown edit kind {edit.kind!r}; choose one of {EDIT_KINDS}.")


def possible_edits(scene: Scene) -> list[Edit]:
    """Every change of object 0 that keeps it on the grid and off the other object."""
    it = scene.objects[0]
    taken = {o.cell for o in scene.objects[1:]}
    edits = [Edit("recolour", c) for c in COLOURS if c != it.colour]
    edits += [Edit("reshape", s) for s in SHAPES if s != it.shape]
    edits += [Edit("resize", s) for s in SIZES if s != it.size]
    for name, (d_row, d_column) in MOVES.items():
        cell = (it.row + d_row, it.column + d_column)
        if 0 <= cell[0] < GRID and 0 <= cell[1] < GRID and cell not in taken:
            edits.append(Edit("move", name))
    edits += [Edit("background", b) for b in BACKGROUNDS if b != scene.background]
    return edits


def in_split(scene: Scene, split: str) -> bool:
    """train: no held-out pair anywhere; test: at least one held-out pair."""
    return is_held_out(scene) == (split == "test")


def random_edit(rng: random.Random, scene: Scene, split: str) -> Edit:
    """An edit of object 0 (or, with one object, an added seen object) whose result is in
    `split`: in the test split that is an edit that keeps or makes a held-out pair."""
    edits = possible_edits(scene)
    if len(scene.objects) == 1:
        edits.append(Edit("add", random_object(rng, seen_pairs(), free_cells(scene))))
    edits = [edit for edit in edits if in_split(apply_edit(scene, edit), split)]
    return rng.choice(edits)

"""What the shapes world is made of: the single definition of its attributes."""

from __future__ import annotations

IMAGE_SIZE = 128  # pixels; the VAE's latent is 16×16, so a small shape spans > 3 latent cells
GRID = 3  # a 3×3 grid of positions

SHAPES = ("circle", "square", "triangle", "star", "cross")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 30),
    "green": (35, 160, 60),
    "cyan": (30, 200, 220),
    "blue": (35, 75, 220),
    "purple": (135, 55, 190),
    "pink": (245, 125, 190),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "black": (20, 20, 20),
}

SIZES: dict[str, int] = {"small": 26, "large": 38}  # side of the shape's bounding box, pixels

# (row, column) -> how a caption names it; rows top to bottom, columns left to right.
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "at the top left",
    (0, 1): "at the top",
    (0, 2): "at the top right",
    (1, 0): "on the left",
    (1, 1): "in the middle",
    (1, 2): "on the right",
    (2, 0): "at the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "at the bottom right",
}
# The words of POSITIONS that name a place: each phrase's words after "at the", "on the" or "in the".
POSITION_WORDS = tuple(dict.fromkeys(word for phrase in POSITIONS.values() for word in phrase.split()[2:]))

JITTER = 2  # pixels an object may sit off its grid cell's centre, each axis

# (colour, shape) pairs that never appear in training data: the held-out test prompts.
# One per shape, each with a different colour, so every colour and shape is still seen.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "star"), ("green", "circle"), ("blue", "triangle"), ("yellow", "cross"), ("purple", "square")}
)

# The data splits and the pairs each draws its scenes from. validation: new scenes of the
# seen pairs, for choosing training settings (never tune on test); test: every sample
# shows at least one held-out pair.
SCENE_SPLIT = {"train": "train", "validation": "train", "test": "test"}
SPLITS = tuple(SCENE_SPLIT)


def cell_centre(row: int, column: int) -> tuple[float, float]:
    """(x, y) of a grid cell's centre in pixels."""
    cell = IMAGE_SIZE / GRID
    return (column + 0.5) * cell, (row + 0.5) * cell

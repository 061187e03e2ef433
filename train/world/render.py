"""Scene -> RGB image: a pure function of the scene (same scene, same pixels, same PNG bytes).

Shapes are drawn at 4× resolution and box-filtered down, so edges are anti-aliased the
same way every time."""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

from .scenes import Scene, WorldObject
from .vocabulary import BACKGROUNDS, COLOURS, IMAGE_SIZE, SIZES, cell_centre

SUPERSAMPLING = 4


def render(scene: Scene) -> Image.Image:
    size = IMAGE_SIZE * SUPERSAMPLING
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj)
    return image.reduce(SUPERSAMPLING)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _draw_object(draw: ImageDraw.ImageDraw, obj: WorldObject) -> None:
    x, y = cell_centre(obj.row, obj.column)
    x, y = (x + obj.offset[0]) * SUPERSAMPLING, (y + obj.offset[1]) * SUPERSAMPLING
    half = SIZES[obj.size] * SUPERSAMPLING / 2
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x - half, y - half, x + half, y + half), fill=fill)
    elif obj.shape == "square":
        side = half * 0.85  # about the circle's area, so size reads the same for every shape
        draw.rectangle((x - side, y - side, x + side, y + side), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x, y - half), (x + half, y + half * 0.8), (x - half, y + half * 0.8)], fill=fill)
    elif obj.shape == "star":
        points = []
        for k in range(10):
            radius = half if k % 2 == 0 else half * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)
    elif obj.shape == "cross":
        arm = half / 3
        draw.rectangle((x - half, y - arm, x + half, y + arm), fill=fill)
        draw.rectangle((x - arm, y - half, x + arm, y + half), fill=fill)
    else:
        raise ValueError(f"Unknown shape {obj.shape!r}.")

"""Lays story panels and their text out as one page (M2ChatStoryboard)."""

from __future__ import annotations

import math
import textwrap

from PIL import Image, ImageDraw, ImageFont

PAGE_BACKGROUND = (250, 248, 243)
TEXT_COLOUR = (30, 30, 30)


def _font(size: int) -> ImageFont.ImageFont:
    # Pillow ships this font itself, so it exists on a bare machine.
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: ImageFont.ImageFont, width_px: int) -> list[str]:
    """Greedy word wrap to a pixel width (character count estimated from the font)."""
    average_char_px = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)
    columns = max(8, int(width_px / average_char_px))
    lines = []
    for paragraph in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph, columns) or [""])
    return lines


def layout_storyboard(panels: list[Image.Image], texts: list[str], *, columns: int = 0,
                      title: str = "", font_size: int = 0, margin: int = 0) -> Image.Image:
    """One page: an optional title, then a grid of panels, each with its text wrapped
    under it. `columns` 0 picks a near-square grid; `font_size`/`margin` 0 scale with
    the panel width."""
    if not panels:
        raise ValueError("The storyboard needs at least one panel image.")
    if texts and len(texts) != len(panels):
        raise ValueError(f"Got {len(texts)} texts for {len(panels)} panels: give one text per "
                         "panel (one per line), or none.")
    texts = texts or [""] * len(panels)
    panel_w, panel_h = panels[0].size
    columns = columns or math.ceil(math.sqrt(len(panels)))
    rows = math.ceil(len(panels) / columns)
    font_size = font_size or max(10, panel_w // 20)
    margin = margin or max(6, panel_w // 16)
    font = _font(font_size)
    line_h = int(font_size * 1.3)
    wrapped = [_wrap(text, font, panel_w) for text in texts]
    text_h = line_h * max(len(lines) for lines in wrapped) if any(texts) else 0
    title_lines = _wrap(title, _font(font_size * 3 // 2), columns * (panel_w + margin)) if title else []
    title_h = int(len(title_lines) * font_size * 1.5 * 1.3) + (margin if title else 0)

    cell_h = panel_h + (text_h + margin // 2 if text_h else 0)
    page = Image.new("RGB", (margin + columns * (panel_w + margin),
                             margin + title_h + rows * (cell_h + margin)), PAGE_BACKGROUND)
    draw = ImageDraw.Draw(page)
    y = margin
    for line in title_lines:
        draw.text((margin, y), line, fill=TEXT_COLOUR, font=_font(font_size * 3 // 2))
        y += int(font_size * 1.5 * 1.3)
    for index, (panel, lines) in enumerate(zip(panels, wrapped)):
        row, column = divmod(index, columns)
        x0 = margin + column * (panel_w + margin)
        y0 = margin + title_h + row * (cell_h + margin)
        page.paste(panel.convert("RGB").resize((panel_w, panel_h)), (x0, y0))
        for line_index, line in enumerate(lines):
            draw.text((x0, y0 + panel_h + margin // 2 + line_index * line_h), line,
                      fill=TEXT_COLOUR, font=font)
    return page

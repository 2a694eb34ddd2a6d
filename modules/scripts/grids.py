"""Image grids with text: A1111's ``image_grid`` (cells of the largest image's size, smaller images centred), the
legends it draws above the columns and left of the rows (X/Y/Z plot), and the prompt matrix's struck-out labels.

Layout follows A1111: the font size is ``(cell width + cell height) // 25``, the row legends take a left band of
three quarters of a cell's width, the column legends a top band as tall as the tallest wrapped legend plus one font
size, and ``margin`` pixels separate the cells. The legend font is the one given, else Pillow's bundled scalable
font (A1111 uses Roboto; the layout is the same, the glyphs and so the band heights may differ by a pixel or two).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageColor, ImageDraw, ImageFont

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
BACKGROUND = "#ffffff"
TEXT_ACTIVE = "#000000"
TEXT_INACTIVE = "#999999"


@dataclass
class GridAnnotation:
    """One legend line; an inactive one is drawn grey and struck out (a prompt matrix part left out)."""

    text: str = ""
    is_active: bool = True


@dataclass(frozen=True)
class GridStyle:
    """Colours and font of a grid's legends (A1111's grid settings and their defaults)."""

    background: str = BACKGROUND
    active: str = TEXT_ACTIVE
    inactive: str = TEXT_INACTIVE
    font_path: str | None = None


@dataclass
class _Line:
    text: str
    is_active: bool
    size: tuple[int, int]
    allowed_width: int


def get_font(size: int, path: str | None = None) -> Font:
    """The legend font at ``size`` px: the TrueType file ``path`` when it loads, else Pillow's bundled font."""
    size = max(1, size)
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size)


def grid_rows(count: int, rows: int | None = None) -> int:
    """A1111's row count: ``rows`` when given (at most ``count``), else ``round(sqrt(count))``."""
    if rows is None or rows <= 0:
        rows = round(math.sqrt(count))
    return max(1, min(rows, count))


def image_grid(images: Sequence[Image.Image], rows: int | None = None, background: str = BACKGROUND
               ) -> Image.Image:
    """The images row by row in cells the size of the largest one, smaller ones centred in their cell."""
    if not images:
        raise ValueError("a grid needs at least one image")
    rows = grid_rows(len(images), rows)
    cols = math.ceil(len(images) / rows)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * w, rows * h), ImageColor.getcolor(background, "RGB"))
    for i, im in enumerate(images):
        dx = (w - im.width) // 2
        dy = (h - im.height) // 2
        grid.paste(im.convert("RGB") if im.mode != "RGB" else im, (i % cols * w + dx, i // cols * h + dy))
    return grid


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> list[str]:
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if draw.textlength(line, font=font) <= width:
            lines[-1] = line
        else:
            lines.append(word)
    return lines


def _measure(draw: ImageDraw.ImageDraw, texts: Sequence[GridAnnotation], font: Font, width: int) -> list[_Line]:
    """The annotations wrapped to ``width`` with each line's size."""
    out = []
    for item in texts:
        for text in _wrap(draw, item.text, font, width):
            box = draw.multiline_textbbox((0, 0), text, font=font)
            out.append(_Line(text, item.is_active, (int(box[2] - box[0]), int(box[3] - box[1])), width))
    return out


def _draw_lines(draw: ImageDraw.ImageDraw, x: float, y: float, lines: list[_Line], size: int, spacing: int,
                style: GridStyle) -> None:
    active = ImageColor.getcolor(style.active, "RGB")
    inactive = ImageColor.getcolor(style.inactive, "RGB")
    for line in lines:
        font_size = size
        font = get_font(font_size, style.font_path)
        while draw.multiline_textbbox((0, 0), line.text, font=font)[2] > line.allowed_width and font_size > 1:
            font_size -= 1
            font = get_font(font_size, style.font_path)
        draw.multiline_text((x, y + line.size[1] / 2), line.text, font=font, fill=active if line.is_active
                            else inactive, anchor="mm", align="center")
        if not line.is_active:
            half_w, half_h = line.size[0] // 2, line.size[1] // 2
            draw.line((x - half_w, y + half_h, x + half_w, y + half_h), fill=inactive, width=4)
        y += line.size[1] + spacing


def draw_grid_annotations(im: Image.Image, width: int, height: int, hor_texts: Sequence[Sequence[GridAnnotation]],
                          ver_texts: Sequence[Sequence[GridAnnotation]], margin: int = 0,
                          style: GridStyle = GridStyle()) -> Image.Image:
    """``im`` (a grid of ``width`` x ``height`` cells) with the column legends ``hor_texts`` above and the row
    legends ``ver_texts`` on the left, cells ``margin`` px apart."""
    cols, rows = im.width // width, im.height // height
    if cols != len(hor_texts) or rows != len(ver_texts):
        raise ValueError(f"{len(hor_texts)}x{len(ver_texts)} legends for a grid of {cols}x{rows} cells")
    size = (width + height) // 25
    spacing = size // 2
    font = get_font(size, style.font_path)
    has_rows = any(item.text for texts in ver_texts for item in texts)
    pad_left = width * 3 // 4 if has_rows else 0
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    hor = [_measure(draw, texts, font, width) for texts in hor_texts]
    ver = [_measure(draw, texts, font, pad_left) for texts in ver_texts]
    hor_heights = [sum(line.size[1] + spacing for line in lines) - spacing for lines in hor]
    ver_heights = [sum(line.size[1] for line in lines) for lines in ver]
    pad_top = max(hor_heights) + spacing * 2 if sum(hor_heights) else 0
    background = ImageColor.getcolor(style.background, "RGB")
    result = Image.new("RGB", (im.width + pad_left + margin * (cols - 1), im.height + pad_top + margin * (rows - 1)),
                       background)
    for row in range(rows):
        for col in range(cols):
            cell = im.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))
    out = ImageDraw.Draw(result)
    for col, lines in enumerate(hor):
        x = pad_left + (width + margin) * col + width / 2
        _draw_lines(out, x, pad_top / 2 - hor_heights[col] / 2, lines, size, spacing, style)
    for row, lines in enumerate(ver):
        y = pad_top + (height + margin) * row + height / 2 - ver_heights[row] / 2
        _draw_lines(out, pad_left / 2, y, lines, size, spacing, style)
    return result


def draw_prompt_matrix(im: Image.Image, width: int, height: int, parts: Sequence[str], margin: int = 0,
                       style: GridStyle = GridStyle()) -> Image.Image:
    """The prompt matrix legends: the first half of the variable ``parts[1:]`` above the columns, the rest left of
    the rows, each drawn grey and struck out where that cell's prompt leaves it out."""
    variable = list(parts[1:])
    boundary = math.ceil(len(variable) / 2)
    across, down = variable[:boundary], variable[boundary:]
    return draw_grid_annotations(im, width, height, _switches(across), _switches(down), margin, style)


def _switches(texts: Sequence[str]) -> list[list[GridAnnotation]]:
    """For each combination of ``texts`` (bit ``i`` of its number: ``texts[i]`` is in), every text, active or not."""
    return [[GridAnnotation(text, pos & (1 << i) != 0) for i, text in enumerate(texts)]
            for pos in range(1 << len(texts))]

"""The built-in demo model's world: coloured shapes on coloured backgrounds, how they are drawn, captioned and judged.

The demo checkpoint (``models/Stable-diffusion/demo-shapes.safetensors``, trained from scratch by
``scripts/train_demo_model.py``) draws "a {colour} {shape} on a {colour} background" at 128x128. The same
vocabulary, renderer and judge serve its training data and the checks of what it draws: the background is the
median colour of the border, the shape's colour the median colour of the pixels that differ from it, and the shape
is told by how much of that region's bounding box it fills (square 1, circle pi/4, triangle 1/2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

DEMO_NAME = "demo-shapes"
SIZE = 128
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40),
    "white": (245, 245, 245), "black": (15, 15, 15), "orange": (245, 140, 20), "purple": (140, 50, 180),
}
SHAPES = ("circle", "square", "triangle")
# what the model's file says about itself (its metadata): the generation defaults that suit it
DEFAULTS = {"width": SIZE, "height": SIZE, "steps": 20, "sampler_name": "DPM++ 2M", "scheduler": "Karras",
            "cfg_scale": 5.0}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    box: tuple[int, int, int, int]  # left, top, right, bottom

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def random_scene(rng: random.Random, size: int = SIZE) -> Scene:
    colour, background = rng.sample(list(COLOURS), 2)
    side = rng.randint(size * 9 // 32, size * 3 // 4)
    left, top = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
    return Scene(rng.choice(SHAPES), colour, background, (left, top, left + side, top + side))


def render(scene: Scene, size: int = SIZE) -> Image.Image:
    image = Image.new("RGB", (size, size), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    left, top, right, bottom = scene.box
    if scene.shape == "square":
        draw.rectangle((left, top, right - 1, bottom - 1), fill=fill)
    elif scene.shape == "circle":
        draw.ellipse((left, top, right - 1, bottom - 1), fill=fill)
    else:
        draw.polygon([((left + right) / 2, top), (right - 1, bottom - 1), (left, bottom - 1)], fill=fill)
    return image


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((palette - rgb.astype(np.float32)) ** 2).sum(axis=1)))]


@dataclass(frozen=True)
class Judgement:
    background: str
    colour: str | None
    shape: str | None
    fill: float


def judge(image: Image.Image, threshold: float = 80.0) -> Judgement:
    """What an image shows, from pixel statistics only (see the module's docstring). The region that differs
    from the background is first the pixels far from it (``threshold``), which give the shape's colour; then,
    so that soft edges count as much inside as outside, the pixels nearer that colour than the background's."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg = np.median(border, axis=0)
    far = np.sqrt(((arr - bg) ** 2).sum(axis=2)) > threshold
    if far.sum() < 16:
        return Judgement(nearest_colour(bg), None, None, 0.0)
    fg = np.median(arr[far], axis=0)
    region = ((arr - fg) ** 2).sum(axis=2) < ((arr - bg) ** 2).sum(axis=2)
    labels, count = ndimage.label(region)
    if count > 1:  # the shape is the largest piece; specks elsewhere would stretch its box
        sizes = ndimage.sum_labels(region, labels, index=range(1, count + 1))
        region = labels == 1 + int(np.argmax(sizes))
    ys, xs = np.nonzero(region)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = float(region.sum() / box)
    shape = "square" if fill > 0.86 else "circle" if fill > 0.67 else "triangle"
    return Judgement(nearest_colour(bg), nearest_colour(fg), shape, fill)

"""The training images of a folder: read, sized, captioned, and grouped into batches of one size.

As A1111's ``PersonalizedBase``: every file of the folder (not its sub-folders) that opens as an image is used, the
others are skipped (and here named in a warning); the caption is the ``.txt`` beside the image, else the file name
without leading numbers; each step's prompt is a random line of the template with ``[name]`` and ``[filewords]``
filled in, the caption's tags (split at commas) dropped out and shuffled when asked. Images are resized to the
training size (stretched, as A1111 does), kept at their own size ("Do not resize images", rounded down to a
multiple of 8), or put in the aspect-ratio bucket nearest their shape (``buckets``), cropped at the centre to fill it.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from modules.errors import ValidationError
from modules.training_prep.captions import CaptionFileError, read_caption

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_NUMBERS_AT_START = re.compile(r"^[-\d]+\s*")
Tensor = torch.Tensor


@dataclass
class Item:
    """One training image: its pixels (RGB, at the size it is trained at), caption and optional loss weight."""

    path: Path
    image: Image.Image
    caption: str
    alpha: Image.Image | None = None  # the PNG alpha channel, for "Use PNG alpha channel as loss weight"

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def filename_caption(path: Path, word_regex: str = "", join_string: str = " ") -> str:
    """A1111's caption from a file name: leading numbers removed, then (with ``dataset_filename_word_regex``) the
    regex's matches joined by ``dataset_filename_join_string``."""
    text = _NUMBERS_AT_START.sub("", path.stem)
    if word_regex:
        text = join_string.join(re.findall(word_regex, text))
    return text


def bucket_sizes(width: int, height: int, step: int = 64) -> list[tuple[int, int]]:
    """Aspect-ratio buckets of at most ``width * height`` pixels, sides multiples of ``step`` from ``step`` up to
    twice the longer training side (kohya's scheme)."""
    area = width * height
    longest = max(width, height) * 2
    sizes = set()
    w = step
    while w <= longest:
        h = min(longest, (area // w) // step * step)
        if h >= step:
            sizes.add((w, h))
        w += step
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def _fit(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Resize to cover ``target``, then crop the centre to it."""
    return ImageOps.fit(image, target, Image.Resampling.BICUBIC)


def train_size(image_size: tuple[int, int], width: int, height: int, varsize: bool,
               buckets: list[tuple[int, int]] | None) -> tuple[int, int]:
    if buckets:
        return nearest_bucket(image_size, buckets)
    if varsize:
        return max(8, image_size[0] // 8 * 8), max(8, image_size[1] // 8 * 8)
    return width, height


def list_images(root: Path) -> list[Path]:
    """The image files of the dataset folder, in name order; clear errors for a missing or empty folder."""
    if not str(root).strip() or str(root) == ".":
        raise ValidationError("data_root: Dataset directory is empty", field="data_root")
    if not root.is_dir():
        raise ValidationError(f"data_root: Dataset directory doesn't exist: {root}", field="data_root")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValidationError(f"data_root: Dataset directory is empty: {root}", field="data_root")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ValidationError(f"data_root: no images in the dataset directory {root} (looked for "
                              f"{', '.join(IMAGE_SUFFIXES)})", field="data_root")
    return images


def _open(path: Path) -> tuple[Image.Image, Image.Image | None]:
    with Image.open(path) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened) or opened
    alpha = image.getchannel("A") if "A" in image.getbands() else None
    return image.convert("RGB"), alpha


def load_items(root: Path, width: int, height: int, varsize: bool = False, bucketed: bool = False,
               warn: Callable[[str], None] | None = None, word_regex: str = "", join_string: str = " ",
               should_stop: Callable[[], bool] | None = None) -> list[Item]:
    """Every readable image of ``root``, sized for training; unreadable ones are skipped with a warning, and no
    readable image at all is an error naming the first problems."""
    buckets = bucket_sizes(width, height, 64 if min(width, height) >= 256 else 8) if bucketed else None
    items: list[Item] = []
    problems: list[str] = []
    for path in list_images(root):
        if should_stop is not None and should_stop():
            return items  # interrupted: the loop stops before its first step
        try:
            image, alpha = _open(path)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            problems.append(f"{path.name} (not a readable image: {type(exc).__name__})")
            continue
        try:
            caption = read_caption(path)
        except CaptionFileError as exc:
            problems.append(str(exc))
            caption = None
        if caption is None:
            caption = filename_caption(path, word_regex, join_string)
        target = train_size(image.size, width, height, varsize, buckets)
        if image.size != target:  # buckets: cover and crop the centre (kohya); else stretched, as A1111 does
            size = (target[0], target[1])
            image = _fit(image, size) if buckets else image.resize(size, Image.Resampling.BICUBIC)
            if alpha is not None:
                alpha = _fit(alpha, size) if buckets else alpha.resize(size, Image.Resampling.BICUBIC)
        items.append(Item(path, image, caption, alpha))
    if problems and warn is not None:
        warn(f"skipped while reading the dataset: {'; '.join(problems[:10])}"
             + (f" and {len(problems) - 10} more" if len(problems) > 10 else ""))
    if not items:
        raise ValidationError(f"data_root: none of the images in {root} could be read: {'; '.join(problems[:5])}",
                              field="data_root")
    return items


def prompt_text(template: list[str], caption: str, name: str, rng: random.Random, shuffle_tags: bool = False,
                tag_drop_out: float = 0.0) -> str:
    """A1111's ``create_text``: a random template line with the caption's tags (after drop-out and shuffle) for
    ``[filewords]`` and ``name`` for ``[name]``."""
    text = rng.choice(template)
    tags = caption.split(",")
    if tag_drop_out:
        tags = [t for t in tags if rng.random() > tag_drop_out]
    if shuffle_tags:
        rng.shuffle(tags)
    return text.replace("[filewords]", ",".join(tags)).replace("[name]", name)


def tag_frequency(items: list[Item]) -> dict[str, int]:
    """How often each caption tag occurs (kohya's ``ss_tag_frequency`` for one folder)."""
    counts: dict[str, int] = {}
    for item in items:
        for tag in (t.strip() for t in item.caption.split(",")):
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return counts


def pixels(image: Image.Image) -> Tensor:
    """(1, 3, H, W) in [0, 1]."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def alpha_weight(alpha: Image.Image | None, latent_shape: tuple[int, ...]) -> Tensor:
    """A1111's loss weight from the alpha channel: resized to the latent size, shifted to a minimum of 0 and
    scaled to a mean of 1 (ones without an alpha channel)."""
    channels, h, w = latent_shape
    if alpha is None:
        return torch.ones(latent_shape)
    weight = torch.from_numpy(np.asarray(alpha.resize((w, h)), dtype=np.float32)).expand(channels, h, w).clone()
    weight -= weight.min()
    mean = weight.mean()
    return weight / mean if mean > 0 else torch.ones(latent_shape)


def size_groups(sizes: list[tuple[int, int]]) -> list[list[int]]:
    """Indices of same-sized images, in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    return list(groups.values())


def batches(groups: list[list[int]], batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """One epoch: each group shuffled and cut into batches (a last short batch kept), the batches shuffled."""
    out: list[list[int]] = []
    for group in groups:
        order = list(group)
        rng.shuffle(order)
        out += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(out)
    yield from out


def batches_per_epoch(groups: list[list[int]], batch_size: int) -> int:
    return sum(math.ceil(len(g) / batch_size) for g in groups)

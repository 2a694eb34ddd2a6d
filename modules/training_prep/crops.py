"""Split oversized images, auto-sized centred crops and flipped copies, as A1111's training postprocessing does them."""

from __future__ import annotations

import math
from collections.abc import Iterable

from PIL import Image, ImageOps

from modules.training_prep.options import (
    FLIPS,
    MAXIMIZE_AREA,
    OBJECTIVES,
    TrainingPrepError,
    check_choice,
    check_choices,
    check_int,
    check_range,
)

AUTOSIZE_STEP = 64
MAX_TARGET_SIDE = 16384
MAX_SCALED_PIXELS = 8192 * 8192  # a larger scaled image is refused (an extreme aspect ratio)


def default_filter(image: Image.Image) -> Image.Resampling:
    """The filter ``Image.resize`` picks when none is given (A1111 relies on it): bicubic, nearest for 1 and P."""
    return Image.Resampling.NEAREST if image.mode in ("1", "P") else Image.Resampling.BICUBIC


def check_target(width: int, height: int) -> None:
    check_int("target_width", width, 1, MAX_TARGET_SIDE)
    check_int("target_height", height, 1, MAX_TARGET_SIDE)


def check_scaled(size: tuple[int, int]) -> None:
    """Refuse to scale an image past :data:`MAX_SCALED_PIXELS` (its aspect is too far from the target's)."""
    if size[0] * size[1] > MAX_SCALED_PIXELS:
        raise TrainingPrepError(
            f"image: scaled to the target it would be {size[0]}x{size[1]}, more than {MAX_SCALED_PIXELS} pixels",
            field="image",
        )


def split_ratio(size: tuple[int, int], target: tuple[int, int]) -> tuple[float, bool]:
    """How much of the target's aspect the image keeps (below 1: oversized), and whether it is split sideways.

    A portrait image is compared as width over height and cut top to bottom; a landscape or square one is compared
    the other way and cut left to right.
    """
    (iw, ih), (tw, th) = size, target
    if ih > iw:
        return (iw * th) / (ih * tw), False
    return (ih * tw) / (iw * th), True


def split_boxes(length: int, piece: int, overlap_ratio: float) -> list[int]:
    """Offsets of the pieces of ``piece`` pixels that cover ``length`` with at least ``overlap_ratio`` overlap."""
    count = math.ceil((length - piece * overlap_ratio) / (piece * (1.0 - overlap_ratio)))
    if count <= 1:
        return [0]
    step = (length - piece) / (count - 1)
    return [int(step * i) for i in range(count)]


def split_oversized(
    image: Image.Image,
    width: int,
    height: int,
    *,
    threshold: float = 0.5,
    overlap_ratio: float = 0.2,
) -> list[Image.Image]:
    """Cut an image whose aspect is far from ``width``x``height`` into overlapping pieces of that size.

    The image is first resized so that its short side fits the target; the pieces then slide along the long side,
    evenly spaced from one end to the other. An image whose aspect ratio is at least ``threshold`` of the target's
    is returned as is, alone in the list.
    """
    check_target(width, height)
    check_range("split_threshold", threshold, 0.0, 1.0)
    check_range("overlap_ratio", overlap_ratio, 0.0, 0.9)
    ratio, sideways = split_ratio(image.size, (width, height))
    if ratio >= 1.0 or ratio > threshold:
        return [image]
    if sideways:
        across, along, cross_side = height, image.width * height // image.height, width
        check_scaled((along, across))
        resized = image.resize((along, across), default_filter(image))
        return [resized.crop((y, 0, y + cross_side, across)) for y in split_boxes(along, cross_side, overlap_ratio)]
    along = image.height * width // image.width
    check_scaled((width, along))
    resized = image.resize((width, along), default_filter(image))
    return [resized.crop((0, y, width, y + height)) for y in split_boxes(along, height, overlap_ratio)]


def aspect_error(image_size: tuple[int, int], size: tuple[int, int]) -> float:
    """1 minus the ratio of the smaller aspect ratio to the larger one: 0 when the aspects are equal."""
    ratio = image_size[0] / image_size[1] / (size[0] / size[1])
    return 1 - (ratio if ratio < 1 else 1 / ratio)


def autosized_size(
    image_size: tuple[int, int],
    *,
    mindim: int = 384,
    maxdim: int = 768,
    minarea: int = 64 * 64,
    maxarea: int = 640 * 640,
    objective: str = MAXIMIZE_AREA,
    threshold: float = 0.1,
) -> tuple[int, int] | None:
    """The crop size chosen for an image, or None when no size fits.

    Candidates are every width and height from ``mindim`` up to ``maxdim`` in steps of 64 whose area is within the
    bounds and whose aspect error is at most ``threshold``. "Maximize area" takes the largest area (then the
    smallest error), "Minimize error" the smallest error (then the largest area); on a tie the narrower size wins.
    """
    _check_autosize(mindim, maxdim, minarea, maxarea, objective, threshold)
    sides = range(mindim, maxdim + 1, AUTOSIZE_STEP)
    best: tuple[int, int] | None = None
    best_key: tuple[float, float] | None = None
    for w in sides:
        for h in sides:
            error = aspect_error(image_size, (w, h))
            if not minarea <= w * h <= maxarea or error > threshold:
                continue
            key = (w * h, -error) if objective == MAXIMIZE_AREA else (-error, w * h)
            if best_key is None or key > best_key:
                best, best_key = (w, h), key
    return best


def _check_autosize(mindim: int, maxdim: int, minarea: int, maxarea: int, objective: str, threshold: float) -> None:
    check_int("mindim", mindim, 64, 2048)
    check_int("maxdim", maxdim, 64, 2048)
    check_int("minarea", minarea, 64 * 64, 2048 * 2048)
    check_int("maxarea", maxarea, 64 * 64, 2048 * 2048)
    check_choice("objective", objective, OBJECTIVES)
    check_range("threshold", threshold, 0.0, 1.0)


def center_crop_box(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The largest centred box of the image with the aspect of ``size`` (fractional, for a filtered resize)."""
    (iw, ih), (w, h) = image_size, size
    if ih / h < iw / w:
        sw = w * ih / h
        return (iw - sw) / 2, 0, iw - (iw - sw) / 2, ih
    sh = h * iw / w
    return 0, (ih - sh) / 2, iw, ih - (ih - sh) / 2


def center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Crop the centre of the image to the aspect of ``width``x``height`` and resize it to that size (Lanczos)."""
    box = center_crop_box(image.size, (width, height))
    return image.resize((width, height), Image.Resampling.LANCZOS, box)


def autosized_crop(
    image: Image.Image,
    *,
    mindim: int = 384,
    maxdim: int = 768,
    minarea: int = 64 * 64,
    maxarea: int = 640 * 640,
    objective: str = MAXIMIZE_AREA,
    threshold: float = 0.1,
) -> Image.Image | None:
    """The image centre-cropped to the size :func:`autosized_size` picks, or None (skip it) when none fits."""
    size = autosized_size(
        image.size, mindim=mindim, maxdim=maxdim, minarea=minarea, maxarea=maxarea, objective=objective,
        threshold=threshold,
    )
    return None if size is None else center_crop(image, *size)


def flipped_copies(image: Image.Image, flips: Iterable[str] = ("Horizontal",)) -> list[Image.Image]:
    """Flipped copies of the image, in the order Horizontal, Vertical, Both, whatever order they were asked in."""
    chosen = tuple(flips)
    check_choices("flip", chosen, FLIPS)
    copies = []
    if "Horizontal" in chosen:
        copies.append(ImageOps.mirror(image))
    if "Vertical" in chosen:
        copies.append(image.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    if "Both" in chosen:
        copies.append(image.transpose(Image.Transpose.FLIP_TOP_BOTTOM).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    return copies

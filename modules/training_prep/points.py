"""Points of interest for the focal crop: strong corners (edges), the most "entropic" window, and faces.

Corners are the Shi-Tomasi kind (the smaller eigenvalue of the 3x3 Sobel gradients' structure tensor summed over
3x3 pixels), kept above 4% of the strongest, one per 3x3 neighbourhood, the strongest first, no two closer than 6%
of the image's short side, at most 100. This is what A1111 asks of OpenCV's ``goodFeaturesToTrack``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

FaceBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in the pixels of the image given
FaceBoxes = Callable[[Image.Image], Sequence[FaceBox]]

MAX_CORNERS = 100
CORNER_QUALITY = 0.04
CORNER_SPACING = 0.06  # of the short side
WATERMARK_BAND = 0.9  # the bottom 10% is greyed out before looking for corners
ENTROPY_STEP = 4

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Point:
    x: float
    y: float


def _reflect_pad(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    # mirror without repeating the edge pixel (OpenCV's default border)
    if min(values.shape) < 2:
        return np.pad(values, 1, mode="edge")
    return np.pad(values, 1, mode="reflect")


def sobel(gray: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Horizontal and vertical 3x3 Sobel derivatives (whole numbers)."""
    p = _reflect_pad(gray.astype(np.int64))
    left, right = p[:, :-2], p[:, 2:]
    horiz = right - left
    dx = horiz[:-2] + 2 * horiz[1:-1] + horiz[2:]
    smooth = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    dy = smooth[2:] - smooth[:-2]
    return dx, dy


def _box3(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    p = _reflect_pad(values)
    rows = p[:-2] + p[1:-1] + p[2:]
    out: npt.NDArray[np.int64] = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    return out


def corner_strength(gray: npt.NDArray[np.uint8]) -> Array:
    """Twice the smaller eigenvalue of each pixel's 3x3 structure tensor (0 on flat areas and straight edges)."""
    dx, dy = sobel(gray)
    a, b, c = (_box3(v).astype(np.float64) for v in (dx * dx, dx * dy, dy * dy))
    strength: Array = (a + c) - np.sqrt((a - c) ** 2 + 4 * b * b)
    return strength


def _local_maxima(strength: Array) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(rows, cols) of the non-zero 3x3 maxima, one pixel in from the border."""
    padded = np.pad(strength, 1, mode="constant", constant_values=-1.0)
    h, w = strength.shape
    grown = np.max([padded[y:y + h, x:x + w] for y in range(3) for x in range(3)], axis=0)
    keep = (strength != 0) & (strength == grown)
    keep[[0, -1], :] = False
    keep[:, [0, -1]] = False
    rows, cols = np.nonzero(keep)
    return rows, cols


def good_corners(gray: npt.NDArray[np.uint8], min_distance: float) -> list[tuple[int, int]]:
    """The corners, strongest first (ties: the later pixel in reading order), as (x, y)."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return []
    strength = corner_strength(gray)
    top = float(strength.max())
    strength = np.where(strength > top * CORNER_QUALITY, strength, 0.0)
    rows, cols = _local_maxima(strength)
    order = np.lexsort((-(rows * gray.shape[1] + cols), -strength[rows, cols]))
    chosen: list[tuple[int, int]] = []
    limit = min_distance * min_distance
    for i in order:
        x, y = int(cols[i]), int(rows[i])
        if min_distance >= 1 and any((x - cx) ** 2 + (y - cy) ** 2 < limit for cx, cy in chosen):
            continue
        chosen.append((x, y))
        if len(chosen) == MAX_CORNERS:
            break
    return chosen


def edge_points(image: Image.Image) -> list[Point]:
    """Corner points of the image, the bottom tenth (where watermarks sit) left out."""
    gray = image.convert("L")
    ImageDraw.Draw(gray).rectangle((0, image.height * WATERMARK_BAND, image.width, image.height), fill="#999")
    spacing = min(gray.width, gray.height) * CORNER_SPACING
    return [Point(x, y) for x, y in good_corners(np.asarray(gray, dtype=np.uint8), spacing)]


def bilevel_entropy(image: Image.Image) -> float:
    """The score windows are ranked by: -sum(log2 p) over the shares of black and white after dithering."""
    counts = np.bincount(np.asarray(image.convert("1"), dtype=np.uint8).ravel(), minlength=2)
    counts = counts[counts > 0]
    return float(-np.log2(counts / counts.sum()).sum())


def entropy_point(image: Image.Image, width: int, height: int) -> list[Point]:
    """The centre of the best-scoring ``width``x``height`` window slid along the long side in 4-pixel steps.

    A square image has no long side and gives no point. When no window scores above 0 (every window one colour)
    the point is that of the window one step past the last, as in A1111.
    """
    if image.width == image.height:
        return []
    along_x = image.width > image.height
    end = image.width if along_x else image.height
    box = [0, 0, width, height]
    best, best_score = list(box), 0.0
    lead, tail = (0, 2) if along_x else (1, 3)
    while box[tail] < end:
        score = bilevel_entropy(image.crop((box[0], box[1], box[2], box[3])))
        if score > best_score:
            best, best_score = list(box), score
        box[lead] += ENTROPY_STEP
        box[tail] += ENTROPY_STEP
    if best_score == 0.0:  # no window scored: A1111 ends up on the first position past the end
        best = box
    return [Point(int(best[0] + width / 2), int(best[1] + height / 2))]


def face_points(image: Image.Image, detect: FaceBoxes) -> list[Point]:
    """One point per detected face: centred across, a third of the way down the box."""
    points = []
    for x1, y1, x2, y2 in detect(image):
        points.append(Point(int(x1 + (x2 - x1) * 0.5), int(y1 + (y2 - y1) * 0.33)))
    return points

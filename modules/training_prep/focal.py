"""Auto focal point crop: scale the image to the target, find the weighted point of interest, crop around it.

The point is the weighted average of up to three centroids: of the corner points ("edges"), of the best entropy
window, and of the faces a caller-supplied detector finds. Each kind that found something takes the share of its
weight among the kinds that found something. With ``debug`` an annotated copy of the scaled image comes back too:
each centroid as a circle sized by its share with its label, each kind's points as small squares, the chosen point
as a green circle and the crop as a green rectangle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from PIL import Image, ImageDraw

from modules.training_prep.crops import check_scaled, check_target, default_filter
from modules.training_prep.options import check_range
from modules.training_prep.points import FaceBoxes, Point, edge_points, entropy_point, face_points

GREEN = "#0F0"
COLOURS: Mapping[str, str] = MappingProxyType({"Edge": "#00F", "Entropy": "#ff0", "Face": "#F00"})
MARK_SHARE = 0.07  # the chosen point's circle, as a share of the short side
POINT_MARK = 4
LABEL_RAISE = 15


@dataclass(frozen=True)
class Centroid:
    label: str  # "Edge", "Entropy" or "Face"
    point: Point
    share: float  # this kind's weight over the weights of the kinds that found points
    points: tuple[Point, ...]


@dataclass(frozen=True)
class FocalCropResult:
    image: Image.Image
    focus: tuple[int, int]  # in the scaled image
    box: tuple[int, int, int, int]  # the crop in the scaled image; may reach past its edges (black there)
    debug_image: Image.Image | None = None


def scale_for_target(size: tuple[int, int], target: tuple[int, int]) -> float:
    """The factor that brings the image's short side to the target's matching side.

    A landscape image gets the target height, a portrait one the target width; a square image gets the target's
    longer side.
    """
    (w, h), (tw, th) = size, target
    if w > h:
        return th / h
    if h > w:
        return tw / w
    return th / h if th > tw else tw / w


def centroid(points: list[Point]) -> Point:
    return Point(sum(p.x for p in points) / len(points), sum(p.y for p in points) / len(points))


def weighted_centroids(groups: list[tuple[str, float, list[Point]]]) -> list[Centroid]:
    """One centroid per kind that found points, with its weight's share of the weights of those kinds."""
    found = [(label, weight, points) for label, weight, points in groups if points and weight > 0]
    total = 0.0
    for _label, weight, _points in found:
        total += weight
    return [Centroid(label, centroid(points), weight / total, tuple(points)) for label, weight, points in found]


def average_point(centroids: list[Centroid]) -> tuple[int, int]:
    """The share-weighted average of the centroids, rounded half to even; (0, 0) when there are none."""
    weight = x = y = 0.0
    for c in centroids:
        weight += c.share
        x += c.point.x * c.share
        y += c.point.y * c.share
    return round(weight and x / weight), round(weight and y / weight)


def crop_box(focus: tuple[int, int], size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int, int, int]:
    """The crop centred on the focus, moved back inside the image (to its left/top edge if it cannot fit)."""
    corner = []
    for centre, side, length in zip(focus, crop, size, strict=True):
        start = centre - int(side / 2)
        if start < 0:
            start = 0
        elif start + side > length:
            start = length - side
        corner.append(start)
    return corner[0], corner[1], corner[0] + crop[0], corner[1] + crop[1]


def find_centroids(
    image: Image.Image,
    crop: tuple[int, int],
    weights: tuple[float, float, float],
    faces: FaceBoxes | None,
) -> list[Centroid]:
    """Centroids of edges, entropy and faces (in that order) for the kinds with a weight above 0."""
    face_weight, entropy_weight, edges_weight = weights
    edges = edge_points(image) if edges_weight > 0 else []
    entropy = entropy_point(image, *crop) if entropy_weight > 0 else []
    face = face_points(image, faces) if face_weight > 0 and faces is not None else []
    return weighted_centroids([("Edge", edges_weight, edges), ("Entropy", entropy_weight, entropy),
                               ("Face", face_weight, face)])


def _mark(centre: Point, size: float) -> tuple[float, float, float, float]:
    half = size // 2
    return centre.x - half, centre.y - half, centre.x + half, centre.y + half


def draw_debug(
    image: Image.Image, centroids: list[Centroid], focus: tuple[int, int], box: tuple[int, int, int, int]
) -> Image.Image:
    """A copy of the scaled image with the centroids, their points, the chosen point and the crop drawn on it."""
    debug = image.copy()
    draw = ImageDraw.Draw(debug)
    mark = min(image.width, image.height) * MARK_SHARE
    for c in centroids:
        colour = COLOURS[c.label]
        circle = _mark(c.point, mark * c.share)
        draw.text((circle[0], circle[1] - LABEL_RAISE), f"{c.label}: {c.share:.02f}", fill=colour)
        draw.ellipse(circle, outline=colour)
        if len(c.points) > 1:
            for p in c.points:
                draw.rectangle(_mark(p, POINT_MARK), outline=colour)
    draw.ellipse(_mark(Point(*focus), mark), outline=GREEN)
    draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=GREEN)
    return debug


def focal_crop(
    image: Image.Image,
    width: int,
    height: int,
    *,
    face_weight: float = 0.9,
    entropy_weight: float = 0.15,
    edges_weight: float = 0.5,
    debug: bool = False,
    faces: FaceBoxes | None = None,
) -> FocalCropResult:
    """Crop the image to ``width``x``height`` around its focal point.

    The image is scaled (bicubic) so that its short side matches the target (:func:`scale_for_target`), the focal
    point is found on the scaled image, and the crop is centred on it and kept inside the image. ``faces`` returns
    face boxes for the scaled image; without it the face weight has nothing to weigh.
    """
    check_target(width, height)
    for name, value in (("face_weight", face_weight), ("entropy_weight", entropy_weight),
                        ("edges_weight", edges_weight)):
        check_range(name, value, 0.0, 1.0)
    scale = scale_for_target(image.size, (width, height))
    size = int(image.width * scale), int(image.height * scale)
    check_scaled(size)
    scaled = image.resize(size, default_filter(image))
    centroids = find_centroids(scaled, (width, height), (face_weight, entropy_weight, edges_weight), faces)
    focus = average_point(centroids)
    box = crop_box(focus, scaled.size, (width, height))
    annotated = draw_debug(scaled, centroids, focus, box) if debug else None
    return FocalCropResult(scaled.crop(box), focus, box, annotated)

"""The option set of the "postprocessing for training" operations, as one Extras request carries it.

Each operation has its own small frozen dataclass with A1111's control names, defaults and slider ranges; the
whole set is checked when it is built, and a bad value raises :class:`TrainingPrepError` (a ``ValueError``) whose
``field`` names it, e.g. ``focal_crop.face_weight``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from modules.errors import ValidationError

SPLIT = "Split oversized images"
FOCAL_CROP = "Auto focal point crop"
AUTOSIZED_CROP = "Auto-sized crop"
FLIPPED_COPIES = "Create flipped copies"
CAPTION = "Caption"
OPERATIONS = (SPLIT, FOCAL_CROP, AUTOSIZED_CROP, FLIPPED_COPIES, CAPTION)  # A1111's default order (4000..4040)
OTHER_OPERATIONS = ("Upscale", "GFPGAN", "CodeFormer")  # may appear in an operation order; run elsewhere

MAXIMIZE_AREA = "Maximize area"
MINIMIZE_ERROR = "Minimize error"
OBJECTIVES = (MAXIMIZE_AREA, MINIMIZE_ERROR)
FLIPS = ("Horizontal", "Vertical", "Both")
CAPTIONERS = ("Deepbooru", "BLIP")
EXISTING_CAPTION_ACTIONS = ("Ignore", "Keep", "Prepend", "Append")


class TrainingPrepError(ValidationError, ValueError):
    """An option is out of range or unknown; ``field`` names it."""


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Refuse a number outside ``[low, high]`` (or not a finite number), naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TrainingPrepError(f"{name}: must be a number", field=name)
    if not low <= value <= high:
        raise TrainingPrepError(f"{name}: must be between {low:g} and {high:g}, got {value:g}", field=name)


def check_int(name: str, value: int, low: int, high: int) -> None:
    """Refuse a value that is not a whole number in ``[low, high]``, naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TrainingPrepError(f"{name}: must be a whole number", field=name)
    check_range(name, value, low, high)


def check_choices(name: str, values: Iterable[str], choices: tuple[str, ...]) -> None:
    """Refuse any value that is not one of ``choices``, naming the field."""
    if isinstance(values, str):
        raise TrainingPrepError(f"{name}: must be a list of {', '.join(choices)}", field=name)
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise TrainingPrepError(f"{name}: unknown {unknown[0]!r}; choose from {', '.join(choices)}", field=name)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TrainingPrepError(f"{name}: unknown {value!r}; choose from {', '.join(choices)}", field=name)


@dataclass(frozen=True)
class SplitOptions:
    """Split oversized images: an image much taller (or wider) than the target is cut into overlapping pieces."""

    enable: bool = False
    split_threshold: float = 0.5
    overlap_ratio: float = 0.2

    def __post_init__(self) -> None:
        check_range("split.split_threshold", self.split_threshold, 0.0, 1.0)
        check_range("split.overlap_ratio", self.overlap_ratio, 0.0, 0.9)


@dataclass(frozen=True)
class FocalCropOptions:
    """Auto focal point crop: crop to the target size around the weighted faces / entropy / edges point."""

    enable: bool = False
    face_weight: float = 0.9
    entropy_weight: float = 0.15
    edges_weight: float = 0.5
    debug: bool = False

    def __post_init__(self) -> None:
        for name in ("face_weight", "entropy_weight", "edges_weight"):
            check_range(f"focal_crop.{name}", getattr(self, name), 0.0, 1.0)


@dataclass(frozen=True)
class AutosizedCropOptions:
    """Auto-sized crop: a centred crop to the best size found between the bounds."""

    enable: bool = False
    mindim: int = 384
    maxdim: int = 768
    minarea: int = 64 * 64
    maxarea: int = 640 * 640
    objective: str = MAXIMIZE_AREA
    threshold: float = 0.1

    def __post_init__(self) -> None:
        check_int("autosized_crop.mindim", self.mindim, 64, 2048)
        check_int("autosized_crop.maxdim", self.maxdim, 64, 2048)
        check_int("autosized_crop.minarea", self.minarea, 64 * 64, 2048 * 2048)
        check_int("autosized_crop.maxarea", self.maxarea, 64 * 64, 2048 * 2048)
        check_choice("autosized_crop.objective", self.objective, OBJECTIVES)
        check_range("autosized_crop.threshold", self.threshold, 0.0, 1.0)


@dataclass(frozen=True)
class FlipOptions:
    """Create flipped copies: one extra image per chosen flip."""

    enable: bool = False
    option: tuple[str, ...] = ("Horizontal",)

    def __post_init__(self) -> None:
        check_choices("flip.option", self.option, FLIPS)
        object.__setattr__(self, "option", tuple(self.option))


@dataclass(frozen=True)
class CaptionOptions:
    """Caption: the chosen captioners' texts, joined with ``", "``."""

    enable: bool = False
    option: tuple[str, ...] = ("Deepbooru",)

    def __post_init__(self) -> None:
        check_choices("caption.option", self.option, CAPTIONERS)
        object.__setattr__(self, "option", tuple(self.option))


_SECTION_TYPES: Mapping[str, type[Any]] = MappingProxyType({
    "split": SplitOptions, "focal_crop": FocalCropOptions, "autosized_crop": AutosizedCropOptions,
    "flip": FlipOptions, "caption": CaptionOptions,
})


def _check_target(name: str, value: int | None) -> None:
    if value is not None:
        check_int(name, value, 0, 16384)


@dataclass(frozen=True)
class TrainingPrepOptions:
    """Every training-prep option of one Extras run.

    ``target_width``/``target_height`` are the size split and focal crop aim for (A1111 takes them from the Upscale
    section, see :func:`upscale_target_size`); without them those two operations do nothing, as in A1111.
    ``existing_caption_action`` is A1111's "Action for existing captions" setting. ``operation_order`` lists
    operation names to run first, in that order, as A1111's "Postprocessing operation order" setting does (the
    names of Upscale, GFPGAN and CodeFormer may be in it too; they do not change the order of these operations).
    """

    target_width: int | None = None
    target_height: int | None = None
    split: SplitOptions = field(default_factory=SplitOptions)
    focal_crop: FocalCropOptions = field(default_factory=FocalCropOptions)
    autosized_crop: AutosizedCropOptions = field(default_factory=AutosizedCropOptions)
    flip: FlipOptions = field(default_factory=FlipOptions)
    caption: CaptionOptions = field(default_factory=CaptionOptions)
    existing_caption_action: str = "Ignore"
    operation_order: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, cls in _SECTION_TYPES.items():
            if not isinstance(getattr(self, name), cls):
                raise TrainingPrepError(f"{name}: must be {cls.__name__}", field=name)
        _check_target("target_width", self.target_width)
        _check_target("target_height", self.target_height)
        check_choice("existing_caption_action", self.existing_caption_action, EXISTING_CAPTION_ACTIONS)
        check_choices("operation_order", self.operation_order, OPERATIONS + OTHER_OPERATIONS)
        object.__setattr__(self, "operation_order", tuple(self.operation_order))

    @property
    def target_size(self) -> tuple[int, int] | None:
        """The target size, or None where A1111 would have none (missing or 0)."""
        if not self.target_width or not self.target_height:
            return None
        return self.target_width, self.target_height

    def ordered_operations(self) -> list[str]:
        """The operation names in the order A1111 runs them: ``operation_order`` first, then the default order."""
        order = self.operation_order
        rank = {name: order.index(name) for name in OPERATIONS if name in order}
        return sorted(OPERATIONS, key=lambda name: (rank.get(name, len(order)), OPERATIONS.index(name)))


_SECTIONS: Mapping[str, str] = MappingProxyType({
    SPLIT: "split", FOCAL_CROP: "focal_crop", AUTOSIZED_CROP: "autosized_crop", FLIPPED_COPIES: "flip",
    CAPTION: "caption",
})


def options_from_script_args(scripts_args: Mapping[str, Mapping[str, Any]], **settings: Any) -> TrainingPrepOptions:
    """Build the options from A1111-style script arguments: ``{"Auto focal point crop": {"enable": True, ...}}``.

    ``settings`` are the top-level fields (``target_width``, ``existing_caption_action``, ...). Unknown script
    names or control names are refused, naming them; scripts not named here (Upscale, ...) are the caller's.
    """
    sections: dict[str, Any] = {}
    for script, args in scripts_args.items():
        if script not in _SECTIONS:
            raise TrainingPrepError(f"{script}: not a training-prep operation", field=script)
        attr = _SECTIONS[script]
        cls = _SECTION_TYPES[attr]
        known = {f.name for f in fields(cls)}
        for name in args:
            if name not in known:
                raise TrainingPrepError(f"{attr}.{name}: unknown option", field=f"{attr}.{name}")
        sections[attr] = cls(**args)
    return TrainingPrepOptions(**settings, **sections)


def _limit_by_one_side(width: int, height: int, limit: int) -> tuple[int, int]:
    if height > width and height > limit:
        return limit * width // height, limit
    if width > limit:
        return limit, limit * height // width
    return width, height


def upscale_target_size(
    image_size: tuple[int, int],
    *,
    resize_mode: int,
    upscaling_resize: float,
    upscaling_resize_w: int,
    upscaling_resize_h: int,
    max_side_length: int = 0,
) -> tuple[int, int] | None:
    """The target size A1111's Upscale section hands to split and focal crop, whether or not upscaling is on.

    "Scale to" gives its width and height. "Scale by" gives the scaled size limited by ``max_side_length``; as in
    A1111 that limit is applied even when it is 0, which makes the size 0x0, so with "Scale by" and no maximum side
    the two operations do nothing (None here).
    """
    if resize_mode == 1:
        size = upscaling_resize_w, upscaling_resize_h
    else:
        width, height = int(image_size[0] * upscaling_resize), int(image_size[1] * upscaling_resize)
        size = _limit_by_one_side(width, height, max_side_length)
    return size if size[0] and size[1] else None

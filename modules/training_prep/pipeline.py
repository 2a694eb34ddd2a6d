"""One input image through the enabled training-prep operations, in A1111's order and with its bookkeeping.

Operations run one after the other over every image so far: an operation that makes new images (split pieces,
the focal crop's debug image, flipped copies) adds them at the end of the list, and later operations process them
too, except the debug image, which is passed through untouched. A new image starts without a caption. The
result lists the input's own image first, then the others in the order they were made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from PIL import Image

from modules.training_prep.captions import Captioner, caption_to_write, generate_caption
from modules.training_prep.crops import autosized_crop, flipped_copies, split_oversized
from modules.training_prep.focal import focal_crop
from modules.training_prep.options import (
    AUTOSIZED_CROP,
    CAPTION,
    FLIPPED_COPIES,
    FOCAL_CROP,
    SPLIT,
    TrainingPrepError,
    TrainingPrepOptions,
)
from modules.training_prep.points import FaceBoxes

log = logging.getLogger(__name__)

DEBUG_TAG = "focal-crop-debug"


@dataclass(frozen=True)
class PreparedImage:
    """One output: the image, the text for its caption file (None: write none) and its file-name tags."""

    image: Image.Image
    caption: str | None = None
    nametags: tuple[str, ...] = ()
    processed: bool = True  # False for the focal crop's debug image


@dataclass(frozen=True)
class Helpers:
    """What the operations may call out to: captioners by name ("Deepbooru", "BLIP") and a face detector."""

    captioners: Mapping[str, Captioner] = field(default_factory=dict)
    faces: FaceBoxes | None = None


Step = Callable[[PreparedImage, TrainingPrepOptions, Helpers], list[PreparedImage]]


def _copy(item: PreparedImage, image: Image.Image, *tags: str, processed: bool = True) -> PreparedImage:
    return PreparedImage(image, None, item.nametags + tags, processed)


def _split(item: PreparedImage, opts: TrainingPrepOptions, _h: Helpers) -> list[PreparedImage]:
    if opts.target_size is None:
        return [item]
    s = opts.split
    first, *rest = split_oversized(item.image, *opts.target_size, threshold=s.split_threshold,
                                   overlap_ratio=s.overlap_ratio)
    return [replace(item, image=first), *(_copy(item, piece) for piece in rest)]


def _focal(item: PreparedImage, opts: TrainingPrepOptions, helpers: Helpers) -> list[PreparedImage]:
    if opts.target_size is None:
        return [item]
    f = opts.focal_crop
    result = focal_crop(item.image, *opts.target_size, face_weight=f.face_weight, entropy_weight=f.entropy_weight,
                        edges_weight=f.edges_weight, debug=f.debug, faces=helpers.faces)
    out = [replace(item, image=result.image)]
    if result.debug_image is not None:
        out.append(_copy(item, result.debug_image, DEBUG_TAG, processed=False))
    return out


def _autosize(item: PreparedImage, opts: TrainingPrepOptions, _h: Helpers) -> list[PreparedImage]:
    a = opts.autosized_crop
    cropped = autosized_crop(item.image, mindim=a.mindim, maxdim=a.maxdim, minarea=a.minarea, maxarea=a.maxarea,
                             objective=a.objective, threshold=a.threshold)
    if cropped is None:
        log.info("auto-sized crop skipped a %dx%d image: no size within the error threshold", *item.image.size)
        return [item]
    return [replace(item, image=cropped)]


def _flip(item: PreparedImage, opts: TrainingPrepOptions, _h: Helpers) -> list[PreparedImage]:
    return [item, *(_copy(item, copy) for copy in flipped_copies(item.image, opts.flip.option))]


def _caption(item: PreparedImage, opts: TrainingPrepOptions, helpers: Helpers) -> list[PreparedImage]:
    text = generate_caption(item.image, opts.caption.option, helpers.captioners, start=item.caption)
    return [replace(item, caption=text)]


STEPS: Mapping[str, tuple[str, Step]] = MappingProxyType({
    SPLIT: ("split", _split),
    FOCAL_CROP: ("focal_crop", _focal),
    AUTOSIZED_CROP: ("autosized_crop", _autosize),
    FLIPPED_COPIES: ("flip", _flip),
    CAPTION: ("caption", _caption),
})


def _apply(step: Step, items: list[PreparedImage], opts: TrainingPrepOptions, helpers: Helpers) -> None:
    """Run one operation over the images so far; each image is replaced in place, new ones go at the end."""
    for i in range(len(items)):
        if not items[i].processed:
            continue
        first, *made = step(items[i], opts, helpers)
        items[i] = first
        items.extend(made)


def _check_captioners(options: TrainingPrepOptions, helpers: Helpers) -> None:
    if not options.caption.enable:
        return
    for name in options.caption.option:
        if name not in helpers.captioners:
            raise TrainingPrepError(f"caption.option: the {name} captioner is not available", field="caption.option")


def run_detailed(
    image: Image.Image,
    caption: str | None,
    options: TrainingPrepOptions,
    *,
    captioners: Mapping[str, Captioner] | None = None,
    faces: FaceBoxes | None = None,
) -> list[PreparedImage]:
    """Every output of one input image, with its caption-file text and name tags (see :func:`run`)."""
    if not isinstance(options, TrainingPrepOptions):
        raise TypeError("options must be TrainingPrepOptions")
    helpers = Helpers(dict(captioners or {}), faces)
    _check_captioners(options, helpers)
    items = [PreparedImage(image)]
    for name in options.ordered_operations():
        attr, step = STEPS[name]
        if getattr(options, attr).enable:
            _apply(step, items, options, helpers)
    action = options.existing_caption_action
    return [replace(item, caption=caption_to_write(item.caption, caption, action)) for item in items]


def run(
    image: Image.Image,
    caption: str | None,
    options: TrainingPrepOptions,
    *,
    captioners: Mapping[str, Captioner] | None = None,
    faces: FaceBoxes | None = None,
) -> list[tuple[Image.Image, str | None]]:
    """The input image through the enabled operations: [(image, caption-file text or None), ...].

    ``caption`` is the input's existing caption (e.g. :func:`read_caption` of its path), combined with each
    generated caption by ``options.existing_caption_action``; with None each output's text is the generated caption
    alone, and a caller may instead combine it with the file beside each output (:func:`caption_to_write`), as A1111
    does when it saves. Outputs the Caption operation did not caption (it is off, or the debug image) get None.
    ``captioners`` maps "Deepbooru"/"BLIP" to a function giving an image's caption; ``faces`` gives face boxes.
    """
    return [(p.image, p.caption) for p in run_detailed(image, caption, options, captioners=captioners, faces=faces)]


def name_suffixes(outputs: list[PreparedImage]) -> list[str]:
    """File-name suffixes for the outputs of one input: "-tag-tag" from the name tags, made unique with "-1", ...

    The first output with no tags gets "" (it keeps the input's name).
    """
    used: set[str] = set()
    suffixes = []
    for item in outputs:
        base = "".join(f"-{tag}" for tag in item.nametags)
        suffix = next((s for s in _candidates(base) if s not in used), base)
        used.add(suffix)
        suffixes.append(suffix)
    return suffixes


def _candidates(base: str) -> list[str]:
    return [base, *(f"{base}-{n}" for n in range(1, 100))]

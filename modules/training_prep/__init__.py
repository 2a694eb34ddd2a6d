"""Postprocessing for training: A1111's Extras operations that turn photos into a training set.

Split oversized images, auto focal point crop, auto-sized crop, flipped copies and captions, as pure functions over
PIL images (only the caption helpers read a ``.txt`` beside an input), plus :func:`run`, which applies an option
set (:class:`TrainingPrepOptions`) to one image in A1111's order.
"""

from modules.training_prep.captions import (
    Captioner,
    CaptionFileError,
    caption_path,
    caption_to_write,
    generate_caption,
    read_caption,
)
from modules.training_prep.crops import (
    aspect_error,
    autosized_crop,
    autosized_size,
    center_crop,
    center_crop_box,
    flipped_copies,
    split_oversized,
    split_ratio,
)
from modules.training_prep.focal import FocalCropResult, focal_crop, scale_for_target
from modules.training_prep.options import (
    OPERATIONS,
    AutosizedCropOptions,
    CaptionOptions,
    FlipOptions,
    FocalCropOptions,
    SplitOptions,
    TrainingPrepError,
    TrainingPrepOptions,
    options_from_script_args,
    upscale_target_size,
)
from modules.training_prep.pipeline import PreparedImage, name_suffixes, run, run_detailed
from modules.training_prep.points import FaceBox, FaceBoxes, Point, edge_points, entropy_point, face_points

__all__ = [
    "OPERATIONS",
    "AutosizedCropOptions",
    "CaptionFileError",
    "CaptionOptions",
    "Captioner",
    "FaceBox",
    "FaceBoxes",
    "FlipOptions",
    "FocalCropOptions",
    "FocalCropResult",
    "Point",
    "PreparedImage",
    "SplitOptions",
    "TrainingPrepError",
    "TrainingPrepOptions",
    "aspect_error",
    "autosized_crop",
    "autosized_size",
    "caption_path",
    "caption_to_write",
    "center_crop",
    "center_crop_box",
    "edge_points",
    "entropy_point",
    "face_points",
    "flipped_copies",
    "focal_crop",
    "generate_caption",
    "name_suffixes",
    "options_from_script_args",
    "read_caption",
    "run",
    "run_detailed",
    "scale_for_target",
    "split_oversized",
    "split_ratio",
    "upscale_target_size",
]

"""The Extras steps after upscaling, in A1111's order: GFPGAN, then CodeFormer (each blended over the image at its
visibility), then the training preparation (split, focal crop, auto-sized crop, flipped copies, captions), which
may turn one image into several, each with its caption-file text and file-name suffix."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from modules.errors import ValidationError
from modules.faces.restorers import CODEFORMER, GFPGAN, FaceRestorers, blend_visibility
from modules.generation.control import JobControl
from modules.training_prep import TrainingPrepOptions, read_caption, upscale_target_size
from modules.training_prep.pipeline import PreparedImage, name_suffixes, run_detailed

Captioner = Callable[[Image.Image], str]


@dataclass(frozen=True)
class Output:
    """One image an input gave: the image, its caption-file text (None: none written), its file-name suffix."""

    image: Image.Image
    caption: str | None = None
    suffix: str = ""


@dataclass(frozen=True)
class ExtrasTools:
    """What Extras runs with besides the upscalers: the face restorers and the captioners by name."""

    faces: FaceRestorers | None = None
    captioners: Mapping[str, Captioner] = field(default_factory=dict)


def check_faces(faces: FaceRestorers | None, gfpgan: float, codeformer: float, weight: float) -> None:
    """Refuse, naming the field and the file to install, a face restorer asked for but not installed."""
    if not 0 <= weight <= 1:
        raise ValidationError("codeformer_weight: must be between 0 and 1", field="codeformer_weight")
    installed = faces.names() if faces is not None else []
    for name, visibility, field_name, folder in ((GFPGAN, gfpgan, "gfpgan_visibility", "models/GFPGAN"),
                                                  (CODEFORMER, codeformer, "codeformer_visibility",
                                                   "models/Codeformer")):
        if not 0 <= visibility <= 1:
            raise ValidationError(f"{field_name}: must be between 0 and 1", field=field_name)
        if visibility > 0 and name not in installed:
            raise ValidationError(f"{field_name}: {name} is not installed; place its weights file in {folder}",
                                  field=field_name)


def restore(tools: ExtrasTools, image: Image.Image, gfpgan: float, codeformer: float, weight: float,
            control: JobControl, info: dict[str, object]) -> Image.Image:
    """GFPGAN then CodeFormer over ``image`` at their visibilities (A1111's Extras), entries added to ``info``."""
    for name, visibility in ((GFPGAN, gfpgan), (CODEFORMER, codeformer)):
        if visibility <= 0 or tools.faces is None or control.should_stop():
            continue
        control.update(phase=f"restoring faces with {name}")
        result = tools.faces.restore(image, name, codeformer_weight=weight, cancel=control.should_stop)
        if result.warning:
            control.warn(result.warning)
        image = blend_visibility(image, result.image, visibility)
        info[f"{name} visibility"] = round(visibility, 3)
        if name == CODEFORMER:
            info["CodeFormer weight"] = round(weight, 3)
    return image


def training_outputs(tools: ExtrasTools, options: TrainingPrepOptions | None, image: Image.Image,
                     source_size: tuple[int, int], target: Mapping[str, object],
                     source: Path | None = None) -> list[Output]:
    """The training preparation of one (upscaled, restored) image. Split and focal crop aim for the size the
    Upscale fields ``target`` give the source image (of ``source_size``), as in A1111. A generated caption is
    combined with the source file's own caption (the ``.txt`` beside it) by the "existing caption" action; the
    outputs are new files, so the caption beside the source stands for the one A1111 finds beside its output."""
    if options is None:
        return [Output(image)]
    size = upscale_target_size(source_size, **target)  # type: ignore[arg-type]
    if size is not None:
        options = replace(options, target_width=size[0], target_height=size[1])
    existing = read_caption(source) if source is not None and options.caption.enable else None
    faces = tools.faces.face_boxes if tools.faces is not None and options.focal_crop.enable else None
    prepared: list[PreparedImage] = run_detailed(image, existing, options, captioners=tools.captioners,
                                                 faces=faces)
    return [Output(p.image, p.caption, suffix) for p, suffix in zip(prepared, name_suffixes(prepared), strict=True)]

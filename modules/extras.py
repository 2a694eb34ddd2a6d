"""Extras: upscaling finished images, as A1111's postprocessing does for its Extras tab and ``extra-*`` API routes.

Each image is upscaled by a factor ("scale by") or to a size ("scale to": the factor that covers the size, then
optionally a centred crop to it), with Upscaler 1, and Upscaler 2 blended over it at its visibility. The image's own
text chunks (its generation parameters) are kept and a ``postprocessing`` entry lists what was done, with A1111's
keys (``Postprocess upscale by``, ``Postprocess upscaler``, ``GFPGAN visibility``, ...). Faces are restored with
GFPGAN and CodeFormer after upscaling, then the training preparation may make several images of each
(:mod:`modules.extras_steps`).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from modules import images as image_utils
from modules.errors import ValidationError
from modules.extras_steps import ExtrasTools, check_faces, restore, training_outputs
from modules.generation.control import JobControl
from modules.infotext import quote
from modules.training_prep import TrainingPrepOptions
from modules.upscalers.registry import UpscalerError, UpscalerRegistry

MAX_OUTPUT_SIDE = 16384
TEXT_KEYS_SKIPPED = ("postprocessing",)


@dataclass(frozen=True)
class ExtrasRequest:
    """One Extras run: the images (name, image) and A1111's postprocessing fields."""

    images: tuple[tuple[str, Image.Image], ...] = ()
    input_paths: tuple[Path, ...] = ()  # Batch from Directory: files read one at a time as they are processed
    show_results: bool = True  # False: the directory batch's images are saved but not returned
    resize_mode: int = 0  # 0: scale by upscaling_resize; 1: scale to upscaling_resize_w x upscaling_resize_h
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscale_first: bool = False  # ignored, as in A1111 1.10: upscaling always runs before face restoration
    max_side_length: int = 0
    training: TrainingPrepOptions | None = None  # the training preparation steps (the Extras tab)


@dataclass(frozen=True)
class ExtrasImage:
    name: str
    png: bytes
    postprocessing: str
    path: Path | None = None  # where it was saved
    caption: str | None = None  # the caption file's text (training preparation)


# (image, text chunks, source name, file-name suffix, caption) -> the file written (and its caption file beside it)
Save = Callable[[Image.Image, Mapping[str, str], str, str, str | None], Path]


@dataclass(frozen=True)
class ExtrasResult:
    images: tuple[ExtrasImage, ...]
    interrupted: bool = False
    skipped: tuple[tuple[str, str], ...] = ()  # (file name, why) for the directory batch's unreadable files
    saved: tuple[Path, ...] = ()  # every file written (also when the images are not returned)
    last_postprocessing: str = ""  # the last image's postprocessing text (also when it is not returned)
    warnings: tuple[str, ...] = ()

    @property
    def html_info(self) -> str:
        """A1111's ``html_info``: the last image's postprocessing text as HTML."""
        text = self.last_postprocessing
        return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def validate_extras(req: ExtrasRequest, upscalers: UpscalerRegistry, tools: ExtrasTools | None = None) -> None:
    """Refuse, naming the field, what cannot run (before the job is queued)."""
    if not req.images and not req.input_paths:
        raise ValidationError("image: no image given", field="image")
    if req.resize_mode not in (0, 1):
        raise ValidationError("resize_mode: must be 0 (scale by) or 1 (scale to)", field="resize_mode")
    if req.resize_mode == 0 and not 0 < req.upscaling_resize <= 8:
        raise ValidationError("upscaling_resize: must be above 0 and at most 8", field="upscaling_resize")
    if req.resize_mode == 1:
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            if not 1 <= getattr(req, name) <= MAX_OUTPUT_SIDE:
                raise ValidationError(f"{name}: must be between 1 and {MAX_OUTPUT_SIDE}", field=name)
    if not 0 <= req.extras_upscaler_2_visibility <= 1:
        raise ValidationError("extras_upscaler_2_visibility: must be between 0 and 1",
                              field="extras_upscaler_2_visibility")
    if req.max_side_length < 0:
        raise ValidationError("max_side_length: must not be negative", field="max_side_length")
    for field in ("upscaler_1", "upscaler_2"):
        name = getattr(req, field)
        if name not in (None, "", "None") and upscalers.find(name) is None:
            raise ValidationError(f"{field}: unknown upscaler {name!r}; available: {', '.join(upscalers.names())}",
                                  field=field)
    tools = tools or ExtrasTools()
    check_faces(tools.faces, req.gfpgan_visibility, req.codeformer_visibility, req.codeformer_weight)
    if req.training is not None and req.training.caption.enable:
        for name in req.training.caption.option:
            if name not in tools.captioners:
                raise ValidationError(f"Caption: the {name} captioner is not available", field="caption")
    for name, image in req.images:
        _check_output_size(req, image, name)


def _target(req: ExtrasRequest, image: Image.Image) -> tuple[float, int, int, bool, dict[str, object]]:
    """(factor, target width, target height, crop, postprocessing entries) for one image."""
    info: dict[str, object] = {}
    mode, crop = req.resize_mode, req.upscaling_crop
    width, height = req.upscaling_resize_w, req.upscaling_resize_h
    if mode == 1:
        factor = max(width / image.width, height / image.height)
        info["Postprocess upscale to"] = f"{width}x{height}"
    else:
        factor = req.upscaling_resize
        info["Postprocess upscale by"] = factor
        side = max(image.size) * factor
        if req.max_side_length and side > req.max_side_length:  # the longer side limited, the aspect kept
            ratio = req.max_side_length / max(image.size)
            width, height = round(image.width * ratio), round(image.height * ratio)
            factor, crop, mode = max(width / image.width, height / image.height), False, 1
            info["Max side length"] = req.max_side_length
    return factor, width, height, crop and mode == 1, info


def _check_output_size(req: ExtrasRequest, image: Image.Image, name: str) -> None:
    factor = _target(req, image)[0]
    if max(image.size) * factor > MAX_OUTPUT_SIDE:
        raise ValidationError(f"{name or 'image'}: the result would exceed {MAX_OUTPUT_SIDE} pixels per side",
                              field="upscaling_resize")


def _upscale(upscalers: UpscalerRegistry, image: Image.Image, name: str, factor: float, width: int, height: int,
             crop: bool, control: JobControl) -> Image.Image:
    def on_tile(done: int, total: int) -> bool:
        control.update(phase=f"upscaling with {name}: tile {done} of {total}")
        return not control.should_stop()

    try:
        out = upscalers.upscale(image, name, factor, on_tile)
    except UpscalerError as exc:
        raise ValidationError(str(exc), field="upscaler_1") from None
    if crop:
        cropped = Image.new("RGB", (width, height))
        cropped.paste(out, (width // 2 - out.width // 2, height // 2 - out.height // 2))
        out = cropped
    return out


def postprocess(upscalers: UpscalerRegistry, req: ExtrasRequest, image: Image.Image, control: JobControl,
                tools: ExtrasTools | None = None) -> tuple[Image.Image, dict[str, object]]:
    """One image through the upscalers, then the face restorers; (the result, its postprocessing entries)."""
    image, info = _upscale_step(upscalers, req, image.convert("RGB"), control)
    image = restore(tools or ExtrasTools(), image, req.gfpgan_visibility, req.codeformer_visibility,
                    req.codeformer_weight, control, info)
    return image, info


def _upscale_step(upscalers: UpscalerRegistry, req: ExtrasRequest, image: Image.Image,
                  control: JobControl) -> tuple[Image.Image, dict[str, object]]:
    if req.upscaler_1 in (None, "", "None"):
        return image, {}
    factor, width, height, crop, info = _target(req, image)
    first = _upscale(upscalers, image, req.upscaler_1, factor, width, height, crop, control)
    if crop:
        info["Postprocess crop to"] = f"{first.width}x{first.height}"
    info["Postprocess upscaler"] = req.upscaler_1
    if req.upscaler_2 not in (None, "", "None") and req.extras_upscaler_2_visibility > 0:
        second = _upscale(upscalers, image, req.upscaler_2, factor, width, height, crop, control)
        first = Image.blend(first, second.convert(first.mode), req.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = req.upscaler_2
    return first, info


def postprocessing_text(info: Mapping[str, object]) -> str:
    return ", ".join(key if key == value else f"{key}: {quote(value)}" for key, value in info.items()
                     if value is not None)


def _text_chunks(image: Image.Image) -> dict[str, str]:
    return {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)
            and k not in TEXT_KEYS_SKIPPED}


def _read(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        out = image.copy()
    out.info = dict(image.info)
    return out


def _sources(req: ExtrasRequest, skipped: list[tuple[str, str]]
             ) -> Iterator[tuple[str, Image.Image, Path | None]]:
    """(name, image, its file) for the request's images, then its directory's files read one at a time (one that
    cannot be read is noted in ``skipped`` and passed over, as A1111 does)."""
    for name, image in req.images:
        yield name, image, None
    for path in req.input_paths:
        try:
            image = _read(path)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            skipped.append((path.name, f"not an image: {type(exc).__name__}"))
            continue
        try:
            _check_output_size(req, image, path.name)
        except ValidationError as exc:
            skipped.append((path.name, str(exc)))
            continue
        yield path.name, image, path


def _target_fields(req: ExtrasRequest) -> dict[str, object]:
    return {"resize_mode": req.resize_mode, "upscaling_resize": req.upscaling_resize,
            "upscaling_resize_w": req.upscaling_resize_w, "upscaling_resize_h": req.upscaling_resize_h,
            "max_side_length": req.max_side_length}


def run_extras(upscalers: UpscalerRegistry, req: ExtrasRequest, control: JobControl | None = None,
               save: Save | None = None, tools: ExtrasTools | None = None) -> ExtrasResult:
    """Every image of the request through :func:`postprocess` and the training preparation, as PNGs keeping their
    text chunks (and saved with ``save`` when given; it gets the source's file name too, for "use original
    name", and the output's suffix and caption)."""
    control = control or JobControl()
    tools = tools or ExtrasTools()
    out: list[ExtrasImage] = []
    text = ""
    saved: list[Path] = []
    skipped: list[tuple[str, str]] = []
    total = len(req.images) + len(req.input_paths)
    control.update(job_count=total, job_no=0)
    for number, (name, image, source) in enumerate(_sources(req, skipped)):
        if control.should_stop():
            break
        control.update(job_no=number, phase=f"image {number + 1} of {total}" if total > 1 else "upscaling")
        result, info = postprocess(upscalers, req, image, control, tools)
        text = postprocessing_text(info)
        chunks: dict[str, Any] = {**_text_chunks(image), **({"postprocessing": text} if text else {})}
        for output in training_outputs(tools, req.training, result, image.size, _target_fields(req), source):
            path = save(output.image, chunks, name, output.suffix, output.caption) if save is not None else None
            if path is not None:
                saved.append(path)
            if req.show_results or not req.input_paths:
                png = image_utils.encode_image(output.image, "png", None, extra_text=chunks)
                out.append(ExtrasImage(name, png, text, path, output.caption))
    control.update(job_no=total, phase="done")
    return ExtrasResult(tuple(out), interrupted=control.interrupted, skipped=tuple(skipped), saved=tuple(saved),
                        last_postprocessing=text, warnings=tuple(control.warnings))

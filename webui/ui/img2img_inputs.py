"""What the img2img tab's image components hand over, turned into an init image and a mask for each mode.

Values come as gradio gives them (PIL images, the ImageEditor's ``{"background", "layers", "composite"}`` dict),
or as tests give them (PIL, numpy arrays, file paths). An upload that could not be decoded arrives as
:class:`UnreadableImage`; every problem becomes a :class:`~modules.errors.ValidationError` with a message for the
user, raised before anything is queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageEnhance, ImageFilter, UnidentifiedImageError

from modules.errors import ValidationError
from modules.generation.image_prep import binary_mask

MODES: tuple[str, ...] = ("img2img", "Sketch", "Inpaint", "Inpaint sketch", "Inpaint upload", "Batch")
MODE_TAB_IDS: tuple[str, ...] = ("img2img_tab", "sketch_tab", "inpaint_tab", "inpaint_sketch_tab",
                                 "inpaint_upload_tab", "batch_tab")
IMAGE_FIELDS = ("init_img", "sketch", "init_img_with_mask", "inpaint_color_sketch", "init_img_inpaint")
INPAINT_MODES = (2, 3, 4)  # modes whose inpaint controls are shown (A1111's rule)
BATCH = 5


class UnreadableImage:
    """Stands for an uploaded file that is not a readable image (set by the tab's image components)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"UnreadableImage({self.reason!r})"


def mode_index(mode: Any) -> int:
    """The mode's index from its tab label, its tab id or the index itself."""
    if isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode < len(MODES):
        return mode
    for names in (MODES, MODE_TAB_IDS):
        if mode in names:
            return names.index(mode)
    raise ValidationError(f"unknown img2img mode {mode!r}", field="mode")


def load_image(value: Any, what: str) -> Image.Image | None:
    """A PIL image from a component value; ``None`` when nothing was given."""
    if value is None:
        return None
    if isinstance(value, UnreadableImage):
        raise ValidationError(f"{what}: the uploaded file is not an image that can be read ({value.reason})",
                              field=what)
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        try:
            return Image.fromarray(value)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"{what}: unsupported image array ({exc})", field=what) from None
    if isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if isinstance(value, (str, Path)):
        try:
            with Image.open(value) as image:
                image.load()
                return image
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ValidationError(f"{what}: {Path(value).name} is not an image that can be read "
                                  f"({type(exc).__name__})", field=what) from None
    raise ValidationError(f"{what}: unsupported value of type {type(value).__name__}", field=what)


def editor_images(value: Any, what: str) -> tuple[Image.Image | None, list[Image.Image], Image.Image | None]:
    """(background, drawn layers, composite) of an ImageEditor value."""
    if value is None:
        return None, [], None
    if isinstance(value, UnreadableImage) or not isinstance(value, dict):
        image = load_image(value, what)  # a plain image stands for a background with nothing drawn
        return image, [], image
    layers = [load_image(layer, what) for layer in value.get("layers") or []]
    return (load_image(value.get("background"), what), [x for x in layers if x is not None],
            load_image(value.get("composite"), what))


def layers_mask(layers: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    """White where anything was painted on any layer (its alpha above half, as A1111 binarises masks)."""
    mask = Image.new("L", size, 0)
    for layer in layers:
        if layer.mode in ("RGBA", "LA", "PA", "P"):
            alpha = layer.convert("RGBA").getchannel("A")
        else:  # no alpha: painted means not black
            alpha = layer.convert("L")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        mask = ImageChops.lighter(mask, alpha)
    return mask.point(lambda v: 255 if v > 128 else 0)


def _require(image: Image.Image | None, message: str, field: str) -> Image.Image:
    if image is None:
        raise ValidationError(message, field=field)
    return image


def _check_mask(mask: Image.Image, invert: bool) -> None:
    if not invert and binary_mask(mask).getbbox() is None:
        raise ValidationError("the mask is empty: paint over the part of the image to regenerate "
                              "(or choose \"Inpaint not masked\")", field="mask")


def mode_inputs(mode: int, v: dict[str, Any]) -> tuple[Image.Image, Image.Image | None]:
    """(init image, mask or None) of a non-batch mode, from the form values ``v``."""
    invert = str(v.get("inpainting_mask_invert")) in ("1", "True", "Inpaint not masked")
    if mode == 0:
        image = load_image(v.get("init_img"), "img2img image")
        return _require(image, "Upload an image in the img2img tab first", "init_img"), None
    if mode == 1:
        bg, _, comp = editor_images(v.get("sketch"), "Sketch image")
        image = _require(bg, "Upload an image in the Sketch tab first", "sketch")
        return comp or image, None
    if mode == 2:
        bg, layers, comp = editor_images(v.get("init_img_with_mask"), "Inpaint image")
        image = _require(bg, "Upload an image in the Inpaint tab first", "init_img_with_mask")
        mask = layers_mask(layers, image.size)
        _check_mask(mask, invert)
        return image, mask
    if mode == 3:
        bg, layers, comp = editor_images(v.get("inpaint_color_sketch"), "Inpaint sketch image")
        orig = _require(bg, "Upload an image in the Inpaint sketch tab first", "inpaint_color_sketch")
        sketch = (comp or orig).convert("RGB")
        mask = layers_mask(layers, orig.size)
        _check_mask(mask, invert)
        return sketch_over(orig, sketch, mask, float(v.get("mask_alpha") or 0), float(v.get("mask_blur") or 0)), mask
    if mode == 4:
        image = load_image(v.get("init_img_inpaint"), "Inpaint upload image")
        image = _require(image, "Upload an image in the Inpaint upload tab first", "init_img_inpaint")
        mask = _require(load_image(v.get("init_mask_inpaint"), "Inpaint upload mask"),
                        "Upload a mask in the Inpaint upload tab (white = the part to regenerate)", "init_mask_inpaint")
        _check_mask(mask, invert)
        return image, mask
    raise ValidationError("the Batch mode has no single init image", field="mode")


def sketch_over(orig: Image.Image, sketch: Image.Image, mask: Image.Image, mask_alpha: float,
                blur: float) -> Image.Image:
    """Inpaint sketch's init image: the colour strokes over the original, blurred at their edges and made
    ``mask_alpha`` percent transparent (A1111's "Mask transparency")."""
    orig = orig.convert("RGB")
    if sketch.size != orig.size:
        sketch = sketch.resize(orig.size, Image.Resampling.LANCZOS)
    weight = ImageEnhance.Brightness(mask).enhance(1 - max(0.0, min(mask_alpha, 100.0)) / 100)
    if blur > 0:
        sketch, weight = sketch.filter(ImageFilter.GaussianBlur(blur)), weight.filter(ImageFilter.GaussianBlur(blur))
    return Image.composite(sketch, orig, weight)


def scaled_size(image: Image.Image | tuple[int, int], scale: float) -> tuple[int, int]:
    """"Resize by": the image's size times ``scale``, rounded down to multiples of 8 (A1111's rule)."""
    w, h = image.size if isinstance(image, Image.Image) else image
    width, height = int(w * scale), int(h * scale)
    return width - width % 8, height - height % 8


def scale_html(size: tuple[int, int] | None, scale: Any) -> str:
    """The "Resize by" tab's line: from the image's size to the size that will be generated."""
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        return ""
    if size is None:
        return '<div class="sd-info">resize: upload an image to see the resulting size</div>'
    w, h = scaled_size(size, scale)
    return (f'<div class="sd-info">resize: from <b>{size[0]}x{size[1]}</b> to <b>{w}x{h}</b></div>')


def image_size(value: Any) -> tuple[int, int] | None:
    """The size of an image component's image (an editor's background); ``None`` when there is none."""
    try:
        bg, _, _ = editor_images(value, "image")
    except ValidationError:
        return None
    return bg.size if bg is not None else None


def remember_size(sizes: dict[str, Any] | None, key: str, value: Any) -> dict[str, Any]:
    """``sizes`` (image field -> [w, h]) with the size of ``value`` for ``key``, or without it."""
    out = dict(sizes or {})
    size = image_size(value)
    if size is None:
        out.pop(key, None)
    else:
        out[key] = list(size)
    return out


def size_for_mode(sizes: dict[str, Any] | None, mode: Any) -> tuple[int, int] | None:
    """The remembered image size of the current mode (``None`` for Batch or when there is no image)."""
    try:
        index = mode_index(mode)
    except ValidationError:
        return None
    size = (sizes or {}).get(IMAGE_FIELDS[index]) if index < len(IMAGE_FIELDS) else None
    return (int(size[0]), int(size[1])) if size else None


def gallery_image(gallery: Any, results: dict[str, Any] | None) -> Image.Image | None:
    """The image selected in a txt2img gallery (the first real image, not the grid, when none is selected)."""
    items = list(gallery or [])
    if not items:
        return None
    grid = bool(results and results.get("grid"))
    index = int((results or {}).get("selected", 0) or 0)
    if grid:
        index = max(index - 1, 0)
        items = items[1:] or items
    item = items[min(index, len(items) - 1)]
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, dict):
        item = item.get("image", item)
    if hasattr(item, "path") and not isinstance(item, (str, Path)):
        item = item.path
    try:
        return load_image(item, "gallery image")
    except ValidationError:
        return None

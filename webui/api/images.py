"""Images in API requests: data URLs or raw base64, decoded with bounds; URLs are never fetched."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from modules.errors import ValidationError

MAX_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 8192 * 8192
MAX_TOTAL_PIXELS = 2 * MAX_PIXELS  # one image of the largest size and its mask


def _raw(data: str, field: str) -> bytes:
    """The bytes of a data URL or raw base64 string, bounded; ValidationError if it is neither."""
    if not isinstance(data, str) or not data.strip():
        raise ValidationError(f"{field}: empty image", field=field)
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise ValidationError(f"{field}: images are not fetched from URLs; send the image as base64", field=field)
    if text.startswith("data:"):
        text = text.split(",", 1)[1] if "," in text else ""
    if len(text) > MAX_BYTES * 4 // 3 + 4:
        raise ValidationError(f"{field}: image larger than {MAX_BYTES // (1024 * 1024)} MB", field=field)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise ValidationError(f"{field}: not valid base64", field=field) from None


def _unreadable(field: str, exc: BaseException) -> ValidationError:
    return ValidationError(f"{field}: not a readable image ({type(exc).__name__})", field=field)


_READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
                Image.DecompressionBombWarning)


def open_image(data: str, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image in ``data`` (``data:image/...;base64,...`` or raw base64), its header read and its size checked,
    its pixels not decoded yet; ValidationError if it is not an image or is too large."""
    raw = _raw(data, field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
    except _READ_ERRORS as exc:
        raise _unreadable(field, exc) from None
    if image.width <= 0 or image.height <= 0:
        raise ValidationError(f"{field}: the image has no pixels", field=field)
    if image.width * image.height > max_pixels:
        raise ValidationError(f"{field}: {image.width}x{image.height} pixels is too large", field=field)
    return image


def load_image(image: Image.Image, field: str) -> Image.Image:
    """Decode the pixels of an :func:`open_image` result; ValidationError if they cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except _READ_ERRORS as exc:
        raise _unreadable(field, exc) from None
    return image


def decode_images(named: list[tuple[str, str]], max_total_pixels: int = MAX_TOTAL_PIXELS) -> list[Image.Image]:
    """Images given as ``(field, data)``: every header is read and every size checked, then the request's total
    size, before any image is decoded."""
    opened = [(field, open_image(data, field)) for field, data in named]
    total = sum(image.width * image.height for _, image in opened)
    if total > max_total_pixels:
        field = named[0][0].split("[")[0] if named else "init_images"
        raise ValidationError(f"{field}: the images hold {total / 1e6:.0f} megapixels together; at most "
                              f"{max_total_pixels / 1e6:.0f} are accepted in one request", field=field)
    return [load_image(image, field) for field, image in opened]


def decode_image(data: str, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image in ``data``, fully loaded; ValidationError if it is not a readable image of a bounded size."""
    return load_image(open_image(data, field, max_pixels), field)

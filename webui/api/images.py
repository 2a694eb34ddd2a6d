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


def decode_image(data: str, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image in ``data`` (``data:image/...;base64,...`` or raw base64), fully loaded; ValidationError if not."""
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
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise ValidationError(f"{field}: not valid base64", field=field) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > max_pixels:
                raise ValidationError(f"{field}: {image.width}x{image.height} pixels is too large", field=field)
            image.load()
    except ValidationError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ValidationError(f"{field}: not a readable image ({type(exc).__name__})", field=field) from None
    return image

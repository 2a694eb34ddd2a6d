"""Image encoding with embedded infotext, reading it back, and A1111's image grid.

PNG stores the infotext in a ``parameters`` text chunk; JPEG and WebP in the EXIF ``UserComment`` (piexif's
"unicode" form), as A1111's ``save_image_with_geninfo`` does, so A1111's PNG Info reads our files and vice versa.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import piexif
import piexif.helper
from PIL import Image, PngImagePlugin

FORMATS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")
MAX_SIDE: Mapping[str, int] = {"jpg": 65535, "jpeg": 65535, "webp": 16383}
PARAMETERS_KEY = "parameters"
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})
_EXIF_USER_COMMENT = 0x9286
_EXIF_IFD = 0x8769


class ImageFormatLimitError(ValueError):
    """The image (or its metadata) does not fit the format's limits; the caller may fall back to PNG."""


def _normalise_format(fmt: str) -> str:
    name = fmt.lower().lstrip(".")
    if name not in FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return name


def _is_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _add_png_text(info: PngImagePlugin.PngInfo, key: str, value: str) -> None:
    if not (1 <= len(key) <= 79) or not _is_latin1(key) or "\x00" in key:
        raise ValueError(f"invalid PNG text key {key!r}")
    if _is_latin1(value):
        info.add_text(key, value)  # tEXt
    else:
        info.add_itxt(key, value, lang="", tkey="", zip=False)  # iTXt, UTF-8


def _to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit greyscale to 8-bit L (scaled, not clipped); other images unchanged."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image).astype(np.int64)
        if image.mode != "I" or array.max(initial=0) > 255:
            array = array >> 8
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L")
    return image


def _exif_user_comment(text: str) -> bytes:
    comment = piexif.helper.UserComment.dump(text, encoding="unicode")
    exif: bytes = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}})
    return exif


def encode_image(image: Image.Image, fmt: str, infotext: str | None, quality: int = 95,
                 extra_text: Mapping[str, str] | None = None) -> bytes:
    """The encoded file bytes of ``image`` with ``infotext`` embedded.

    fmt: png, jpg, jpeg or webp (any case); other values raise ``ValueError``.
    PNG: ``parameters`` as tEXt when Latin-1 encodable, else iTXt (UTF-8); ``extra_text`` items as further text
    chunks (a ``parameters`` item there is ignored when ``infotext`` is given). JPEG/WebP: EXIF UserComment, piexif
    "unicode" encoding (``extra_text`` is not stored). JPEG drops alpha (RGBA/LA/P -> RGB); WebP keeps it.
    Raises :class:`ImageFormatLimitError` (a ``ValueError``) when a side exceeds 65535 (JPEG) / 16383 (WebP) px or the
    EXIF block does not fit a JPEG segment.
    """
    name = _normalise_format(fmt)
    limit = MAX_SIDE.get(name)
    if limit is not None and max(image.size) > limit:
        raise ImageFormatLimitError(f"{image.width}x{image.height} exceeds the {name.upper()} limit of {limit} px")

    buffer = io.BytesIO()
    if name == "png":
        pnginfo = PngImagePlugin.PngInfo()
        if infotext is not None:
            _add_png_text(pnginfo, PARAMETERS_KEY, infotext)
        for key, value in (extra_text or {}).items():
            if key == PARAMETERS_KEY and infotext is not None:
                continue
            _add_png_text(pnginfo, key, str(value))
        if image.mode not in _PNG_MODES:
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.save(buffer, format="PNG", pnginfo=pnginfo)
        return buffer.getvalue()

    exif = _exif_user_comment(infotext) if infotext is not None else b""
    image = _to_8bit(image)
    if name in ("jpg", "jpeg"):
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        if len(exif) > 65533:
            raise ImageFormatLimitError("infotext too long for JPEG EXIF (64 KiB segment)")
        image.save(buffer, format="JPEG", quality=quality, exif=exif)
    else:
        if image.mode not in ("RGB", "RGBA"):
            has_alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
            image = image.convert("RGBA" if has_alpha else "RGB")
        image.save(buffer, format="WEBP", quality=quality, exif=exif)
    return buffer.getvalue()


def _decode_user_comment(data: bytes) -> str | None:
    if not isinstance(data, bytes):
        return str(data) if data else None
    prefix, body = data[:8], data[8:]
    if prefix == b"UNICODE\x00":
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            text = body.decode("utf-16", errors="replace")
        else:
            try:
                text = body.decode("utf-16-be")
            except UnicodeDecodeError:
                text = body.decode("utf-16-le", errors="replace")
    elif prefix == b"ASCII\x00\x00\x00":
        text = body.decode("latin-1")
    else:
        text = (body if prefix in (b"\x00" * 8, b"JIS\x00\x00\x00\x00\x00") else data).decode("utf-8", "replace")
    text = text.rstrip("\x00")
    return text or None


def _exif_comment(image: Image.Image) -> str | None:
    raw = image.info.get("exif")
    if raw:
        try:
            comment = piexif.load(raw).get("Exif", {}).get(piexif.ExifIFD.UserComment)
        except Exception:  # malformed EXIF: fall back to Pillow's reader below
            comment = None
        if comment:
            return _decode_user_comment(comment)
    try:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
    except Exception:
        return None
    return _decode_user_comment(comment) if comment else None


def read_parameters(image: Image.Image) -> str | None:
    """The infotext as this product writes it: PNG ``parameters`` (tEXt/zTXt/iTXt), else EXIF UserComment
    (unicode/ASCII forms), else a GIF ``comment``; ``None`` when there is none."""
    value = image.info.get(PARAMETERS_KEY)
    if isinstance(value, str) and value:
        return str(value)
    if isinstance(value, bytes) and value:
        return value.decode("utf-8", errors="replace")
    comment = _exif_comment(image)
    if comment:
        return comment
    gif_comment = image.info.get("comment") if image.format == "GIF" else None
    if isinstance(gif_comment, bytes) and gif_comment:
        return gif_comment.decode("utf-8", errors="replace")
    return None


def grid_shape(count: int, rows: int | None = None) -> tuple[int, int]:
    """(rows, cols) of A1111's grid: rows default round(sqrt(n)) (n_rows=-1), at most n; cols = ceil(n/rows)."""
    if count <= 0:
        raise ValueError("a grid needs at least one image")
    if rows is None or rows <= 0:
        rows = round(math.sqrt(count))
    rows = max(1, min(rows, count))
    return rows, math.ceil(count / rows)


def image_grid(images: Sequence[Image.Image], rows: int | None = None) -> Image.Image:
    """A1111's ``image_grid``: a black RGB canvas of cells the size of the first image, filled row by row.

    An image of another size is cropped (or padded black) to the cell.
    """
    images = list(images)
    rows, cols = grid_shape(len(images), rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), color="black")
    for i, img in enumerate(images):
        tile = img if img.size == (w, h) else img.crop((0, 0, w, h))
        if tile.mode != "RGB":
            tile = tile.convert("RGB")
        grid.paste(tile, box=(i % cols * w, i // cols * h))
    return grid

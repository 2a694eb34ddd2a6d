"""Which container a file is, and its text items: PNG (see ``png.py``), JPEG segments, WebP chunks, and anything
else Pillow can identify (GIF comments, TIFF/EXIF...). No pixel data is decoded here.
"""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image

from modules.errors import ValidationError
from modules.metadata.exif import read_exif, xmp_fields
from modules.metadata.model import MAX_ITEM_CHARS, Container
from modules.metadata.png import SIGNATURE, read_png

_XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
_MAX_SEGMENTS = 1 << 16


def _add_xmp(xmp: bytes, out: Container) -> None:
    text = xmp[: MAX_ITEM_CHARS * 4].decode("utf-8", errors="replace")
    out.add("XML:com.adobe.xmp", text, len(xmp))
    for key, value in xmp_fields(text).items():
        out.add(f"XMP:{key}", value)


def read_jpeg(data: bytes) -> Container:
    """APP1 EXIF and XMP, and COM comments, of a JPEG; stops at the first scan (metadata comes before it)."""
    out = Container("JPEG")
    pos, n = 2, 0
    exif_done = False
    while pos + 4 <= len(data) and n < _MAX_SEGMENTS:
        n += 1
        if data[pos] != 0xFF:
            out.errors.append("JPEG: bad segment marker; stopped reading")
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        if marker == 0xD9:
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        body = data[pos + 4: pos + 2 + length]
        if length < 2 or pos + 2 + length > len(data):
            out.errors.append("JPEG: file truncated inside a segment")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF) and len(body) >= 5:
            out.height, out.width = struct.unpack_from(">HH", body, 1)
        elif marker == 0xE1 and body.startswith(b"Exif\x00\x00") and not exif_done:
            exif_done = True
            read_exif(body, out)
        elif marker == 0xE1 and body.startswith(_XMP_PREFIX):
            _add_xmp(body[len(_XMP_PREFIX):], out)
        elif marker == 0xFE:
            text = body.rstrip(b"\x00")
            try:
                out.add("comment", text.decode("utf-8"))
            except UnicodeDecodeError:
                out.add("comment", text.decode("latin-1"))
        if marker == 0xDA or length < 2:
            break
        pos += 2 + length
    return out


def read_webp(data: bytes) -> Container:
    """EXIF and XMP chunks, and the canvas size, of a WebP (RIFF) file."""
    out = Container("WEBP")
    end = min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
    pos = 12
    while pos + 8 <= end:
        kind, size = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8: pos + 8 + size]
        if pos + 8 + size > len(data):
            out.errors.append(f"WebP: file truncated inside the {kind.decode('latin-1')!r} chunk")
        if kind == b"VP8X" and len(body) >= 10:
            out.width = int.from_bytes(body[4:7], "little") + 1
            out.height = int.from_bytes(body[7:10], "little") + 1
        elif kind == b"VP8L":
            out.stealth_candidate = True  # lossless: hidden bits survive
            if len(body) >= 5 and out.width is None:
                bits = int.from_bytes(body[1:5], "little")
                out.width, out.height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif kind == b"VP8 " and len(body) >= 10 and out.width is None:
            out.width, out.height = (struct.unpack_from("<H", body, 6)[0] & 0x3FFF,
                                     struct.unpack_from("<H", body, 8)[0] & 0x3FFF)
        elif kind == b"EXIF":
            read_exif(body, out)
        elif kind == b"XMP ":
            _add_xmp(body, out)
        pos += 8 + size + (size & 1)
    return out


def _read_other(data: bytes) -> Container:
    """Any other format Pillow recognises from its header (no pixels decoded): its text info and EXIF."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        out = Container("image")
        out.warnings.append("image too large to examine beyond its header")
        return out
    except Exception:  # noqa: BLE001 - Pillow raises many types for non-images
        raise ValidationError("image: not an image (unrecognised file format)", field="image") from None
    out = Container(image.format or "image", image.width, image.height)
    for key, value in image.info.items():
        if key == "exif" and isinstance(value, bytes):
            read_exif(value, out)
        elif isinstance(value, str):
            out.add(str(key), value)
        elif isinstance(value, bytes) and key in ("comment", "parameters"):
            out.add(str(key), value[: MAX_ITEM_CHARS * 4].decode("utf-8", errors="replace"), len(value))
    return out


def read_container(data: bytes) -> Container:
    """The container reader for ``data``; ValidationError when it is not an image at all."""
    if not data:
        raise ValidationError("image: not an image (empty file)", field="image")
    if data.startswith(SIGNATURE):
        return read_png(data)
    if data[:3] == b"\xff\xd8\xff":
        return read_jpeg(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return read_webp(data)
    return _read_other(data)

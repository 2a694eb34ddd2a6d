"""A1111's "stealth pnginfo": metadata hidden in the lowest bit of the pixels (format of the A1111 extension
``sd_webui_stealth_pnginfo``, also written by NovelAI and SwarmUI).

The bits are read column by column (x outer, y inner). In "alpha" mode each pixel gives the low bit of its alpha; in
"rgb" mode the low bits of red, green and blue, in that order. The stream is a 15-byte signature (``stealth_pnginfo``
/ ``stealth_pngcomp`` for alpha, ``stealth_rgbinfo`` / ``stealth_rgbcomp`` for rgb; ``comp`` = gzip), a 32-bit
big-endian length in *bits*, then the payload (UTF-8 text, often an A1111 infotext or NovelAI's JSON).
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from types import MappingProxyType

import numpy as np
from PIL import Image

from modules.metadata.model import MAX_INFLATED_BYTES, MAX_STEALTH_BYTES, MAX_STEALTH_PIXELS

_SIGNATURES = MappingProxyType({"alpha": (b"stealth_pnginfo", b"stealth_pngcomp"),
                                "rgb": (b"stealth_rgbinfo", b"stealth_rgbcomp")})
_HEADER_BITS = 15 * 8 + 32


def _plane(image: Image.Image, mode: str, columns: int) -> np.ndarray:
    """The first ``columns`` columns of the alpha (H, W, 1) or RGB (H, W, 3) channels as 8-bit values."""
    part = image.crop((0, 0, min(columns, image.width), image.height))
    if mode == "alpha":
        return np.asarray(part.convert("RGBA").getchannel("A"))[:, :, None]
    return np.asarray(part.convert("RGB"))


def _bits(image: Image.Image, mode: str, count: int) -> np.ndarray:
    """The first ``count`` low bits in column-major pixel order (channel order inside a pixel)."""
    per_column = image.height * (1 if mode == "alpha" else 3)
    plane = _plane(image, mode, math.ceil(count / per_column))
    return np.asarray((plane & 1).transpose(1, 0, 2).reshape(-1)[:count])


def _read_mode(image: Image.Image, mode: str) -> tuple[str | None, str | None]:
    """(payload text, problem) for one mode; (None, None) when its signature is absent."""
    total = image.width * image.height * (1 if mode == "alpha" else 3)
    if total < _HEADER_BITS:
        return None, None
    header = np.packbits(_bits(image, mode, _HEADER_BITS)).tobytes()
    signature, length_bytes = header[:15], header[15:19]
    if signature not in _SIGNATURES[mode]:
        return None, None
    length = int.from_bytes(length_bytes, "big")
    if length > total - _HEADER_BITS or length > MAX_STEALTH_BYTES * 8:
        return None, f"hidden {mode} data: length {length} bits does not fit; ignored"
    payload = np.packbits(_bits(image, mode, _HEADER_BITS + length)[_HEADER_BITS:]).tobytes()
    if signature.endswith(b"comp"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            payload = d.decompress(payload, MAX_INFLATED_BYTES)
        except zlib.error:
            return None, f"hidden {mode} data: gzip data is corrupt; ignored"
    return payload.decode("utf-8", errors="replace"), None


def read_stealth(data: bytes, width: int | None, height: int | None) -> tuple[str | None, list[str]]:
    """(hidden text, notes) of a lossless image; decodes pixels only when the image is within the size limit."""
    if not width or not height:
        return None, []
    if width * height > MAX_STEALTH_PIXELS:
        return None, [f"{width}x{height} is too large to look for hidden (stealth) metadata"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_STEALTH_PIXELS:
                return None, []
            image.load()
    except Exception:  # noqa: BLE001 - damaged pixel data: nothing hidden can be read
        return None, ["pixel data could not be decoded: hidden (stealth) metadata not checked"]
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or \
        (image.mode == "P" and "transparency" in image.info)
    notes: list[str] = []
    for mode in (("alpha", "rgb") if has_alpha else ("rgb",)):
        text, problem = _read_mode(image, mode)
        if problem:
            notes.append(problem)
        if text is not None:
            return text, notes
    return None, notes

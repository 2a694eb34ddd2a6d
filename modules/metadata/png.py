"""PNG chunks read straight from the bytes: text (tEXt, zTXt, iTXt) wherever it stands, before or after the image
data, and ``eXIf``. Damaged files are read as far as they go: a CRC mismatch is noted and the chunk still used, a
truncated chunk gives what is there, compressed text is inflated to a bounded size.
"""

from __future__ import annotations

import struct
import zlib

from modules.metadata.exif import read_exif, xmp_fields
from modules.metadata.model import MAX_INFLATED_BYTES, MAX_ITEM_CHARS, Container

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_MAX_CHUNKS = 1 << 20
_MAX_RAW = MAX_ITEM_CHARS * 4  # bytes of one uncompressed text read before decoding


def inflate(data: bytes | memoryview, limit: int = MAX_INFLATED_BYTES, wbits: int = zlib.MAX_WBITS
            ) -> tuple[bytes, bool]:
    """(inflated bytes, complete); stops at ``limit`` bytes, so a zip bomb costs no more than that."""
    d = zlib.decompressobj(wbits)
    out = d.decompress(bytes(data), limit)
    return out, not d.unconsumed_tail and d.eof


def _text_chunk(kind: bytes, body: memoryview, out: Container, truncated: bool) -> None:
    raw = bytes(body[:80])
    sep = raw.find(b"\x00")
    if sep <= 0:
        out.errors.append(f"{kind.decode()} chunk without a keyword; ignored")
        return
    key = raw[:sep].decode("latin-1")
    rest = body[sep + 1:]
    size = len(rest)
    if kind == b"tEXt":
        out.add(key, bytes(rest[:_MAX_RAW]).decode("latin-1"), size)
        return
    if kind == b"zTXt":
        text = _inflated(key, rest[1:], out, truncated)
        if text is not None:
            out.add(key, text.decode("latin-1"))
        return
    if len(rest) < 2:
        out.errors.append(f"iTXt {key!r}: truncated; ignored")
        return
    compressed = rest[0] == 1
    tail = bytes(rest[2: 2 + 1024])
    lang_end = tail.find(b"\x00")
    tkey_end = tail.find(b"\x00", lang_end + 1) if lang_end >= 0 else -1
    if tkey_end < 0:
        out.errors.append(f"iTXt {key!r}: malformed header; ignored")
        return
    payload = rest[2 + tkey_end + 1:]
    if compressed:
        data = _inflated(key, payload, out, truncated)
        if data is not None:
            out.add(key, data.decode("utf-8", errors="replace"))
    else:
        out.add(key, bytes(payload[:_MAX_RAW]).decode("utf-8", errors="replace"), len(payload))


def _inflated(key: str, data: memoryview, out: Container, truncated: bool) -> bytes | None:
    try:
        text, complete = inflate(data)
    except zlib.error:
        out.errors.append(f"{key}: compressed text is corrupt; ignored")
        return None
    if not complete and not truncated:
        if len(text) >= MAX_INFLATED_BYTES:
            out.warnings.append(f"{key}: compressed text inflates past {MAX_INFLATED_BYTES} bytes; cut")
        else:
            out.errors.append(f"{key}: compressed text ends early; read what was there")
    return text


def read_png(data: bytes) -> Container:
    """Text items, size and damage notes of a PNG file (``data`` starts with the PNG signature)."""
    out = Container("PNG")
    view = memoryview(data)
    pos, n, seen_end = len(SIGNATURE), 0, False
    color_type = None
    while pos + 8 <= len(data) and n < _MAX_CHUNKS:
        n += 1
        length, kind = struct.unpack_from(">I4s", data, pos)
        start, end = pos + 8, pos + 8 + length
        truncated = end + 4 > len(data)
        body = view[start: min(end, len(data))]
        if kind in (*_TEXT_CHUNKS, b"eXIf", b"IHDR") and not truncated:
            crc = struct.unpack_from(">I", data, end)[0]
            if zlib.crc32(body, zlib.crc32(kind)) != crc:
                out.errors.append(f"{kind.decode('latin-1')} chunk: CRC mismatch (damaged file); read anyway")
        if kind == b"IHDR" and len(body) >= 13:
            out.width, out.height = struct.unpack_from(">II", body, 0)
            color_type = body[9]
        elif kind in _TEXT_CHUNKS:
            _text_chunk(kind, body, out, truncated)
        elif kind == b"eXIf":
            read_exif(bytes(body[:_MAX_RAW]), out)
        elif kind == b"IEND":
            seen_end = True
            break
        if truncated:
            out.errors.append(f"file truncated inside a {kind.decode('latin-1', errors='replace')!r} chunk")
            break
        pos = end + 4
    if not seen_end and not any("truncated" in e for e in out.errors):
        out.errors.append("file truncated: no IEND chunk")
    if out.width is None:
        out.errors.append("no IHDR chunk: image size unknown")
    out.stealth_candidate = color_type in (2, 6)  # RGB or RGBA, 8/16 bit
    xmp = out.items.get("XML:com.adobe.xmp")
    if xmp:
        for key, value in xmp_fields(xmp).items():
            out.add(f"XMP:{key}", value)
    return out

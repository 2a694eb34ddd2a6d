"""EXIF (a TIFF structure) and XMP text, read from bytes with every offset and count checked.

Only the text tags generators use are read: IFD0 ImageDescription, Make, Model, Software, Artist, XPComment, and the
Exif IFD's UserComment and MakerNote (UserComment in IFD0 too: Pillow puts it there when a saver sets
``exif[0x9286]`` directly, as ComfyUI's SaveImage Plus does).

UserComment comes in its "UNICODE" form (UTF-16, either byte order: the
standard says the TIFF byte order, A1111/piexif always write big-endian, other tools little-endian), "ASCII", "JIS"
or undefined forms.
"""

from __future__ import annotations

import html
import re
import struct
from types import MappingProxyType

from modules.metadata.model import MAX_ITEM_CHARS, Container

_IFD0_TAGS = MappingProxyType({
    0x010E: "ImageDescription", 0x010F: "Make", 0x0110: "Model", 0x0131: "Software", 0x013B: "Artist",
    0x9C9C: "XPComment", 0x9286: "UserComment",
})
_EXIF_TAGS = MappingProxyType({0x9286: "UserComment", 0x927C: "MakerNote", 0x9C9C: "XPComment"})
_EXIF_IFD_POINTER = 0x8769
_TYPE_SIZES = MappingProxyType({1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 129: 1})
_MAX_ENTRIES = 1024
_MAX_BYTES = MAX_ITEM_CHARS * 4


def _utf16(body: bytes, big_endian_default: bool) -> str:
    """UTF-16 with a byte-order mark, else the byte order whose high bytes are mostly zero (ASCII-heavy text)."""
    if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return body.decode("utf-16", errors="replace")
    even_zero = body[0:200:2].count(0)
    odd_zero = body[1:200:2].count(0)
    big = big_endian_default if even_zero == odd_zero else even_zero > odd_zero
    return body.decode("utf-16-be" if big else "utf-16-le", errors="replace")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def decode_user_comment(data: bytes, big_endian: bool = True) -> str:
    """The text of an EXIF UserComment value (8-byte character-code prefix, then the text)."""
    prefix, body = data[:8], data[8:]
    if prefix == b"UNICODE\x00":
        text = _utf16(body[: len(body) // 2 * 2], big_endian)
    elif prefix == b"ASCII\x00\x00\x00":
        text = _text(body)
    elif prefix == b"JIS\x00\x00\x00\x00\x00":
        text = body.decode("shift_jis", errors="replace")
    elif prefix == b"\x00" * 8:
        text = _text(body)
    else:
        text = _text(data)
    return text.rstrip("\x00").strip("\ufeff")


class _Tiff:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.big = data[:2] == b"MM"
        self.fmt = ">" if self.big else "<"

    def unpack(self, spec: str, offset: int) -> tuple[int, ...]:
        return struct.unpack_from(self.fmt + spec, self.data, offset)

    def entries(self, offset: int) -> list[tuple[int, int, bytes]]:
        """(tag, type, value bytes) of the IFD at ``offset``; entries pointing outside the data are skipped."""
        (count,) = self.unpack("H", offset)
        out = []
        for i in range(min(count, _MAX_ENTRIES)):
            pos = offset + 2 + 12 * i
            if pos + 12 > len(self.data):
                break
            tag, typ, n = self.unpack("HHI", pos)
            size = _TYPE_SIZES.get(typ, 1) * n
            if size <= 4:
                out.append((tag, typ, self.data[pos + 8: pos + 8 + size]))
                continue
            (start,) = self.unpack("I", pos + 8)
            if start >= len(self.data):
                continue
            out.append((tag, typ, self.data[start: start + min(size, _MAX_BYTES)]))
        return out


def _value_text(name: str, typ: int, raw: bytes, big: bool) -> str | None:
    if name == "XPComment":
        return raw.decode("utf-16-le", errors="replace").rstrip("\x00") or None
    if name == "UserComment":
        return decode_user_comment(raw, big) or None
    if typ in (2, 129, 7, 1):
        text = _text(raw.split(b"\x00", 1)[0] if typ == 2 else raw.rstrip(b"\x00"))
        return text if text.strip() else None
    return None


def read_exif(data: bytes, out: Container) -> None:
    """Add the text tags of a TIFF-structured EXIF block (with or without the ``Exif\\0\\0`` prefix) to ``out``."""
    if data[:6] == b"Exif\x00\x00":
        data = data[6:]
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        out.errors.append("EXIF: not a TIFF structure; ignored")
        return
    tiff = _Tiff(data)
    try:
        (ifd0,) = tiff.unpack("I", 4)
        seen: set[int] = set()
        todo = [(ifd0, _IFD0_TAGS)]
        while todo:
            offset, tags = todo.pop(0)
            if offset in seen or offset + 2 > len(data):
                continue
            seen.add(offset)
            for tag, typ, raw in tiff.entries(offset):
                if tag == _EXIF_IFD_POINTER and len(raw) == 4:
                    todo.append((struct.unpack(tiff.fmt + "I", raw)[0], _EXIF_TAGS))
                elif tag in tags:
                    text = _value_text(tags[tag], typ, raw, tiff.big)
                    if text:
                        out.add(tags[tag], text)
    except struct.error:
        out.errors.append("EXIF: truncated; read what was there")


_XMP_FIELDS = (("UserComment", "exif:UserComment"), ("description", "dc:description"),
               ("CreatorTool", "xmp:CreatorTool"), ("parameters", "sd:parameters"))
_MAX_XMP = 1 << 20


def _element(xmp: str, tag: str) -> str | None:
    """The content of the first ``<tag ...>...</tag>`` (linear-time search, no regex backtracking)."""
    start = xmp.find(f"<{tag}")
    while start >= 0:
        after = xmp[start + len(tag) + 1: start + len(tag) + 2]
        close = xmp.find(">", start)
        if close < 0:
            return None
        if after in (">", " ", "\t", "\n", "\r", "/"):
            if xmp[close - 1] == "/":
                return ""
            end = xmp.find(f"</{tag}>", close)
            return xmp[close + 1: end] if end >= 0 else None
        start = xmp.find(f"<{tag}", start + 1)
    return None


def xmp_fields(xmp: str) -> dict[str, str]:
    """A few XMP properties as text (element or attribute form), without an XML parser (no entity expansion)."""
    xmp = xmp[:_MAX_XMP]
    out: dict[str, str] = {}
    for name, tag in _XMP_FIELDS:
        inner = _element(xmp, tag)
        if inner is not None:
            item = _element(inner, "rdf:li")
            value = item if item is not None else re.sub(r"<[^<>]{0,1000}>", "", inner)
        else:
            attr = re.search(rf'\b{tag}="([^"]*)"', xmp)
            value = attr.group(1) if attr else ""
        value = html.unescape(value).strip()
        if value:
            out[name] = value
    return out

"""How the job store encodes a job's spec, tag and result: self-describing JSON, with bytes and images as binary
parts beside it, so that every registered job kind (frozen dataclasses of plain values, paths, enums, images and
bytes) round-trips; :func:`encode` refuses anything else (:class:`Unstorable`) rather than pickling it, and
:func:`decode` imports a stored type that is not loaded yet only from this program's own packages."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import io
import json
import struct
import sys
from pathlib import Path, PurePath
from typing import Any

from PIL import Image, PngImagePlugin

MiB = 2**20


class Unstorable(ValueError):
    """A value :func:`encode` cannot store (an object of an unknown type), or one larger than the limit."""


class TooLarge(Unstorable):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size / MiB:.1f} MiB, more than the {limit / MiB:.0f} MiB kept per job")
        self.size = size


class Undecodable(ValueError):
    """Stored data that cannot be turned back into objects (a type gone since, a damaged record)."""


_MAGIC = b"SDJOB1\n"
_HEAD = struct.Struct("<I")
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})  # what PNG keeps exactly
_IMPORTABLE = frozenset({"modules", "webui"})  # packages a stored type may be imported from when not loaded yet


def _type_name(cls: type) -> str:
    name = f"{cls.__module__}:{cls.__qualname__}"
    if "<locals>" in cls.__qualname__:
        raise Unstorable(f"{name} is defined inside a function")
    return name


def _resolve(name: str) -> type:
    """The class ``module:qualname`` names: from a module already loaded, or one of this application's."""
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name)
    if module is None and module_name.split(".")[0] in _IMPORTABLE:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - any import failure means the type is not there
            raise Undecodable(f"cannot import {module_name}: {exc}") from None
    if module is None:
        raise Undecodable(f"module {module_name} is not loaded")
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type):
        raise Undecodable(f"no type {name}")
    return obj


class _Encoder:
    def __init__(self, limit: int) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit

    def blob(self, data: bytes) -> list[int]:
        ref = [self.size, len(data)]
        self.size += len(data)
        if self.size > self.limit:
            raise TooLarge(self.size, self.limit)
        self.parts.append(data)
        return ref

    def image(self, image: Image.Image) -> dict[str, Any]:
        if image.mode not in _PNG_MODES:
            return {"$raw": [image.mode, image.width, image.height], "b": self.blob(image.tobytes())}
        info = PngImagePlugin.PngInfo()
        for key, value in image.info.items():  # text chunks (an infotext) are kept
            if isinstance(key, str) and isinstance(value, str) and 0 < len(key) < 80 and key.isascii():
                info.add_itxt(key, value)
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1, pnginfo=info)
        return {"$png": self.blob(buf.getvalue())}

    def value(self, v: Any) -> Any:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, enum.Enum):
            return {"$enum": _type_name(type(v)), "v": self.value(v.value)}
        if isinstance(v, int):  # subclasses (an IntFlag aside) as the plain value
            return int(v)
        if isinstance(v, float):
            return float(v)
        if isinstance(v, str):
            return str(v)
        if isinstance(v, (bytes, bytearray)):
            return {"$bytes": self.blob(bytes(v))}
        if isinstance(v, PurePath):
            return {"$path": str(v)}
        if isinstance(v, Image.Image):
            return self.image(v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            fields = {f.name: self.value(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
            return {"$dc": _type_name(type(v)), "f": fields}
        if isinstance(v, tuple):
            return {"$tuple": [self.value(x) for x in v]}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, (set, frozenset)):
            return {"$set" if isinstance(v, set) else "$frozenset": [self.value(x) for x in v]}
        if isinstance(v, dict):
            if all(isinstance(k, str) for k in v):
                return {"$map": {k: self.value(x) for k, x in v.items()}}
            return {"$dict": [[self.value(k), self.value(x)] for k, x in v.items()]}
        raise Unstorable(f"cannot store a {type(v).__module__}.{type(v).__qualname__}")


def encode(value: object, limit: int = 256 * MiB) -> bytes:
    """``value`` (dataclasses, images, paths, bytes, containers and plain values) as bytes for :func:`decode`;
    :class:`Unstorable` for anything else, :class:`TooLarge` past ``limit`` bytes."""
    encoder = _Encoder(limit)
    try:
        head = json.dumps(encoder.value(value), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise Unstorable("nested too deeply") from None
    size = len(_MAGIC) + _HEAD.size + len(head) + encoder.size
    if size > limit:
        raise TooLarge(size, limit)
    return b"".join([_MAGIC, _HEAD.pack(len(head)), head, *encoder.parts])


class _Decoder:
    def __init__(self, payload: memoryview) -> None:
        self.payload = payload

    def blob(self, ref: Any) -> bytes:
        start, length = ref
        if not (isinstance(start, int) and isinstance(length, int) and 0 <= start
                and start + length <= len(self.payload)):
            raise Undecodable("a binary part lies outside the record")
        return bytes(self.payload[start:start + length])

    def value(self, v: Any) -> Any:
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "$tuple" in v:
            return tuple(self.value(x) for x in v["$tuple"])
        if "$map" in v:
            return {k: self.value(x) for k, x in v["$map"].items()}
        if "$dc" in v:
            cls = _resolve(v["$dc"])
            if not dataclasses.is_dataclass(cls):
                raise Undecodable(f"{v['$dc']} is not a dataclass")
            names = {f.name for f in dataclasses.fields(cls) if f.init}
            kwargs = {k: self.value(x) for k, x in v["f"].items() if k in names}  # a field removed since: dropped
            try:
                return cls(**kwargs)
            except Exception as exc:  # noqa: BLE001 - a field added since without a default, a check that fails
                raise Undecodable(f"cannot rebuild {v['$dc']}: {exc}") from None
        if "$png" in v:
            with Image.open(io.BytesIO(self.blob(v["$png"]))) as image:
                image.load()
                return image.copy()
        if "$raw" in v:
            mode, width, height = v["$raw"]
            return Image.frombytes(mode, (width, height), self.blob(v["b"]))
        if "$bytes" in v:
            return self.blob(v["$bytes"])
        if "$path" in v:
            return Path(v["$path"])
        if "$enum" in v:
            return _resolve(v["$enum"])(self.value(v["v"]))
        if "$dict" in v:
            return {self.value(k): self.value(x) for k, x in v["$dict"]}
        if "$set" in v:
            return {self.value(x) for x in v["$set"]}
        if "$frozenset" in v:
            return frozenset(self.value(x) for x in v["$frozenset"])
        raise Undecodable(f"unknown record element {sorted(v)[:3]}")


def decode(data: bytes) -> Any:
    """The value :func:`encode` stored; :class:`Undecodable` when that is no longer possible."""
    view = memoryview(data)
    start = len(_MAGIC) + _HEAD.size
    if bytes(view[:len(_MAGIC)]) != _MAGIC or len(view) < start:
        raise Undecodable("not a stored job record")
    (head_len,) = _HEAD.unpack(view[len(_MAGIC):start])
    try:
        doc = json.loads(bytes(view[start:start + head_len]).decode("utf-8"))
        return _Decoder(view[start + head_len:]).value(doc)
    except Undecodable:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged record, whatever the error
        raise Undecodable(f"{type(exc).__name__}: {exc}") from None

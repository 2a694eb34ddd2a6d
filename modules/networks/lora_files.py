"""LoRA and LyCORIS files on disk: found in the LoRA folders (sub-folders included), named, hashed and read as A1111
does.

- name: the file's stem; alias: the ``ss_output_name`` of its safetensors metadata (A1111's default "Alias from
  file"), so both ``<lora:file_stem:...>`` and ``<lora:alias:...>`` find it;
- hash: the ``sshs_model_hash`` of the metadata, else for a safetensors file the sha256 of its data after the header
  (kohya's "addnet" hash), else the sha256 of the whole file; the short hash is its first 12 hex digits, written as
  ``Lora hashes`` in infotext;
- metadata: the safetensors header's ``__metadata__``, values that are JSON objects or lists decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.hashing import HashCache

log = logging.getLogger(__name__)

EXTENSIONS = (".safetensors", ".pt", ".ckpt")
_BLOCK = 1024 * 1024
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file; ``ValueError`` for a file that is not one."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("too short for a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise ValueError("safetensors header too large")
        text = f.read(length)
    if len(text) < length:
        raise ValueError("truncated safetensors header")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not an object")
    return header


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} in metadata")


def read_metadata(path: Path) -> dict[str, Any]:
    """A safetensors file's ``__metadata__`` as A1111 shows it (JSON objects and lists decoded); {} when none."""
    raw = read_safetensors_header(path).get("__metadata__") or {}
    out: dict[str, Any] = {}
    for key, value in raw.items() if isinstance(raw, dict) else ():
        if isinstance(value, str) and value[:1] in ("{", "["):
            try:
                value = json.loads(value, parse_constant=_no_constants)
            except ValueError:  # not JSON (or NaN/Infinity, which no JSON answer can carry): kept as text
                pass
        out[str(key)] = value
    return out


def addnet_sha256(path: Path) -> str:
    """kohya's hash of a safetensors file: sha256 of everything after the 8-byte length and the header."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("too short for a safetensors file")
        f.seek(8 + struct.unpack("<Q", raw)[0])
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class LoraInfo:
    """One network file."""

    path: Path
    name: str
    alias: str
    metadata: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why the header could not be read (the file is still listed)
    _sha256: str | None = field(default=None, repr=False)

    @property
    def is_safetensors(self) -> bool:
        return self.path.suffix.lower() == ".safetensors"

    def api(self) -> dict[str, Any]:
        """A1111's ``/sdapi/v1/loras`` entry."""
        return {"name": self.name, "alias": self.alias, "path": str(self.path), "metadata": self.metadata}


class LoraRegistry:
    """The LoRA files of the configured folders; ``refresh`` rescans. Hashes are computed once per file version
    (cached by path, size and mtime in the shared hash cache, under an ``addnet:`` key for the data-only hash)."""

    def __init__(self, dirs: list[Path], hashes: HashCache | None = None) -> None:
        self.dirs = dirs
        self.hashes = hashes or HashCache(None)
        self._lock = threading.Lock()
        self._files: list[LoraInfo] = []
        self._by_name: dict[str, LoraInfo] = {}
        self.refresh()

    def refresh(self) -> None:
        files: list[LoraInfo] = []
        for folder in self.dirs:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*"), key=lambda p: str(p).lower()):
                if path.suffix.lower() in EXTENSIONS and path.is_file():
                    files.append(self._info(path))
        by_name: dict[str, LoraInfo] = {}
        for info in files:  # file names first: an alias never hides another file's own name
            by_name.setdefault(info.name, info)
        for info in files:
            by_name.setdefault(info.alias, info)
        with self._lock:
            self._files, self._by_name = files, by_name

    @staticmethod
    def _info(path: Path) -> LoraInfo:
        metadata: dict[str, Any] = {}
        problem = None
        if path.suffix.lower() == ".safetensors":
            try:
                metadata = read_metadata(path)
            except (OSError, ValueError) as exc:
                problem = str(exc)
        alias = metadata.get("ss_output_name")
        return LoraInfo(path=path, name=path.stem, alias=alias if isinstance(alias, str) and alias else path.stem,
                        metadata=metadata, problem=problem)

    @property
    def files(self) -> list[LoraInfo]:
        with self._lock:
            return list(self._files)

    def find(self, name: str) -> LoraInfo | None:
        """By file name or alias, as a ``<lora:...>`` tag names it."""
        with self._lock:
            return self._by_name.get(name)

    def sha256(self, info: LoraInfo) -> str | None:
        """A1111's LoRA hash (see the module docstring); None when the file cannot be read."""
        given = info.metadata.get("sshs_model_hash")
        if isinstance(given, str) and given:
            return given
        if info._sha256 is None:
            try:
                if info.is_safetensors:
                    info._sha256 = self.hashes.get_or_compute(f"addnet:{info.path.resolve()}", [info.path],
                                                              lambda: addnet_sha256(info.path))
                else:
                    info._sha256 = self.hashes.sha256(info.path.resolve(), [info.path])
            except (OSError, ValueError) as exc:
                log.warning("LoRA %s: cannot hash (%s)", info.path, exc)
                return None
        return info._sha256

    def shorthash(self, info: LoraInfo) -> str | None:
        full = self.sha256(info)
        return full[:12] if full else None

    def find_by_hash(self, shorthash: str) -> LoraInfo | None:
        """The file whose short hash is ``shorthash`` (pasting an infotext after a rename); hashes files as needed."""
        want = shorthash.strip().lower()
        if not want:
            return None
        for info in self.files:
            full = self.sha256(info)
            if full and full.lower().startswith(want):
                return info
        return None

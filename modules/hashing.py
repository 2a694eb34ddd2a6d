"""A1111-compatible file hashes, cached by path, size and mtime so a second start does not re-hash.

- sha256 of the whole file; its first 10 hex digits are the "shorthash" written as ``Model hash`` in infotext;
- the legacy 8-hex hash: sha256 of the 64 KiB at offset 1 MiB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from modules.fileio import atomic_write_text

log = logging.getLogger(__name__)
_BLOCK = 1024 * 1024


def sha256_of_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_BLOCK), b""):
                h.update(block)
    return h.hexdigest()


def legacy_hash(path: Path) -> str:
    """A1111's old 8-hex checkpoint hash (64 KiB at the 1 MiB offset); ``NOFILE`` when unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except OSError:
        return "NOFILE"


class HashCache:
    """sha256 values keyed by absolute path, valid while size and mtime are unchanged; persisted as JSON."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, object]] = {}
        if path is not None and path.is_file():
            try:
                self._data = json.loads(path.read_text(encoding="utf-8")).get("hashes", {})
            except (OSError, ValueError, AttributeError):
                log.warning("hash cache %s is unreadable; starting a new one", path)
                self._data = {}

    @staticmethod
    def _stamp(files: list[Path]) -> tuple[int, float]:
        stats = [os.stat(p) for p in files]
        return sum(s.st_size for s in stats), max(s.st_mtime for s in stats)

    def cached(self, key: Path, files: list[Path]) -> str | None:
        """The cached sha256 of ``files`` under ``key`` if still valid, without reading the files."""
        entry = self._data.get(str(key))
        if not entry:
            return None
        try:
            size, mtime = self._stamp(files)
        except OSError:
            return None
        if entry.get("size") == size and entry.get("mtime") == mtime:
            return str(entry["sha256"])
        return None

    def sha256(self, key: Path, files: list[Path]) -> str:
        """The sha256 of ``files`` (concatenated), from the cache when size and mtime match."""
        hit = self.cached(key, files)
        if hit:
            return hit
        size, mtime = self._stamp(files)
        digest = sha256_of_files(files)
        with self._lock:
            self._data[str(key)] = {"size": size, "mtime": mtime, "sha256": digest}
            self._save()
        return digest

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            atomic_write_text(self.path, json.dumps({"hashes": self._data}, indent=1))
        except OSError as exc:
            log.warning("cannot write the hash cache %s: %s", self.path, exc)

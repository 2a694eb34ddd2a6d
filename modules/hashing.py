"""A1111-compatible file hashes, cached by path, size and mtime so a second start does not re-hash.

- sha256 of the whole file; its first 10 hex digits are the "shorthash" written as ``Model hash`` in infotext;
- the legacy 8-hex hash: sha256 of the 64 KiB at offset 1 MiB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from modules.fileio import atomic_write_text, load_json_object

log = logging.getLogger(__name__)
_BLOCK = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def _valid_entry(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    size, mtime, digest = entry.get("size"), entry.get("mtime"), entry.get("sha256")
    return isinstance(size, int) and not isinstance(size, bool) and size >= 0 \
        and isinstance(mtime, (int, float)) and not isinstance(mtime, bool) and math.isfinite(mtime) \
        and isinstance(digest, str) and _SHA256.fullmatch(digest) is not None


class HashCache:
    """sha256 values keyed by absolute path, valid while size and mtime are unchanged; persisted as JSON."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, object]] = {}
        if path is not None and path.is_file():
            self._data = self._read(path)

    @staticmethod
    def _read(path: Path) -> dict[str, dict[str, object]]:
        """The valid entries of the cache file; a corrupt file is ignored and a corrupt entry dropped, each with
        a message (the file is written again with the next new hash)."""
        try:
            hashes = load_json_object(path).get("hashes", {})
            if not isinstance(hashes, dict):
                raise ValueError("'hashes' is not an object")
        except (OSError, ValueError) as exc:
            log.warning("hash cache %s is unreadable (%s); starting a new one", path, exc)
            return {}
        entries = {key: entry for key, entry in hashes.items() if _valid_entry(entry)}
        if len(entries) < len(hashes):
            log.warning("hash cache %s: %d invalid entries ignored", path, len(hashes) - len(entries))
        return entries

    @staticmethod
    def _stamp(files: list[Path]) -> tuple[int, float]:
        stats = [os.stat(p) for p in files]
        return sum(s.st_size for s in stats), max(s.st_mtime for s in stats)

    def cached(self, key: Path | str, files: list[Path]) -> str | None:
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
        return self.get_or_compute(key, files, lambda: sha256_of_files(files))

    def get_or_compute(self, key: Path | str, files: list[Path], compute: Callable[[], str]) -> str:
        """A hash of ``files`` made by ``compute`` (another recipe than the plain sha256 has its own ``key``), from
        the cache when size and mtime match."""
        hit = self.cached(key, files)
        if hit:
            return hit
        size, mtime = self._stamp(files)
        digest = compute()
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

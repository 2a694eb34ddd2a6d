"""The last few network files read, by file version (path, size, mtime): switching back to a network is free, and a
file changed on disk is read again."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class FileVersionCache(Generic[T]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._data: collections.OrderedDict[tuple[str, int, float], T] = collections.OrderedDict()

    def get(self, path: Path, load: Callable[[Path], T]) -> T:
        """What ``load`` made of this version of ``path`` (read now if it is not among the last ``size``)."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime)
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
                return hit
        value = load(path)
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value

"""Atomic file writes: write a temporary file in the target folder, flush it, then move it into place.

Temporary files are hidden and named ``.tmp-XXXXXXXX<suffix>`` (``.part`` for new files); merges write
``.merge-XXXXXXXX.part`` (:mod:`modules.merge.pipeline`). A process killed meanwhile leaves them behind:
:func:`remove_leftovers` finds them by these names at the next start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)
TEMP_PREFIX = ".tmp-"
LEFTOVER_MIN_AGE_S = 600.0  # younger files may belong to another instance writing right now
LEFTOVER_MAX_DEPTH = 4
MAX_JSON_DEPTH = 64  # deeper config.json / hash cache files are treated as corrupt
_LEFTOVER = re.compile(r"\.(?:tmp|merge)-[a-z0-9_]{8}(?:\.[A-Za-z0-9]{1,16})?\Z")


@contextlib.contextmanager
def _temp_in(folder: Path, suffix: str) -> Iterator[tuple[IO[bytes], Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=suffix)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (readers see the old or the new content, never a mix)."""
    with _temp_in(path.parent, path.suffix) as (f, tmp):
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _check_name(folder: Path, name: str) -> None:
    """Refuse a file name that would place the file anywhere but directly in ``folder``."""
    if not name or name in (".", "..") or "\0" in name or "/" in name or os.sep in name:
        raise ValueError(f"the file name {name!r} would leave {folder}")


def _inside(folder: Path, target: Path) -> Path:
    """``target`` once its resolved parent is checked to be ``folder`` (resolved too: links followed)."""
    if target.resolve().parent != folder.resolve():
        raise ValueError(f"{target.name!r} would be written outside {folder}")
    return target


def write_new_file(folder: Path, name_for: Callable[[int], str], start: int,
                   writer: Callable[[IO[bytes]], object], attempts: int = 10000) -> Path:
    """Write a file under the first free name ``name_for(n)``, n >= start; never overwrites an existing file.

    The content is written to a temporary file first and then hard-linked to its final name, which fails instead of
    replacing a file that appeared meanwhile (another process, a clock change); the next number is tried then.
    A name taken by anything, a symbolic link included, is skipped; a name that would leave ``folder`` is refused.
    """
    with _temp_in(folder, ".part") as (f, tmp):
        writer(f)
        f.flush()
        os.fsync(f.fileno())
    try:
        for n in range(start, start + attempts):
            name = name_for(n)
            _check_name(folder, name)
            target = folder / name
            if target.is_symlink() or target.exists():
                continue
            _inside(folder, target)
            try:
                os.link(tmp, target)
            except FileExistsError:
                continue
            except OSError:  # filesystems without hard links: an exclusive rename check instead
                if target.exists():
                    continue
                os.rename(tmp, target)
                return target
            return target
        raise OSError(f"no free file name in {folder}")
    finally:
        tmp.unlink(missing_ok=True)


def is_leftover_name(name: str) -> bool:
    """Whether ``name`` is one of the temporary names this product writes (see the module's text)."""
    return _LEFTOVER.match(name) is not None


def _leftovers_in(folder: Path, depth: int) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            if is_leftover_name(entry.name):
                yield Path(entry.path)
            continue
        try:
            is_dir = depth > 0 and entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if is_dir:
            yield from _leftovers_in(Path(entry.path), depth - 1)


def remove_leftovers(trees: Iterable[Path], flat: Iterable[Path] = (), min_age_s: float = LEFTOVER_MIN_AGE_S,
                     max_depth: int = LEFTOVER_MAX_DEPTH) -> tuple[int, int]:
    """Delete the temporary files of interrupted writes in ``trees`` (and up to ``max_depth`` folders below, links
    not followed) and directly in the ``flat`` folders, when older than ``min_age_s``; returns (count, bytes)."""
    found: set[Path] = set()
    for folder in trees:
        found.update(_leftovers_in(Path(folder), max_depth))
    for folder in flat:
        found.update(_leftovers_in(Path(folder), 0))
    count = size = 0
    now = time.time()
    for path in sorted(found):
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < min_age_s:
                continue
            path.unlink()
        except OSError as exc:
            log.debug("could not remove %s: %s", path, exc)
            continue
        count += 1
        size += st.st_size
    return count, size


def json_depth_ok(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON) nests lists and objects at most ``limit`` deep; iterative, never recursing."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, depth + 1) for v in item]
    return True


def json_finite(value: Any) -> bool:
    """Whether parsed JSON ``value`` holds no NaN or infinity anywhere (checked iteratively)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack += item.values()
        elif isinstance(item, list):
            stack += item
    return True


def load_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``ValueError`` when it is not one, is nested too deeply or cannot be parsed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if not json_depth_ok(data):
        raise ValueError("nested too deeply")
    return data

"""Atomic file writes: write a temporary file in the target folder, flush it, then move it into place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def _temp_in(folder: Path, suffix: str) -> Iterator[tuple[IO[bytes], Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
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


def write_new_file(folder: Path, name_for: Callable[[int], str], start: int,
                   writer: Callable[[IO[bytes]], object], attempts: int = 10000) -> Path:
    """Write a file under the first free name ``name_for(n)``, n >= start; never overwrites an existing file.

    The content is written to a temporary file first and then hard-linked to its final name, which fails instead of
    replacing a file that appeared meanwhile (another process, a clock change); the next number is tried then.
    """
    with _temp_in(folder, ".part") as (f, tmp):
        writer(f)
        f.flush()
        os.fsync(f.fileno())
    try:
        for n in range(start, start + attempts):
            target = folder / name_for(n)
            if target.exists():
                continue
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

"""The categories the CLIP interrogator ranks: text files of one candidate per line.

The user's folder (``models/interrogate/``) holds them under A1111's names (``artists.txt``, ``flavors.txt``,
``mediums.txt``, ``movements.txt``, or any other). A name ending in ``.topN`` (``flavors.top3.txt``) picks the ``N``
best lines of that category instead of one. Short built-in lists (``mediums``, ``movements``) are used for the
categories the user's folder does not have; a user file of the same category name replaces a built-in one.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

BUILTIN_DIR = Path(__file__).parent / "categories"
USER_FOLDER = "interrogate"  # under the models root
MAX_LINE_CHARS = 1000

_TOP_N = re.compile(r"\.top(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Category:
    """``name`` is the file's stem (``flavors.top3``); ``base`` the name without ``.topN`` (``flavors``)."""

    name: str
    top_count: int
    items: tuple[str, ...]
    builtin: bool

    @property
    def base(self) -> str:
        return base_name(self.name)


def base_name(stem: str) -> str:
    return _TOP_N.sub("", stem)


def top_count(stem: str) -> int:
    match = _TOP_N.search(stem)
    return int(match.group(1)) if match else 1


def _txt_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.txt") if p.is_file()), key=lambda p: p.stem.lower())


def category_files(user_dir: Path) -> list[tuple[Path, bool]]:
    """The category files in use, sorted by name, each with whether it is built in."""
    user = _txt_files(user_dir)
    taken = {base_name(p.stem).lower() for p in user}
    builtin = [p for p in _txt_files(BUILTIN_DIR) if base_name(p.stem).lower() not in taken]
    files = [(p, False) for p in user] + [(p, True) for p in builtin]
    return sorted(files, key=lambda item: item[0].stem.lower())


def category_names(user_dir: Path) -> list[str]:
    """The names a user can skip (file stems), as the settings page lists them."""
    return [path.stem for path, _ in category_files(user_dir)]


def _lines(path: Path, limit: int) -> Iterator[str]:
    count = 0
    with path.open(encoding="utf-8-sig", errors="replace") as file:
        for raw in file:
            line = raw.strip()[:MAX_LINE_CHARS]
            if not line:
                continue
            if limit and count >= limit:
                return
            count += 1
            yield line


def read_category(path: Path, dict_limit: int = 0, builtin: bool = False) -> Category:
    """One category file: its non-empty lines, at most ``dict_limit`` of them (0: no limit)."""
    return Category(path.stem, top_count(path.stem), tuple(_lines(path, max(dict_limit, 0))), builtin)


def is_skipped(stem: str, skip: Collection[str]) -> bool:
    """A category is skipped when ``skip`` names its stem or its name without ``.topN``, in any case."""
    wanted = {s.lower() for s in skip}
    return stem.lower() in wanted or base_name(stem).lower() in wanted


def load_categories(user_dir: Path, skip: Collection[str] = (), dict_limit: int = 0) -> list[Category]:
    """The categories to rank, in name order, without the skipped and the empty ones."""
    categories = [read_category(path, dict_limit, builtin) for path, builtin in category_files(user_dir)
                  if not is_skipped(path.stem, skip)]
    return [c for c in categories if c.items and c.top_count > 0]

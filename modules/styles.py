"""A1111's ``styles.csv``: named prompt fragments merged into the prompt (``{prompt}`` is replaced, else appended)."""

from __future__ import annotations

import csv
import io
import logging
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modules.fileio import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def load_styles(path: Path) -> dict[str, Style]:
    """The styles in ``path`` by name; a missing or unreadable file gives none (logged)."""
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return {}
    out: dict[str, Style] = {}
    for row in rows:
        name = (row.get("name") or "").strip()
        if name:
            out[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return out


def merge_prompt(style_text: str, prompt: str) -> str:
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    parts = [p for p in (prompt.strip(), style_text.strip()) if p]
    return ", ".join(parts)


def apply_styles(styles: dict[str, Style], names: list[str] | tuple[str, ...], prompt: str,
                 negative: str) -> tuple[str, str]:
    """The prompt and negative prompt with the named styles merged in order; unknown names are ignored."""
    for name in names:
        style = styles.get(name)
        if style is None:
            continue
        if style.prompt:
            prompt = merge_prompt(style.prompt, prompt)
        if style.negative_prompt:
            negative = merge_prompt(style.negative_prompt, negative)
    return prompt, negative


# --- several files, editing, and styles found in a pasted prompt (A1111's StyleDatabase) -------------------------

CSV_FIELDS = ("name", "prompt", "negative_prompt")
INFOTEXT_STYLES = ("Ignore", "Apply", "Discard", "Apply if any")


@dataclass(frozen=True)
class FileStyle:
    """A style and the file it is kept in."""

    style: Style
    path: Path


def expand_style_files(patterns: Sequence[str | Path]) -> tuple[list[Path], Path]:
    """The files ``--styles-file`` names (paths or wildcards, in order, each once) and the file new styles go to:
    the first path, or for a first wildcard its first match (else ``styles.csv`` in its folder), as A1111."""
    files: list[Path] = []
    default: Path | None = None
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if any(c in path.name for c in "*?["):
            found = sorted(path.parent.glob(path.name))
            if default is None:
                default = found[0] if found else path.parent / "styles.csv"
            files += found
        else:
            default = default or path
            files.append(path)
    default = default or Path("styles.csv")
    unique = list(dict.fromkeys([default, *files]))
    return unique, default


def _read_file(path: Path) -> list[Style]:
    """A1111's ``styles.csv`` rows: ``name,prompt,negative_prompt`` (old files: ``name,text``); rows whose name
    starts with ``#`` are comments. An unreadable file gives none (logged)."""
    if not path.is_file():
        return []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("cannot read styles file %s: %s", path, exc)
        return []
    out = []
    for row in rows:
        name = (row.get("name") or "").strip()
        if name and not name.startswith("#"):
            prompt = row.get("prompt") if "prompt" in row else row.get("text")
            out.append(Style(name, prompt or "", row.get("negative_prompt") or ""))
    return out


def _strip_style(style_text: str, prompt: str) -> tuple[bool, str]:
    """``prompt`` without the text ``style_text`` added to it (around ``{prompt}``, else at its end after
    ``, ``), and whether it was there."""
    text, style_text = prompt.strip(), style_text.strip()
    if "{prompt}" in style_text:
        left, _, right = style_text.partition("{prompt}")
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            return True, text[len(left):len(text) - len(right)]
        return False, prompt
    if text.endswith(style_text):
        rest = text[:len(text) - len(style_text)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


class StyleDatabase:
    """The styles of every styles file; edits are written back to the file each style came from (new styles to
    the first file), atomically, with the previous version kept as ``<file>.bak`` as A1111 does."""

    def __init__(self, patterns: Sequence[str | Path]) -> None:
        self.patterns = list(patterns)
        self.files: list[Path] = []
        self.default_path = Path("styles.csv")
        self._styles: dict[str, FileStyle] = {}
        self._seen: tuple[tuple[str, int, int], ...] = ()
        self._lock = threading.Lock()
        self.reload()

    def reload(self) -> None:
        files, default = expand_style_files(self.patterns)
        signature = self._signature(files)
        styles: dict[str, FileStyle] = {}
        for path in files:
            for style in _read_file(path):
                styles[style.name] = FileStyle(style, path)
        with self._lock:
            self.files, self.default_path, self._styles, self._seen = files, default, styles, signature

    @staticmethod
    def _signature(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in files:
            try:
                stat = path.stat()
                out.append((str(path), stat.st_mtime_ns, stat.st_size))
            except OSError:
                out.append((str(path), -1, -1))
        return tuple(out)

    def _fresh(self) -> None:
        """Read the files again when one was changed, added or removed outside (an editor, another instance)."""
        files, _ = expand_style_files(self.patterns)
        if self._signature(files) != self._seen:
            self.reload()

    @property
    def styles(self) -> dict[str, Style]:
        self._fresh()
        with self._lock:
            return {name: fs.style for name, fs in self._styles.items()}

    def names(self) -> list[str]:
        return list(self.styles)

    def get(self, name: str) -> Style | None:
        return self.styles.get(name)

    def apply(self, names: list[str] | tuple[str, ...], prompt: str, negative: str) -> tuple[str, str]:
        return apply_styles(self.styles, names, prompt, negative)

    def save(self, style: Style) -> None:
        """Add or replace a style (kept in its file; a new one goes to the first file)."""
        name = style.name.strip()
        if not name:
            raise ValueError("a style needs a name")
        if any(c in name for c in "\r\n"):
            raise ValueError("a style name is one line")
        with self._lock:
            old = self._styles.get(name)
            path = old.path if old else self.default_path
            self._styles[name] = FileStyle(Style(name, style.prompt, style.negative_prompt), path)
            self._write(path)

    def delete(self, name: str) -> bool:
        with self._lock:
            old = self._styles.pop(name, None)
            if old is not None:
                self._write(old.path)
        return old is not None

    def _write(self, path: Path) -> None:
        rows = [fs.style for fs in self._styles.values() if fs.path == path]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\r\n")
        writer.writeheader()
        for style in rows:
            writer.writerow({"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt})
        if path.is_file():
            shutil.copy2(path, path.with_name(path.name + ".bak"))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue().encode("utf-8-sig"))
        if path not in self.files:
            self.files.append(path)
        self._seen = self._signature(self.files)

    def extract(self, prompt: str, negative: str) -> tuple[list[str], str, str]:
        """The styles whose texts a prompt pair ends with (or wraps), taken out one by one as A1111's "infotext
        styles" does: (their names in the order they were applied, the prompt and negative prompt without them)."""
        found: list[str] = []
        candidates = list(self.styles.values())
        while True:
            for style in candidates:
                if not style.prompt and not style.negative_prompt:
                    continue
                ok_p, new_prompt = _strip_style(style.prompt, prompt)
                ok_n, new_negative = _strip_style(style.negative_prompt, negative) if ok_p else (False, negative)
                if ok_p and ok_n:
                    prompt, negative = new_prompt, new_negative
                    found.append(style.name)
                    candidates.remove(style)
                    break
            else:
                return list(reversed(found)), prompt, negative


def infer_styles(db: StyleDatabase, values: dict[str, object], mode: str) -> dict[str, object]:
    """Pasted request values with the styles found in their prompts taken out (``mode`` is the ``infotext_styles``
    setting: Ignore, Apply, Discard, Apply if any); with Apply the ``styles`` field names them (Apply if any: when
    some were found). The hires prompts, when the infotext has them, must carry the same styles, else nothing is
    taken out (as A1111)."""
    if mode == "Ignore":
        return values
    prompt, negative = str(values.get("prompt") or ""), str(values.get("negative_prompt") or "")
    found, new_prompt, new_negative = db.extract(prompt, negative)
    out = dict(values)
    if "hr_prompt" in values or "hr_negative_prompt" in values:
        hr_prompt = str(values.get("hr_prompt") or prompt)
        hr_negative = str(values.get("hr_negative_prompt") or negative)
        hr_found, hr_new_prompt, hr_new_negative = db.extract(hr_prompt, hr_negative)
        if hr_found != found:
            return values
        out["hr_prompt"] = "" if hr_new_prompt == new_prompt else hr_new_prompt
        out["hr_negative_prompt"] = "" if hr_new_negative == new_negative else hr_new_negative
    out["prompt"], out["negative_prompt"] = new_prompt, new_negative
    if mode == "Apply" or (mode == "Apply if any" and found):
        out["styles"] = tuple(found)
    return out

"""Output files the A1111 way: ``outputs/txt2img-images/2024-07-27/00000-1234567890.png``, ``grid-0000.png``.

Numbering is derived from the folder's existing files (so it continues across restarts), files are written atomically
and never overwrite anything (:func:`modules.fileio.write_new_file`).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import string
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from PIL import Image

from modules import fileio, images

INVALID_FILENAME_CHARS = '#<>:"/\\|?*'  # A1111 1.10 (without --unix-filenames-sanitization); plus control chars
MAX_FILENAME_PART_LENGTH = 128
MAX_FILENAME_BYTES = 240  # under the usual 255-byte limit of a file name
DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"
_CONTROL = "".join(chr(c) for c in (*range(32), 127))
_TRANSLATE = {ord(c): "_" for c in INVALID_FILENAME_CHARS + _CONTROL}
_RE_PATTERN = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|\Z)", re.DOTALL)
_RE_PATTERN_ARG = re.compile(r"(.*)<([^>]*)>$", re.DOTALL)
_RE_NONLETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")


class _Skip:
    """A token that vanishes together with the literal text before it (A1111's NOTHING_AND_SKIP_PREVIOUS_TEXT)."""


_SKIP = _Skip()


def sanitize_filename_part(text: str | None, replace_spaces: bool = True) -> str | None:
    """A1111's ``sanitize_filename_part``, stricter: ``#<>:"/\\|?*`` and control characters become ``_`` (spaces too
    when ``replace_spaces``), then leading spaces and dots are stripped, the text cut to 128 characters and trailing
    spaces and dots stripped."""
    if text is None:
        return None
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate(_TRANSLATE).lstrip(" .")[:MAX_FILENAME_PART_LENGTH]
    return text.rstrip(" .")


def next_sequence_number(folder: Path, basename: str = "") -> int:
    """A1111's ``get_next_sequence_number``: 1 + the largest leading number among the folder's entries whose names start
    with ``basename-`` (or any name when ``basename`` is empty), the number ending at the first ``-`` or the extension;
    0 for an empty or missing folder. Other names are ignored."""
    prefix = f"{basename}-" if basename else ""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    result = -1
    for name in names:
        if not name.startswith(prefix):
            continue
        first = os.path.splitext(name[len(prefix):])[0].split("-")[0]
        if first.isascii() and first.isdigit():
            result = max(result, int(first))
    return result + 1


def dated_folder(root: Path, kind: str, date: datetime.date) -> Path:
    """``root / kind / "YYYY-MM-DD"`` (``kind`` like ``txt2img-images``, ``txt2img-grids``; one plain folder name)."""
    if kind in ("", ".", "..") or kind != sanitize_filename_part(kind, replace_spaces=False):
        raise ValueError(f"invalid output folder kind {kind!r}")
    return Path(root) / kind / date.isoformat()


def _text(value: object) -> str:
    return "" if value is None else str(value)


class FilenameGenerator:
    """A1111's ``[token]`` file name patterns over a plain dict of values.

    Tokens (case-insensitive): [seed] [seed_first] [seed_last] [steps] [cfg] [width] [height] [styles] [sampler]
    [scheduler] [model_hash] [model_name] [date] [datetime] [datetime<fmt>] [datetime<fmt><tz>] [job_timestamp]
    [prompt] [prompt_no_styles] [prompt_spaces] [prompt_words] [prompt_hash] [prompt_hash<n>] [negative_prompt_hash]
    [negative_prompt_hash<n>] [batch_number] [generation_number] [clip_skip] [denoising] [none].
    Value keys: seed, seeds (list), steps, cfg_scale, width, height, styles (list), sampler, scheduler, model_hash,
    model_name, prompt, negative_prompt, job_timestamp (datetime or text), batch_number, generation_number,
    clip_skip, denoising_strength; optional style_prompts (list of style texts, for [prompt_no_styles]) and
    max_prompt_words (default 8). Unknown tokens and tokens whose value is missing stay as written ("[foo]"),
    except [seed], which becomes empty;
    [seed_last] (single seed), [batch_number], [generation_number] (missing) and [denoising] (missing/0) vanish with
    the text before them, as in A1111. Every replacement is sanitised with :func:`sanitize_filename_part`.
    """

    def __init__(self, values: Mapping[str, object] | None = None, now: datetime.datetime | None = None) -> None:
        self.values: dict[str, object] = dict(values or {})
        self.now = now or datetime.datetime.now()
        self._replacements: dict[str, Callable[..., object]] = {
            "seed": lambda: _text(self.values.get("seed")),  # A1111: empty without a seed
            "seed_first": self._seed_first,
            "seed_last": self._seed_last,
            "steps": lambda: self.values.get("steps"),
            "cfg": lambda: self.values.get("cfg_scale"),
            "width": lambda: self.values.get("width"),
            "height": lambda: self.values.get("height"),
            "styles": self._styles,
            "sampler": lambda: self.values.get("sampler"),
            "scheduler": lambda: self.values.get("scheduler"),
            "model_hash": lambda: self.values.get("model_hash"),
            "model_name": lambda: self.values.get("model_name"),
            "date": lambda: self.now.strftime("%Y-%m-%d"),
            "datetime": self._datetime,
            "job_timestamp": self._job_timestamp,
            "prompt": lambda: self._prompt_part(replace_spaces=True),
            "prompt_no_styles": self._prompt_no_styles,
            "prompt_spaces": lambda: self._prompt_part(replace_spaces=False),
            "prompt_words": self._prompt_words,
            "prompt_hash": lambda *args: self._hash("prompt", *args),
            "negative_prompt_hash": lambda *args: self._hash("negative_prompt", *args),
            "batch_number": lambda: self._or_skip(self.values.get("batch_number")),
            "generation_number": lambda: self._or_skip(self.values.get("generation_number")),
            "clip_skip": lambda: self.values.get("clip_skip"),
            "denoising": lambda: self.values.get("denoising_strength") or _SKIP,
            "none": lambda: "",
        }

    @staticmethod
    def _or_skip(value: object) -> object:
        return _SKIP if value is None else value

    def _seeds(self) -> list[object]:
        seeds = self.values.get("seeds")
        return list(seeds) if isinstance(seeds, (list, tuple)) else []

    def _seed_first(self) -> object:
        seeds = self._seeds()
        return seeds[0] if seeds else self.values.get("seed")

    def _seed_last(self) -> object:
        seeds = self._seeds()
        return seeds[-1] if len(seeds) > 1 else _SKIP

    def _styles(self) -> object:
        styles = self.values.get("styles")
        names = [str(s) for s in styles if str(s) != "None"] if isinstance(styles, (list, tuple)) else []
        return ", ".join(names) or "None"

    def _datetime(self, fmt: str = "", tz: str | None = None) -> str:
        moment = self.now
        if tz:
            try:
                from zoneinfo import ZoneInfo

                moment = moment.astimezone(ZoneInfo(tz))
            except (ValueError, KeyError, OSError, ImportError):
                pass  # unknown time zone: local time, as A1111
        try:
            return moment.strftime(fmt or DEFAULT_TIME_FORMAT)
        except (ValueError, TypeError):
            return moment.strftime(DEFAULT_TIME_FORMAT)

    def _job_timestamp(self) -> object:
        stamp = self.values.get("job_timestamp")
        return stamp.strftime(DEFAULT_TIME_FORMAT) if isinstance(stamp, datetime.datetime) else stamp

    def _prompt_part(self, replace_spaces: bool) -> object:
        prompt = self.values.get("prompt")
        return None if prompt is None else sanitize_filename_part(str(prompt), replace_spaces=replace_spaces)

    def _prompt_no_styles(self) -> object:
        prompt = self.values.get("prompt")
        if prompt is None:
            return None
        text = str(prompt)
        styles = self.values.get("style_prompts")
        for style in styles if isinstance(styles, (list, tuple)) else []:
            style = str(style)
            if not style:
                continue
            for part in style.split("{prompt}"):
                text = text.replace(part, "").replace(", ,", ",").strip().strip(",")
            text = text.replace(style, "").strip().strip(",").strip()
        return text

    def _prompt_words(self) -> object:
        words = [w for w in _RE_NONLETTERS.split(_text(self.values.get("prompt"))) if w] or ["empty"]
        limit = self.values.get("max_prompt_words", 8)
        return " ".join(words[: limit if isinstance(limit, int) and limit > 0 else 8])

    def _hash(self, key: str, length: str = "") -> object:
        text = self.values.get(key)
        if text is None:
            return None
        size = int(length) if length.isascii() and length.isdigit() and int(length) > 0 else 8
        return hashlib.sha256(str(text).encode("utf-8")).hexdigest()[:size]

    def replace(self, token: str, args: list[str]) -> object:
        """The replacement text of one token, ``None`` to leave it as written, or the skip marker."""
        fun = self._replacements.get(token.lower())
        if fun is None:
            return None
        try:
            value = fun(*args)
        except TypeError:  # wrong number of <arguments>
            return None
        if value is None or isinstance(value, _Skip):
            return value
        if token.lower() == "prompt":
            return value  # already sanitised with spaces replaced
        return sanitize_filename_part(_text(value), replace_spaces=False)

    def apply(self, pattern: str) -> str:
        """``pattern`` with its tokens replaced; the result may still hold literal text of any kind."""
        out = []
        for m in _RE_PATTERN.finditer(pattern):
            text, token = m.groups()
            if token is None:
                out.append(text)
                continue
            args: list[str] = []
            name = token
            while (arg := _RE_PATTERN_ARG.match(name)) is not None:
                name, value = arg.groups()
                args.insert(0, value)
            replacement = self.replace(name, args)
            if isinstance(replacement, _Skip):
                continue
            out.append(text + (f"[{token}]" if replacement is None else str(replacement)))
        return "".join(out)


_SAMPLE_VALUES: Mapping[str, object] = types.MappingProxyType({
    "seed": 1, "seeds": [1, 2], "steps": 20, "cfg_scale": 7, "width": 512, "height": 512, "styles": ["style"],
    "sampler": "Euler", "scheduler": "Automatic", "model_hash": "0123456789", "model_name": "model",
    "prompt": "prompt", "negative_prompt": "negative", "batch_number": 1, "generation_number": 1, "clip_skip": 1,
    "denoising_strength": 0.5,
})


def subfolder(pattern: str, values: Mapping[str, object]) -> Path:
    """A1111's ``directories_filename_pattern`` folder: the pattern expanded (empty: ``[prompt_words]``), each
    ``/``-separated part made safe, ``.`` and ``..`` dropped: always inside the folder it is joined to."""
    text = FilenameGenerator(dict(values)).apply(pattern or "[prompt_words]")
    parts = [sanitize_filename_part(p.strip(), replace_spaces=False) or "" for p in text.split("/")]
    parts = [p for p in parts if p not in ("", ".", "..")]
    return Path(*parts) if parts else Path()


def write_infotext_file(image_path: Path, infotext: str) -> Path:
    """A1111's ``save_txt``: the infotext in ``<image name>.txt`` beside the image (written atomically)."""
    path = image_path.with_suffix(".txt")
    fileio.atomic_write_text(path, f"{infotext}\n")
    return path


def pattern_problem(pattern: str) -> str | None:
    """Why the file name ``pattern`` is refused as a setting: its expansion (with sample values; the real ones are
    sanitised) holds NUL, a path separator or ``..``. ``None`` when it names a file in the target folder."""
    if "\0" in pattern:
        return "contains a NUL character"
    expanded = FilenameGenerator(_SAMPLE_VALUES).apply(pattern)
    if any(bad in expanded for bad in ("/", "\\", "\0", "..")):
        return "must name a file, without '/', '\\' or '..'"
    return None


def _truncate_utf8(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max(max_bytes, 0)].decode("utf-8", errors="ignore")


def build_filename(seq: int, decoration: str, ext: str, basename: str = "", digits: int = 5) -> str:
    """``{seq:05}-{decoration}.{ext}`` or ``{basename}-{seq:0N}-{decoration}.{ext}``; ``-{decoration}`` is left out
    when empty. The decoration is made safe (no separators, control characters or A1111's invalid characters; no
    trailing dots/spaces) and shortened so that the name stays within :data:`MAX_FILENAME_BYTES` UTF-8 bytes."""
    number = f"{seq:0{digits}d}"
    stem = f"{basename}-{number}" if basename else number
    deco = decoration.translate(_TRANSLATE)
    room = MAX_FILENAME_BYTES - len(f"{stem}-.{ext}".encode())
    deco = _truncate_utf8(deco, room).rstrip(" .")
    return f"{stem}-{deco}.{ext}" if deco else f"{stem}.{ext}"


def save_image(image: Image.Image, folder: Path, fmt: str, infotext: str | None, pattern: str = "[seed]",
               values: Mapping[str, object] | None = None, basename: str = "", digits: int = 5,
               extra_text: Mapping[str, str] | None = None, quality: int = 95, forced_name: str = "") -> Path:
    """Save ``image`` under A1111's naming in ``folder`` (created when missing) and return its path.

    Samples: ``00000-<pattern>.png`` (seq = :func:`next_sequence_number`); grids: ``basename="grid", digits=4,
    pattern=""`` -> ``grid-0000.png``. Never overwrites: when a name is taken the next number is tried. The write is
    atomic (a temporary file hard-linked into place). JPEG/WebP images beyond those formats' limits are saved as PNG.
    ``width``/``height`` values default to the image's size. ``forced_name`` (A1111's "use original name"): the file
    is ``<forced_name>.<ext>``, or ``<forced_name>-1.<ext>``... when that is taken.
    """
    ext = fmt.lower().lstrip(".")
    if basename and (basename != sanitize_filename_part(basename) or basename in (".", "..")):
        raise ValueError(f"invalid file basename {basename!r}")
    try:
        data = images.encode_image(image, ext, infotext, quality=quality, extra_text=extra_text)
    except images.ImageFormatLimitError:
        ext = "png"
        data = images.encode_image(image, ext, infotext, extra_text=extra_text)

    merged: dict[str, object] = {"width": image.width, "height": image.height, **(values or {})}
    decoration = FilenameGenerator(merged).apply(pattern) if pattern else ""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def writer(f: IO[bytes]) -> None:
        f.write(data)

    if forced_name:
        clean = sanitize_filename_part(forced_name, replace_spaces=False) or ""
        stem = _truncate_utf8(clean, MAX_FILENAME_BYTES - 16 - len(ext)).rstrip(" .")
        if stem in ("", ".", ".."):
            raise ValueError(f"invalid file name {forced_name!r}")
        return fileio.write_new_file(folder, lambda n: f"{stem}-{n}.{ext}" if n else f"{stem}.{ext}", 0, writer)

    def name_for(n: int) -> str:
        return build_filename(n, decoration, ext, basename, digits)

    return fileio.write_new_file(folder, name_for, next_sequence_number(folder, basename), writer)

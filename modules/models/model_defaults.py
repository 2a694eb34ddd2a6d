"""Generation defaults a checkpoint carries in its own metadata (``sdwebui.defaults``, a JSON object).

A model trained for one size or sampler says so, and those values replace the usual defaults while it is the
selected model: in the UI's fields, and for the fields an API request leaves out. Only the keys below are read,
each checked for its type and range; anything else in the file is ignored.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from modules.networks.lora_files import read_safetensors_header

log = logging.getLogger(__name__)
KEY = "sdwebui.defaults"
_RANGES: dict[str, tuple[type, float, float]] = {
    "width": (int, 64, 8192), "height": (int, 64, 8192), "steps": (int, 1, 150), "cfg_scale": (float, 1.0, 30.0),
}
_TEXT = ("sampler_name", "scheduler")


def _checked(key: str, value: object) -> object | None:
    if key in _TEXT:
        return value if isinstance(value, str) and 0 < len(value) <= 64 else None
    kind, low, high = _RANGES[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number: int | float = kind(value)
    if not low <= number <= high or (key in ("width", "height") and int(number) % 8):
        return None
    return number


def read_defaults(path: Path) -> dict[str, Any]:
    """The defaults in ``path``'s metadata ({} for other formats, none, or anything unreadable). Read once per
    version of the file: every generation asks (the UI form, API requests that leave fields out)."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        stat = path.stat()
    except OSError:
        return {}
    return dict(_read(str(path), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _read(path_text: str, size: int, mtime_ns: int) -> dict[str, Any]:
    path = Path(path_text)
    try:
        raw = (read_safetensors_header(path).get("__metadata__") or {}).get(KEY)
        data = json.loads(raw) if isinstance(raw, str) else None
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(data, dict):
        return {}
    out = {}
    for key, value in data.items():
        if key in _RANGES or key in _TEXT:
            checked = _checked(key, value)
            if checked is not None:
                out[key] = checked
    return out

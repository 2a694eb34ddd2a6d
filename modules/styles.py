"""A1111's ``styles.csv``: named prompt fragments merged into the prompt (``{prompt}`` is replaced, else appended)."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

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

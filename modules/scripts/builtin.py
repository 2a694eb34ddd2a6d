"""A1111's built-in scripts, in the order A1111 lists them."""

from __future__ import annotations

from modules.scripts.base import Script


def builtin_scripts() -> list[Script]:
    return []

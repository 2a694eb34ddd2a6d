"""The extra-network tags of a prompt (``<kind:arg1:arg2...>``), read for one kind of network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def collect_tags(networks: Sequence[tuple[str, list[str]]], kinds: Sequence[str],
                 parse: Callable[[Sequence[str]], T], warn: Callable[[str], None]) -> list[T]:
    """The tags of ``kinds`` parsed in order; a tag ``parse`` refuses (``ValueError``) is named in a warning and left
    out."""
    out = []
    for kind, args in networks:
        if kind in kinds:
            try:
                out.append(parse(args))
            except ValueError as exc:
                warn(str(exc))
    return out

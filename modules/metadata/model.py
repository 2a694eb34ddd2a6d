"""The result every metadata reader returns, what the container readers collect, and the size limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# What is kept of one text item (characters), how many items, and how much text in all: a 50 MB text chunk costs
# no more than this, whatever the file holds.
MAX_ITEM_CHARS = 1 << 20
MAX_ITEMS = 64
MAX_TOTAL_CHARS = 8 << 20
# Compressed chunks (zTXt, iTXt, stealth gzip) are inflated at most to this many bytes.
MAX_INFLATED_BYTES = MAX_ITEM_CHARS * 4
# Hidden ("stealth") metadata needs the pixels: images above this many pixels are not decoded for it.
MAX_STEALTH_PIXELS = 4096 * 4096
MAX_STEALTH_BYTES = 1 << 20


@dataclass
class ImageMetadata:
    """Generation metadata of one image, whichever tool wrote it.

    ``tool``: who wrote it ("A1111", "Forge", "ComfyUI", "NovelAI", "InvokeAI", "Fooocus", "Ruined Fooocus",
    "SwarmUI", ...), ``None`` when no generation metadata was recognised. ``parameters``: A1111's names
    (``Prompt``, ``Negative prompt``, ``Steps``, ``Sampler``, ``Schedule type``, ``CFG scale``, ``Seed``, ``Size-1``,
    ``Size-2``, ``Model hash``, ``Model``, hires fields ...) as :func:`modules.infotext.parse_infotext` returns them
    for ``infotext``, the A1111-format text equivalent ("" when nothing was found). ``items``: every raw text item
    found (PNG text chunks, EXIF strings, comments, XMP, hidden data), capped in size, the one the parameters came
    from included (the PNG Info tab and ``/sdapi/v1/png-info`` show them all); ``source`` names that item.
    ``errors``: damage found in the file; ``warnings``: what could not be mapped, was cut or was corrected.
    """

    tool: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    infotext: str = ""
    items: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    verbatim: bool = False  # ``infotext`` is the source item's own text (A1111 format), not a translation
    format: str | None = None
    width: int | None = None
    height: int | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def other_items(self) -> dict[str, str]:
        """The raw items but the A1111-format text ``infotext`` was read from (A1111's ``items`` of ``/png-info``);
        other tools' JSON stays, ``infotext`` being only a translation of it."""
        return {k: v for k, v in self.items.items() if k != self.source or not self.verbatim}


@dataclass
class Container:
    """What a container reader found: text items, image facts, and notes about the file."""

    format: str
    width: int | None = None
    height: int | None = None
    items: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stealth_candidate: bool = False  # lossless pixels that may hide A1111 "stealth" metadata
    _total: int = 0

    def add(self, key: str, value: str, size: int | None = None) -> None:
        """Keep a text item, capped; a repeated key gets a numbered name; past the limits items are dropped.

        ``size``: the item's full size in the file when the reader already cut it (for the warning).
        """
        if not key:
            key = "(unnamed)"
        if len(self.items) >= MAX_ITEMS or self._total >= MAX_TOTAL_CHARS:
            note = "too many text items: some were not read"
            if note not in self.warnings:
                self.warnings.append(note)
            return
        if len(value) > MAX_ITEM_CHARS or (size is not None and size > MAX_ITEM_CHARS):
            self.warnings.append(f"{key}: {size or len(value)} bytes of text, only the first {MAX_ITEM_CHARS} kept")
            value = value[:MAX_ITEM_CHARS]
        name, n = key, 2
        while name in self.items:
            name, n = f"{key} ({n})", n + 1
        self.items[name] = value
        self._total += len(value)


@dataclass
class Parsed:
    """A format parser's reading: the prompts and A1111-named parameters (values as typed as possible)."""

    tool: str
    prompt: str = ""
    negative: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    infotext: str | None = None  # the text as written, for A1111-format sources
    warnings: list[str] = field(default_factory=list)

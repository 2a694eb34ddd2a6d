"""Captions for training images: the ``.txt`` beside an image, generated captions, and how the two combine.

A caption file sits beside its image with the same name and a ``.txt`` extension, in UTF-8 (a byte-order mark is
tolerated). The Caption operation joins the chosen captioners' texts with ``", "``, Deepbooru's first; the
"Action for existing captions" then decides what is written when a caption file is already there: Ignore (the new
caption), Keep (the old one), Prepend (old, a space, new) or Append (new, a space, old).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from PIL import Image

from modules.errors import WebUIError
from modules.training_prep.options import CAPTIONERS, EXISTING_CAPTION_ACTIONS, TrainingPrepError, check_choices

Captioner = Callable[[Image.Image], str]  # e.g. BLIP or Deepbooru from the interrogate service


class CaptionFileError(WebUIError, ValueError):
    """A caption file exists but cannot be read as text."""


def caption_path(image_path: str | os.PathLike[str]) -> Path:
    """The caption file of an image: same folder and name, ``.txt`` extension."""
    root, _ext = os.path.splitext(os.fspath(image_path))
    return Path(root + ".txt")


def read_caption(image_path: str | os.PathLike[str]) -> str | None:
    """The stripped text of the caption file beside the image, or None when there is none.

    Raises :class:`CaptionFileError` (a ``ValueError``) when the file is not UTF-8 text or cannot be read.
    """
    path = caption_path(image_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CaptionFileError(f"{path.name}: the caption file cannot be read ({exc.strerror})") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaptionFileError(f"{path.name}: the caption file is not UTF-8 text") from exc
    return text.strip()


def generate_caption(
    image: Image.Image,
    modes: Iterable[str],
    captioners: Mapping[str, Captioner],
    start: str | None = None,
) -> str:
    """``start`` and the chosen captioners' captions of the image (Deepbooru, then BLIP), the empty ones left out,
    joined with ``", "``. A chosen captioner missing from ``captioners`` is refused, naming it."""
    chosen = tuple(modes)
    check_choices("caption.option", chosen, CAPTIONERS)
    captions = [start]
    rgb = None
    for name in CAPTIONERS:
        if name not in chosen:
            continue
        captioner = captioners.get(name)
        if captioner is None:
            raise TrainingPrepError(f"caption.option: the {name} captioner is not available", field="caption.option")
        rgb = rgb if rgb is not None else image.convert("RGB")
        captions.append(captioner(rgb))
    return ", ".join(c for c in captions if c)


def caption_to_write(generated: str | None, existing: str | None, action: str = "Ignore") -> str | None:
    """The text for an output's caption file, or None when none is written (nothing was generated, or it is blank).

    ``existing`` is the caption already there; ``action`` is Ignore, Keep, Prepend or Append.
    """
    if action not in EXISTING_CAPTION_ACTIONS:
        raise TrainingPrepError(f"existing_caption_action: unknown {action!r}", field="existing_caption_action")
    if not generated:
        return None
    if action == "Prepend" and existing:
        text = f"{existing} {generated}"
    elif action == "Append" and existing:
        text = f"{generated} {existing}"
    elif action == "Keep" and existing:
        text = existing
    else:
        text = generated
    return text.strip() or None

"""Interrogate CLIP: a prompt for an image, as A1111's "Interrogate CLIP" writes it.

A BLIP caption, then for each category file (see ``clip_categories``) its best line(s) by CLIP similarity, joined by
``", "``; with ``return_ranks`` each pick reads ``(line:0.123)``, its probability within its category. The models
are read lazily from the user's ``models/BLIP/`` and ``models/CLIP/`` folders, offline, and kept loaded; after each
interrogation they go back to RAM unless ``keep_models_in_memory``; ``unload()`` frees them.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from modules.errors import ValidationError
from modules.interrogate.clip_categories import USER_FOLDER, Category, category_names, load_categories
from modules.interrogate.clip_files import ModelEntry, choose
from modules.interrogate.clip_rank import Pick, format_interrogation, rank_texts
from modules.interrogate.errors import InterrogateUnavailable

if TYPE_CHECKING:
    from modules.interrogate.blip import BlipCaptioner
    from modules.interrogate.clip_model import ClipEncoder

BLIP_FOLDER = "BLIP"
CLIP_FOLDER = "CLIP"
CPU = torch.device("cpu")


@dataclass(frozen=True)
class ClipInterrogateOptions:
    """A1111's interrogate settings (``interrogate_*``), plus which model to use when a folder holds several."""

    keep_models_in_memory: bool = False
    return_ranks: bool = False
    num_beams: int = 1
    min_length: int = 24
    max_length: int = 48
    dict_limit: int = 1500  # lines read per category file; 0: all
    skip_categories: tuple[str, ...] = ()
    blip_model: str = ""  # a name from ``blip_models()``; empty: the first
    clip_model: str = ""  # a name from ``clip_models()``; empty: the first

    def __post_init__(self) -> None:
        for name, low, high in (("num_beams", 1, 16), ("min_length", 1, 128), ("max_length", 1, 256),
                                ("dict_limit", 0, 10_000_000)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValidationError(f"interrogate {name} must be an integer from {low} to {high}", field=name)
        if isinstance(self.skip_categories, str):
            raise ValidationError("skip_categories must be a list of category names", field="skip_categories")
        object.__setattr__(self, "skip_categories", tuple(self.skip_categories))


@dataclass
class _Loaded:
    blip: tuple[Path, BlipCaptioner] | None = None
    clip: tuple[Path, ClipEncoder] | None = None
    texts: dict[str, tuple[tuple[Path, tuple[str, ...]], torch.Tensor]] = field(default_factory=dict)


class ClipInterrogator:
    """The CLIP interrogator service: one per application, safe to call from several threads (calls run one at a
    time)."""

    def __init__(self, models_root: Path, device_fn: Callable[[], torch.device],
                 options: ClipInterrogateOptions | None = None, half: bool = True,
                 extra_clip_dirs: Sequence[Path] = ()) -> None:
        """``half``: run in float16 on CUDA devices (float32 elsewhere). ``extra_clip_dirs``: CLIP model folders
        searched after ``models/CLIP`` (A1111's ``--clip-models-path``)."""
        self.models_root = Path(models_root)
        self.extra_clip_dirs = tuple(Path(d) for d in extra_clip_dirs)
        self.device_fn = device_fn
        self.options = options or ClipInterrogateOptions()
        self.half = half
        self._lock = threading.Lock()
        self._loaded = _Loaded()

    @property
    def blip_dir(self) -> Path:
        return self.models_root / BLIP_FOLDER

    @property
    def clip_dir(self) -> Path:
        return self.models_root / CLIP_FOLDER

    @property
    def categories_dir(self) -> Path:
        return self.models_root / USER_FOLDER

    def blip_models(self) -> list[str]:
        return [e.name for e in self._blip_entries()]

    def clip_models(self) -> list[str]:
        return [e.name for e in self._clip_entries()]

    def category_names(self) -> list[str]:
        """The category names in use (file stems), as ``skip_categories`` takes them."""
        return category_names(self.categories_dir)

    def categories(self, options: ClipInterrogateOptions | None = None) -> list[Category]:
        opts = options or self.options
        return load_categories(self.categories_dir, opts.skip_categories, opts.dict_limit)

    def available(self) -> bool:
        return bool(self._blip_entries()) and bool(self._clip_entries())

    def check_available(self, options: ClipInterrogateOptions | None = None) -> None:
        """Raises ``InterrogateUnavailable`` naming the folder and what to place there when a model is missing."""
        opts = options or self.options
        choose(self._blip_entries(), opts.blip_model, self.blip_dir, "BLIP")
        choose(self._clip_entries(), opts.clip_model, self.clip_dir, "CLIP")

    def interrogate(self, image: Image.Image, options: ClipInterrogateOptions | None = None) -> str:
        """The caption of ``image`` followed by its best category lines."""
        opts = options or self.options
        self.check_available(opts)
        with self._lock:
            try:
                caption = self._caption(image, opts)
                picks = self._picks(image, opts)
            finally:
                if not opts.keep_models_in_memory:
                    self._offload()
        return format_interrogation(caption, picks, opts.return_ranks)

    def check_caption(self, options: ClipInterrogateOptions | None = None) -> None:
        """Raises ``InterrogateUnavailable`` when the BLIP model :meth:`caption` needs is missing (CLIP is not)."""
        opts = options or self.options
        choose(self._blip_entries(), opts.blip_model, self.blip_dir, "BLIP")

    def caption(self, image: Image.Image, options: ClipInterrogateOptions | None = None) -> str:
        """The BLIP caption alone."""
        opts = options or self.options
        self.check_caption(opts)
        with self._lock:
            try:
                return self._caption(image, opts)
            finally:
                if not opts.keep_models_in_memory:
                    self._offload()

    def unload(self) -> None:
        """Frees both models and the cached text embeddings."""
        with self._lock:
            self._loaded = _Loaded()
            _free_memory()

    def _blip_entries(self) -> list[ModelEntry]:
        from modules.interrogate.blip import find_blip_models

        return find_blip_models(self.blip_dir)

    def _clip_entries(self) -> list[ModelEntry]:
        from modules.interrogate.clip_model import find_clip_models

        return [e for d in (self.clip_dir, *self.extra_clip_dirs) for e in find_clip_models(d)]

    def _placement(self) -> tuple[torch.device, torch.dtype]:
        device = torch.device(self.device_fn())
        return device, torch.float16 if self.half and device.type == "cuda" else torch.float32

    def _blip(self, opts: ClipInterrogateOptions) -> BlipCaptioner:
        from modules.interrogate.blip import load_blip

        entry = choose(self._blip_entries(), opts.blip_model, self.blip_dir, "BLIP")
        if self._loaded.blip is None or self._loaded.blip[0] != entry.path:
            self._loaded.blip = None
            self._loaded.blip = (entry.path, load_blip(entry))
        captioner = self._loaded.blip[1]
        captioner.to(*self._placement())
        return captioner

    def _clip(self, opts: ClipInterrogateOptions) -> ClipEncoder:
        from modules.interrogate.clip_model import load_clip

        entry = choose(self._clip_entries(), opts.clip_model, self.clip_dir, "CLIP")
        if self._loaded.clip is None or self._loaded.clip[0] != entry.path:
            self._loaded.clip = None
            self._loaded.texts.clear()
            self._loaded.clip = (entry.path, load_clip(entry))
        encoder = self._loaded.clip[1]
        encoder.to(*self._placement())
        return encoder

    def _caption(self, image: Image.Image, opts: ClipInterrogateOptions) -> str:
        captioner = self._blip(opts)
        text = captioner.caption(image, opts.num_beams, opts.min_length, opts.max_length)
        if not opts.keep_models_in_memory:
            _to_ram(captioner)
        return text

    def _picks(self, image: Image.Image, opts: ClipInterrogateOptions) -> list[Pick]:
        categories = self.categories(opts)
        if not categories:
            return []
        encoder = self._clip(opts)
        image_features = encoder.encode_image(image)
        picks: list[Pick] = []
        for category in categories:
            text_features = self._text_features(encoder, category)
            picks += rank_texts(image_features, text_features, category.items, category.top_count)
        return picks

    def _text_features(self, encoder: ClipEncoder, category: Category) -> torch.Tensor:
        """The category's text embeddings, computed once per model and category contents."""
        key = (encoder.source, category.items)
        cached = self._loaded.texts.get(category.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        features = encoder.encode_texts(category.items)
        self._loaded.texts[category.name] = (key, features)
        return features

    def _offload(self) -> None:
        for loaded in (self._loaded.blip, self._loaded.clip):
            if loaded is not None:
                _to_ram(loaded[1])


def _to_ram(model: BlipCaptioner | ClipEncoder) -> None:
    """Moves a model off its accelerator, releasing the memory it held there."""
    if model.device.type != "cpu":
        model.to(CPU)
        _free_memory()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["ClipInterrogateOptions", "ClipInterrogator", "InterrogateUnavailable"]

"""The interrogators of the application: ``clip`` (a BLIP caption and CLIP-ranked categories) and
``deepdanbooru`` (tags), with A1111's model names and settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from modules.errors import ValidationError
from modules.interrogate.clip import ClipInterrogateOptions, ClipInterrogator
from modules.interrogate.deepbooru import MODEL_FILE, DeepBooru

MODELS = ("clip", "deepdanbooru")
# A1111 keeps the DeepDanbooru file in models/torch_deepdanbooru; models/deepbooru is read too
DEEPBOORU_FOLDERS = ("torch_deepdanbooru", "deepbooru")


def deepbooru_folder(models_dir: Path) -> Path:
    """The folder holding the DeepDanbooru model (the first with the file; A1111's when none has it)."""
    for name in DEEPBOORU_FOLDERS:
        if (models_dir / name / MODEL_FILE).is_file():
            return models_dir / name
    return models_dir / DEEPBOORU_FOLDERS[0]


def clip_options(settings: Mapping[str, Any]) -> ClipInterrogateOptions:
    return ClipInterrogateOptions(
        keep_models_in_memory=bool(settings.get("interrogate_keep_models_in_memory", False)),
        return_ranks=bool(settings.get("interrogate_return_ranks", False)),
        num_beams=int(settings.get("interrogate_clip_num_beams", 1)),
        min_length=int(settings.get("interrogate_clip_min_length", 24)),
        max_length=int(settings.get("interrogate_clip_max_length", 48)),
        dict_limit=int(settings.get("interrogate_clip_dict_limit", 1500)),
        skip_categories=tuple(str(c) for c in settings.get("interrogate_clip_skip_categories") or ()))


class Interrogators:
    """Both interrogators over the user's ``models`` folder; models load at first use."""

    def __init__(self, models_dir: Path, device_fn: Callable[[], torch.device],
                 extra_clip_dirs: Sequence[Path] = ()) -> None:
        self.models_dir = models_dir
        self.device_fn = device_fn
        self.clip = ClipInterrogator(models_dir, device_fn, extra_clip_dirs=extra_clip_dirs)
        self._deepbooru: DeepBooru | None = None

    @property
    def deepbooru(self) -> DeepBooru:
        folder = deepbooru_folder(self.models_dir)
        if self._deepbooru is None or self._deepbooru.models_dir != folder:
            self._deepbooru = DeepBooru(folder, self.device_fn)
        return self._deepbooru

    def check(self, model: str, settings: Mapping[str, Any]) -> None:
        """Refuse an unknown model name, or a model whose files are missing (the message names them)."""
        if model not in MODELS:
            raise ValidationError(f"model: unknown interrogator {model!r}; use one of {', '.join(MODELS)}",
                                  field="model")
        if model == "clip":
            self.clip.check_available(clip_options(settings))
        elif not self.deepbooru.available():
            from modules.interrogate.errors import InterrogateUnavailable

            raise InterrogateUnavailable(self.deepbooru.missing_message())

    def interrogate(self, image: Image.Image, model: str, settings: Mapping[str, Any]) -> str:
        """The prompt ``model`` reads from ``image``, with the settings' options (A1111's)."""
        self.check(model, settings)
        image = image.convert("RGB")
        if model == "clip":
            return self.clip.interrogate(image, clip_options(settings))
        booru = self.deepbooru
        try:
            return booru.tags(
                image, threshold=float(settings.get("interrogate_deepbooru_score_threshold", 0.5)),
                sort_alpha=bool(settings.get("deepbooru_sort_alpha", True)),
                use_spaces=bool(settings.get("deepbooru_use_spaces", True)),
                escape=bool(settings.get("deepbooru_escape", True)),
                filter_tags=str(settings.get("deepbooru_filter_tags", "")),
                return_ranks=bool(settings.get("interrogate_return_ranks", False)))
        finally:
            if not settings.get("interrogate_keep_models_in_memory", False):
                booru.unload()

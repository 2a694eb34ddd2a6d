"""Finding the interrogators' models in the user's folders, offline.

A model is a Hugging Face format folder (``config.json``, weights, tokenizer and preprocessor files) placed in the
models root's ``BLIP/`` or ``CLIP/`` folder: directly (``models/CLIP/config.json``), as a named subfolder
(``models/CLIP/clip-vit-large-patch14/``), or as a copied hub cache (``models--org--name/snapshots/<rev>/``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.interrogate.errors import InterrogateUnavailable

SAFETENSORS_NAMES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelEntry:
    """A model found on disk: ``name`` as a user picks it, ``path`` a folder or a file, ``kind`` its format."""

    name: str
    path: Path
    kind: str


def read_config(folder: Path) -> dict[str, Any] | None:
    """A folder's ``config.json`` as a dict, or None when it is missing, too large or not a JSON object."""
    path = folder / "config.json"
    try:
        if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in SAFETENSORS_NAMES + PICKLE_NAMES)


def prefers_safetensors(folder: Path) -> bool:
    return any((folder / name).is_file() for name in SAFETENSORS_NAMES)


def _candidates(root: Path) -> list[Path]:
    folders = [root] if root.is_dir() else []
    for child in sorted(root.iterdir() if root.is_dir() else [], key=lambda p: p.name.lower()):
        if not child.is_dir():
            continue
        snapshots = child / "snapshots"
        if child.name.startswith("models--") and snapshots.is_dir():
            folders += sorted(p for p in snapshots.iterdir() if p.is_dir())
        else:
            folders.append(child)
    return folders


def _display_name(root: Path, folder: Path) -> str:
    if folder == root:
        return root.name
    relative = folder.relative_to(root).parts
    if relative[0].startswith("models--"):
        return relative[0].removeprefix("models--").replace("--", "/")
    return "/".join(relative)


def find_hf_folders(root: Path, model_type: str, architecture: str | None = None) -> list[ModelEntry]:
    """The Hugging Face folders under ``root`` whose config names ``model_type`` (and, when the config lists
    architectures, ``architecture``) and that hold weights."""
    found = []
    for folder in _candidates(root):
        config = read_config(folder)
        if config is None or config.get("model_type") != model_type or not has_weights(folder):
            continue
        architectures = config.get("architectures")
        if architecture and isinstance(architectures, list) and architecture not in architectures:
            continue
        found.append(ModelEntry(_display_name(root, folder), folder, "hf"))
    return found


def choose(entries: list[ModelEntry], name: str, folder: Path, what: str) -> ModelEntry:
    """The entry called ``name`` (the first one when ``name`` is empty)."""
    if not entries:
        raise InterrogateUnavailable(f"no {what} model found in {folder}: {missing_hint(what)}")
    if not name:
        return entries[0]
    for entry in entries:
        if name in (entry.name, entry.path.name):
            return entry
    names = ", ".join(e.name for e in entries)
    raise InterrogateUnavailable(f"{what} model {name!r} not found in {folder} (found: {names})")


def missing_hint(what: str) -> str:
    if what == "BLIP":
        return ("place a Hugging Face BLIP captioning folder there (config.json, model.safetensors and the tokenizer "
                "files, for example a copy of Salesforce/blip-image-captioning-base), or "
                "model_base_caption_capfilt_large.pth with a BERT vocab.txt beside it")
    return ("place a Hugging Face CLIP folder there (config.json, model.safetensors and the tokenizer files, for "
            "example a copy of openai/clip-vit-large-patch14); TorchScript files such as ViT-L-14.pt are not read")


@dataclass
class LoadedModel:
    """A loaded Hugging Face model with its tokenizer and image preprocessing, and the folder it came from."""

    model: Any
    tokenizer: Any
    image_processor: Any
    source: Path

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        module: torch.nn.Module = self.model
        module.to(device=device, dtype=dtype)

    @property
    def device(self) -> torch.device:
        param: torch.Tensor = next(self.model.parameters())
        return param.device

    @property
    def dtype(self) -> torch.dtype:
        param: torch.Tensor = next(self.model.parameters())
        return param.dtype

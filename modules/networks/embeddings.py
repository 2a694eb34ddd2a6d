"""Textual-inversion embeddings, found, read and matched in prompts as A1111 1.10 does.

- files: ``.pt``, ``.bin`` and ``.safetensors`` in the embeddings folders, sub-folders included; the embedding's name
  is the file name without its extension (A1111's ``EmbeddingDatabase.load_from_dir``). Empty files are passed over
  silently, as A1111 does.
- layouts (A1111's ``create_embedding_from_data``): A1111's own ``string_to_param`` dict (with ``step``,
  ``sd_checkpoint``, ``sd_checkpoint_name``), SDXL's ``clip_l`` + ``clip_g`` pair, and a dict of one tensor (a
  diffusers concept ``.bin``, a ``.safetensors`` with ``emb_params``).
- which fit: the vector width must be the text encoder's (SD 1.x 768, SD 2.x 1024); SDXL needs the pair with
  ``clip_l`` as wide as the first encoder and ``clip_g`` as the second. The others are listed as "skipped".
- in prompts: each name is tokenized once and looked up by its token ids, the longest name first at each position
  (A1111's ``find_embedding_at_position``); the chunker gives each vector one position of the 75 and the text
  encoder sees the vectors instead of those positions' token embeddings.
- the short hash written as ``TI hashes`` is the first 12 hex digits of the whole file's sha256.

Pickles are read only with ``torch.load(..., weights_only=True)``: a pickle that asks for code is refused and the
file reported, never run.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modules.hashing import HashCache, sha256_of_files
from modules.prompts.chunks import EmbeddingHit

if TYPE_CHECKING:
    from modules.models.loader import ModelParts

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".bin", ".safetensors")
PAIR_KEYS = ("clip_l", "clip_g")  # SDXL: vectors for the first (CLIP ViT-L) and second (OpenCLIP bigG) encoder
# A real embedding is a few KiB to a few MiB; anything far larger is a model put in the wrong folder, not read.
MAX_FILE_BYTES = 64 * 1024 * 1024

Tensor = torch.Tensor


class EmbeddingFileError(ValueError):
    """Why a file could not be read as an embedding; the message is shown to the user."""


@dataclass(frozen=True, eq=False)
class Embedding:
    """One embedding file, read: ``vec`` is ``(vectors, width)``, or SDXL's ``{"clip_l": ..., "clip_g": ...}``."""

    name: str
    path: Path
    vec: Tensor | dict[str, Tensor]
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shorthash: str = ""

    @property
    def is_pair(self) -> bool:
        return isinstance(self.vec, dict)

    @property
    def shape(self) -> int:
        """A1111's ``shape``: the vector width; for an SDXL pair both widths added (768 + 1280 = 2048)."""
        if isinstance(self.vec, dict):
            return sum(int(v.shape[-1]) for v in self.vec.values())
        return int(self.vec.shape[-1])

    @property
    def vectors(self) -> int:
        """How many prompt positions the embedding takes (for a pair, ``clip_g``'s count, as in A1111)."""
        if isinstance(self.vec, dict):
            return int(self.vec["clip_g"].shape[0])
        return int(self.vec.shape[0])

    def rows(self, key: str | None) -> Tensor:
        """The vectors one text encoder sees: ``key`` names the encoder of an SDXL pair (None: a single tensor)."""
        if isinstance(self.vec, dict):
            if key is None:
                raise ValueError(f"embedding {self.name} is an SDXL pair: say which encoder")
            return self.vec[key]
        return self.vec

    def api(self) -> dict[str, Any]:
        """A1111's ``EmbeddingItem`` of ``/sdapi/v1/embeddings``."""
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint,
                "sd_checkpoint_name": self.sd_checkpoint_name, "shape": self.shape, "vectors": self.vectors}


# --- reading files ---------------------------------------------------------------------------------------------------


def read_embedding_data(path: Path) -> Any:
    """The raw content of an embedding file: pickles only as plain data (tensors, dicts, numbers, strings)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _as_matrix(value: object, what: str) -> Tensor:
    """A float32 ``(vectors, width)`` copy; a single vector (diffusers' ``(width,)``) becomes one row."""
    if not isinstance(value, torch.Tensor):
        raise EmbeddingFileError(f"{what} is not a tensor")
    if not (value.is_floating_point() and value.ndim in (1, 2)):
        raise EmbeddingFileError(f"{what} is not a list of vectors (shape {tuple(value.shape)}, {value.dtype})")
    matrix = value.detach().to(device="cpu", dtype=torch.float32)
    return matrix.unsqueeze(0) if matrix.ndim == 1 else matrix


def embedding_vectors(data: object) -> Tensor | dict[str, Tensor]:
    """The vectors of a file's content, the layouts tried in A1111's order."""
    if not isinstance(data, Mapping):
        raise EmbeddingFileError("not an embedding: the file holds no dictionary")
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            raise EmbeddingFileError("embedding file has multiple terms in it" if isinstance(params, Mapping)
                                     else "string_to_param is not a dictionary")
        return _as_matrix(next(iter(params.values())), "string_to_param")
    if all(key in data for key in PAIR_KEYS):
        return {key: _as_matrix(data[key], key) for key in PAIR_KEYS}
    if data and isinstance(next(iter(data.values())), torch.Tensor):
        if len(data) != 1:
            raise EmbeddingFileError("embedding file has multiple terms in it")
        return _as_matrix(next(iter(data.values())), "the embedding tensor")
    raise EmbeddingFileError("neither a textual inversion embedding nor a diffusers concept")


def _int_or_none(value: object) -> int | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def load_embedding(path: Path, hashes: HashCache | None = None) -> Embedding:
    """Read one file as an embedding; :class:`EmbeddingFileError` says why it is not one."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise EmbeddingFileError(f"too large for an embedding ({size // (1024 * 1024)} MiB)")
    try:
        data = read_embedding_data(path)
    except Exception as exc:  # a corrupt file fails in many ways (zip, pickle, safetensors, EOF errors)
        raise EmbeddingFileError(f"unreadable ({_first_line(exc)})") from None
    vec = embedding_vectors(data)
    assert isinstance(data, Mapping)  # checked by embedding_vectors
    meta = _safetensors_metadata(path) if path.suffix.lower() == ".safetensors" else {}
    step = _int_or_none(data.get("step"))
    if step is None and meta.get("step", "").isdigit():
        step = int(meta["step"])
    digest = hashes.sha256(path.resolve(), [path]) if hashes is not None else sha256_of_files([path])
    return Embedding(name=path.stem, path=path, vec=vec, step=step,
                     sd_checkpoint=_str_or_none(data.get("sd_checkpoint")) or meta.get("sd_checkpoint") or None,
                     sd_checkpoint_name=_str_or_none(data.get("sd_checkpoint_name"))
                     or meta.get("sd_checkpoint_name") or None, shorthash=digest[:12])


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The text metadata of a ``.safetensors`` embedding (the step and checkpoint of one trained here)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # read already; metadata is optional
        return {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:200] if text else "") or type(exc).__name__


def _embedding_files(folder: Path) -> Iterator[Path]:
    """Embedding files under ``folder`` in a stable order: a folder's files, then its sub-folders (symlinks
    followed, as A1111's ``os.walk(followlinks=True)``, each real folder once so a link loop ends)."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(SUFFIXES):
                yield Path(root) / name


# --- matching names in prompts ---------------------------------------------------------------------------------------


class EmbeddingLookup:
    """Names tokenized by one tokenizer, found by token ids; implements the chunker's ``EmbeddingFinder``.

    As A1111's ``ids_lookup``: candidates are grouped by their first id and tried longest first (ties in
    registration order).
    """

    def __init__(self, embeddings: Iterable[Embedding], tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        by_first: dict[int, list[tuple[list[int], Embedding]]] = {}
        for emb in embeddings:
            ids = [int(t) for t in tokenizer(emb.name, truncation=False, add_special_tokens=False)["input_ids"]]
            if ids:
                by_first.setdefault(ids[0], []).append((ids, emb))
        self._by_first = {first: sorted(found, key=lambda item: len(item[0]), reverse=True)
                          for first, found in by_first.items()}

    def find_at(self, tokens: Sequence[int], offset: int) -> EmbeddingHit | None:
        for ids, emb in self._by_first.get(tokens[offset], ()):
            if list(tokens[offset:offset + len(ids)]) == ids:
                return EmbeddingHit(name=emb.name, vectors=emb.vectors, length=len(ids))
        return None


@dataclass
class EmbeddingSet:
    """The embeddings of the folders as they apply to one loaded model.

    ``loaded`` is sorted by name (case-insensitive), as A1111 lists them; ``skipped`` is in file order. A prompt
    matches the loaded ones only.
    """

    loaded: dict[str, Embedding]
    skipped: dict[str, Embedding]
    registered: list[Embedding] = field(default_factory=list)  # loaded, in A1111's registration order
    _lookups: list[EmbeddingLookup] = field(default_factory=list, repr=False)

    def __bool__(self) -> bool:
        return bool(self.loaded)

    def lookup(self, tokenizer: Any) -> EmbeddingLookup:
        """The name matcher for ``tokenizer``, built once per tokenizer."""
        for found in self._lookups:
            if found.tokenizer is tokenizer:
                return found
        made = EmbeddingLookup(self.registered, tokenizer)
        self._lookups.append(made)
        return made

    def api(self) -> dict[str, dict[str, dict[str, Any]]]:
        """A1111's ``/sdapi/v1/embeddings`` response."""
        return {"loaded": {name: emb.api() for name, emb in self.loaded.items()},
                "skipped": {name: emb.api() for name, emb in self.skipped.items()}}


def fits(embedding: Embedding, parts: ModelParts) -> bool:
    """Whether the embedding's vectors are as wide as the model's text encoder(s) take them."""
    width = int(parts.text_encoder.config.hidden_size)
    if not parts.family.is_xl:
        return not embedding.is_pair and embedding.shape == width
    if parts.text_encoder_2 is None or not isinstance(embedding.vec, dict):
        return False
    width_g = int(parts.text_encoder_2.config.hidden_size)
    return int(embedding.vec["clip_l"].shape[-1]) == width and int(embedding.vec["clip_g"].shape[-1]) == width_g


def build_set(embeddings: Iterable[Embedding], parts: ModelParts) -> EmbeddingSet:
    """Sort files into loaded and skipped for ``parts``; a later file of the same name replaces an earlier one."""
    registered: dict[str, Embedding] = {}
    skipped: dict[str, Embedding] = {}
    for emb in embeddings:
        if fits(emb, parts):
            registered.pop(emb.name, None)  # A1111 re-registers at the end of the lookup order
            registered[emb.name] = emb
        else:
            skipped[emb.name] = emb
    loaded = {emb.name: emb for emb in sorted(registered.values(), key=lambda e: e.name.lower())}
    return EmbeddingSet(loaded=loaded, skipped=skipped, registered=list(registered.values()))


# --- the folders -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FileEntry:
    stamp: tuple[int, int]  # size, mtime in ns
    embedding: Embedding | None
    problem: str | None


class EmbeddingDatabase:
    """The embedding files of the configured folders. ``refresh`` rescans them; a file is read again only when its
    size or mtime changed, so calling it before every job is cheap. ``problems`` says which files were not loaded
    and why (each also logged once, as a warning)."""

    def __init__(self, dirs: Sequence[Path], hashes: HashCache | None = None) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.hashes = hashes
        self._lock = threading.Lock()
        self._files: dict[Path, _FileEntry] = {}
        self._refreshed = False

    def refresh(self) -> None:
        with self._lock:
            files: dict[Path, _FileEntry] = {}
            for folder in self.dirs:
                if not folder.is_dir():
                    continue
                for path in _embedding_files(folder):
                    entry = self._entry(path)
                    if entry is not None:
                        files[path] = entry
            self._files = files
            self._refreshed = True

    def _entry(self, path: Path) -> _FileEntry | None:
        """The file's entry, read again only if it changed; None for an empty or vanished file."""
        try:
            stat = path.stat()
        except OSError:
            return None
        if stat.st_size == 0:
            return None
        stamp = (stat.st_size, stat.st_mtime_ns)
        known = self._files.get(path)
        if known is not None and known.stamp == stamp:
            return known
        try:
            return _FileEntry(stamp, load_embedding(path, self.hashes), None)
        except (EmbeddingFileError, OSError) as exc:
            problem = f"textual inversion embedding {path} not loaded: {exc}"
            log.warning("%s", problem)
            return _FileEntry(stamp, None, problem)

    def _ensure_scanned(self) -> None:
        if not self._refreshed:
            self.refresh()

    @property
    def embeddings(self) -> list[Embedding]:
        """Every file read as an embedding, in folder order, whatever model it fits."""
        self._ensure_scanned()
        return [e.embedding for e in self._files.values() if e.embedding is not None]

    @property
    def problems(self) -> list[str]:
        self._ensure_scanned()
        return [e.problem for e in self._files.values() if e.problem is not None]

    def for_model(self, parts: ModelParts) -> EmbeddingSet:
        """Which embeddings the loaded model can use (``loaded``) and which not (``skipped``)."""
        return build_set(self.embeddings, parts)

    def api(self, parts: ModelParts | None) -> dict[str, dict[str, dict[str, Any]]]:
        """A1111's ``/sdapi/v1/embeddings``; with no model loaded, both lists are empty (as in A1111, which reads
        embeddings when a model loads)."""
        if parts is None:
            return {"loaded": {}, "skipped": {}}
        return self.for_model(parts).api()


def ti_hashes(used: Mapping[str, str]) -> str | None:
    """A1111's ``TI hashes`` infotext value, ``name: hash, name2: hash2``, from ``{name: shorthash}``; names lose
    ``:`` and ``,`` (which would break the list), embeddings without a hash are left out. None when empty."""
    items = [f"{name.replace(':', '').replace(',', '')}: {short}" for name, short in used.items() if short]
    return ", ".join(items) if items else None

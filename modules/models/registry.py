"""Discovery of checkpoints on disk and A1111's names, titles and hash aliases for them."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from modules.errors import ModelLoadError
from modules.hashing import HashCache, legacy_hash
from modules.paths import name_problem

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
DIRECT_SUFFIXES = (*CHECKPOINT_SUFFIXES, ".pt", ".pth", ".bin")  # files that --ckpt PATH may name
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _diffusers_weight_files(folder: Path) -> list[Path]:
    files: list[Path] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files += sorted(f for f in sub.iterdir() if f.is_file() and f.suffix in _WEIGHT_SUFFIXES)
    return files


def is_diffusers_model(folder: Path) -> bool:
    """A folder with ``model_index.json`` and weight files (a config-only folder is not a model)."""
    return (folder / "model_index.json").is_file() and bool(_diffusers_weight_files(folder))


@dataclass
class CheckpointInfo:
    path: Path
    name: str  # relative to its models folder, with extension, as A1111 names it
    kind: str  # safetensors, ckpt or diffusers
    sha256: str | None = None
    _legacy: str | None = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        stem = self.name.replace("\\", "_").replace("/", "_")
        return os.path.splitext(stem)[0] if self.kind != "diffusers" else stem

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def legacy_hash(self) -> str:
        if self._legacy is None:
            files = self.weight_files()
            self._legacy = legacy_hash(files[0]) if files else "NOFILE"
        return self._legacy

    def weight_files(self) -> list[Path]:
        return _diffusers_weight_files(self.path) if self.kind == "diffusers" else [self.path]

    def aliases(self) -> list[str]:
        names = [self.title, self.name, self.model_name, os.path.splitext(self.name)[0]]
        if self.sha256:
            names += [self.sha256, self.shorthash or "", f"{self.model_name} [{self.shorthash}]"]
        return [n for n in names if n]


class CheckpointRegistry:
    """The checkpoints found in the model folders; refreshed on demand, hashes computed lazily and cached."""

    def __init__(self, folders: list[Path], hash_cache: HashCache) -> None:
        self.folders = [Path(f) for f in folders]
        self.hash_cache = hash_cache
        self._lock = threading.Lock()
        self._items: list[CheckpointInfo] = []
        self._broken: dict[Path, tuple[tuple[int, int], str]] = {}  # path -> (size and mtime then, the error)
        self.refresh()

    def refresh(self) -> list[CheckpointInfo]:
        found: dict[Path, CheckpointInfo] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for info in _scan(folder):
                found.setdefault(info.path.resolve(), info)
        items = sorted(found.values(), key=lambda i: i.name.lower())
        for info in items:
            info.sha256 = self.hash_cache.cached(info.path, info.weight_files())
        with self._lock:
            self._items = items
        return list(items)

    def list(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._items)

    def mark_broken(self, info: CheckpointInfo, error: str) -> None:
        """Remember that ``info`` failed to load with ``error`` (until the file changes)."""
        log.warning("checkpoint %s cannot be loaded: %s", info.name, error)
        with self._lock:
            self._broken[info.path.resolve()] = (_stamp(info.path), error)

    def error_of(self, info: CheckpointInfo) -> str | None:
        """Why ``info`` could not be loaded, while its file is unchanged since; ``None`` when it is not broken."""
        with self._lock:
            entry = self._broken.get(info.path.resolve())
        if entry is None:
            return None
        return entry[1] if entry[0] == _stamp(info.path) else None

    def ensure_hash(self, info: CheckpointInfo) -> str:
        if info.sha256 is None:
            log.info("calculating sha256 for %s", info.name)
            info.sha256 = self.hash_cache.sha256(info.path, info.weight_files())
        return info.sha256

    def find(self, query: str) -> CheckpointInfo | None:
        """Look a checkpoint up as A1111 does: title, name, model name, hashes, then the shortest matching title.

        Only the scanned checkpoints are searched; a query that is a path (absolute, with ``..``, with NUL) matches
        nothing, so it is never followed outside the model folders.
        """
        query = query.strip()
        if not query or name_problem(query):
            return None
        items = self.list()
        for info in items:
            if query in info.aliases() or info.legacy_hash == query:
                return info
        base = query.rsplit(" [", 1)[0] if query.endswith("]") else query
        for info in items:
            if base in info.aliases():
                return info
        matches = sorted((i for i in items if base in i.title), key=lambda i: len(i.title))
        return matches[0] if matches else None

    def from_path(self, path: Path) -> CheckpointInfo:
        """An entry for a file or folder given directly (``--ckpt PATH``), whether or not it is in a model folder.

        Only a checkpoint may be named: a file with a model suffix (``.safetensors``, ``.ckpt``, ``.pt``, ``.pth``,
        ``.bin``) or a diffusers folder; anything else raises :class:`ModelLoadError` before it is read or hashed.
        """
        path = Path(path)
        if "\0" in str(path):
            raise ModelLoadError("checkpoint not found: the path contains a NUL character")
        if not (is_diffusers_model(path) if path.is_dir() else path.suffix.lower() in DIRECT_SUFFIXES):
            raise ModelLoadError(f"{path.name or path} is not a checkpoint (a .safetensors or .ckpt file or a "
                                 "diffusers folder)")
        resolved = path.resolve()
        for info in self.list():
            if info.path.resolve() == resolved:
                return info
        kind = "diffusers" if path.is_dir() else path.suffix.lstrip(".").lower()
        info = CheckpointInfo(path=path, name=path.name, kind=kind)
        if path.exists():
            info.sha256 = self.hash_cache.cached(path, info.weight_files() or [path])
        return info


def _stamp(path: Path) -> tuple[int, int]:
    """A file's size and modification time (a folder's own), to tell a replaced file from the broken one."""
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _scan(folder: Path) -> list[CheckpointInfo]:
    out: list[CheckpointInfo] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        kept = []
        for d in dirs:
            sub = here / d
            if is_diffusers_model(sub):
                out.append(CheckpointInfo(path=sub, name=sub.relative_to(folder).as_posix(), kind="diffusers"))
            elif not (sub / "model_index.json").is_file():
                kept.append(d)
        dirs[:] = kept
        for name in sorted(files):
            path = here / name
            if name.startswith(".") or path.suffix.lower() not in CHECKPOINT_SUFFIXES:
                continue
            if name.lower().endswith((".vae.safetensors", ".vae.ckpt")):  # a VAE beside a checkpoint, as in A1111
                continue
            out.append(CheckpointInfo(path=path, name=path.relative_to(folder).as_posix(),
                                      kind=path.suffix.lower().lstrip(".")))
    return out

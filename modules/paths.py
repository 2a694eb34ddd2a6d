"""The folders the product reads and writes, A1111's layout: ``models/Stable-diffusion``, ``outputs``, ...

Also the checks that keep names and folders coming from a request inside these folders.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from modules import fileio

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``$SDWEBUI_DATA_DIR``, else the source checkout this runs from, else the current directory."""
    env = os.environ.get("SDWEBUI_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    if (PROJECT_ROOT / "pyproject.toml").is_file() and os.access(PROJECT_ROOT, os.W_OK):
        return PROJECT_ROOT
    return Path.cwd()


def under(root: Path, value: str) -> Path:
    """``value`` as a folder setting is read: ``~`` expanded, relative values taken from ``root``."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it once both are resolved (symbolic links and ``..`` followed)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, ValueError, RuntimeError):  # NUL, a symlink loop
        return False


def folder_problem(value: str, root: Path) -> str | None:
    """Why ``value`` may not be a folder below ``root`` (NUL, an absolute path elsewhere, ``..`` leaving it, a link
    pointing out); ``None`` when it stays inside. Backslashes count as separators too, as on Windows."""
    if "\0" in value:
        return "contains a NUL character"
    if not is_inside(under(root, value.replace("\\", "/")), root) or not is_inside(under(root, value), root):
        return "must stay inside the data folder"
    return None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a model name relative to a model folder (NUL, absolute, ``..``); ``None`` if fine."""
    if "\0" in name:
        return "contains a NUL character"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "must be a model name, not a path"
    if ".." in name.replace("\\", "/").split("/"):
        return "must not contain '..'"
    return None


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    models_dir: Path
    extra_ckpt_dirs: tuple[Path, ...] = field(default=())
    lora_dir_option: Path | None = None  # --lora-dir: instead of models/Lora
    embeddings_dir_option: Path | None = None  # --embeddings-dir: instead of embeddings/
    hypernetwork_dir_option: Path | None = None  # --hypernetwork-dir: instead of models/hypernetworks
    styles_file_options: tuple[str, ...] = ()  # --styles-file: paths or wildcards instead of styles.csv

    @classmethod
    def create(cls, data_dir: Path | str | None = None, models_dir: Path | str | None = None,
               ckpt_dirs: list[Path | str] | tuple[Path | str, ...] = (), lora_dir: Path | str | None = None,
               embeddings_dir: Path | str | None = None, hypernetwork_dir: Path | str | None = None,
               styles_files: list[str] | tuple[str, ...] = ()) -> Paths:
        data = Path(data_dir).expanduser().resolve() if data_dir else default_data_dir()
        models = Path(models_dir).expanduser().resolve() if models_dir else data / "models"
        return cls(data, models, tuple(Path(p).expanduser().resolve() for p in ckpt_dirs),
                   Path(lora_dir).expanduser().resolve() if lora_dir else None,
                   Path(embeddings_dir).expanduser().resolve() if embeddings_dir else None,
                   Path(hypernetwork_dir).expanduser().resolve() if hypernetwork_dir else None,
                   tuple(str(Path(p).expanduser()) for p in styles_files))

    @property
    def ckpt_dirs(self) -> list[Path]:
        """``--ckpt-dir`` folders first (as A1111 lists them), then ``models/Stable-diffusion``."""
        return [*self.extra_ckpt_dirs, self.models_dir / "Stable-diffusion"]

    @property
    def vae_dir(self) -> Path:
        return self.models_dir / "VAE"

    @property
    def lora_dir(self) -> Path:
        return self.lora_dir_option or self.models_dir / "Lora"

    @property
    def hypernetwork_dir(self) -> Path:
        return self.hypernetwork_dir_option or self.models_dir / "hypernetworks"

    @property
    def embeddings_dir(self) -> Path:
        if self.embeddings_dir_option is not None:
            return self.embeddings_dir_option
        return self.data_dir / "embeddings" if (self.data_dir / "embeddings").is_dir() else \
            self.models_dir / "embeddings"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.json"

    @property
    def styles_file(self) -> Path:
        return self.data_dir / "styles.csv"

    @property
    def styles_patterns(self) -> list[str]:
        """The styles files (paths or wildcards): ``--styles-file`` values, else ``styles.csv`` of the data folder."""
        return list(self.styles_file_options) or [str(self.styles_file)]

    @property
    def hash_cache_file(self) -> Path:
        return self.data_dir / "cache" / "hashes.json"

    def data_path(self, value: str) -> Path:
        """An output folder setting as a path (relative values are below the data folder)."""
        return under(self.data_dir, value)

    def remove_leftovers(self, output_dirs: Iterable[str] = ()) -> tuple[int, int]:
        """Remove the temporary files that killed saves and merges left in the output and model folders (and the
        data and cache folders themselves); logs and returns how many and their bytes."""
        trees = [self.outputs_dir, self.models_dir, *self.extra_ckpt_dirs, self.embeddings_dir]
        for value in output_dirs:
            try:
                trees.append(self.data_path(value))
            except (ValueError, RuntimeError):
                continue
        flat = [self.data_dir, self.hash_cache_file.parent]
        flat += [t for t in trees if is_inside(self.data_dir, t)]  # the data folder or above: never walked through
        trees = [t for t in trees if not is_inside(self.data_dir, t)]
        count, size = fileio.remove_leftovers(trees, flat)
        if count:
            log.info("removed %d leftover temporary file(s) of interrupted saves and merges (%d bytes, %.1f MiB)",
                     count, size, size / 2**20)
        return count, size

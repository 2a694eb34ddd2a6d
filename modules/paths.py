"""The folders the product reads and writes, A1111's layout: ``models/Stable-diffusion``, ``outputs``, ..."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``$SDWEBUI_DATA_DIR``, else the source checkout this runs from, else the current directory."""
    env = os.environ.get("SDWEBUI_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    if (PROJECT_ROOT / "pyproject.toml").is_file() and os.access(PROJECT_ROOT, os.W_OK):
        return PROJECT_ROOT
    return Path.cwd()


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    models_dir: Path
    extra_ckpt_dirs: tuple[Path, ...] = field(default=())

    @classmethod
    def create(cls, data_dir: Path | str | None = None, models_dir: Path | str | None = None,
               ckpt_dirs: list[Path | str] | tuple[Path | str, ...] = ()) -> Paths:
        data = Path(data_dir).expanduser().resolve() if data_dir else default_data_dir()
        models = Path(models_dir).expanduser().resolve() if models_dir else data / "models"
        return cls(data, models, tuple(Path(p).expanduser().resolve() for p in ckpt_dirs))

    @property
    def ckpt_dirs(self) -> list[Path]:
        """``--ckpt-dir`` folders first (as A1111 lists them), then ``models/Stable-diffusion``."""
        return [*self.extra_ckpt_dirs, self.models_dir / "Stable-diffusion"]

    @property
    def vae_dir(self) -> Path:
        return self.models_dir / "VAE"

    @property
    def lora_dir(self) -> Path:
        return self.models_dir / "Lora"

    @property
    def embeddings_dir(self) -> Path:
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
    def hash_cache_file(self) -> Path:
        return self.data_dir / "cache" / "hashes.json"

"""Building the application's services once, at start-up; tests build their own."""

from __future__ import annotations

import logging

from modules.engine import Engine
from modules.hashing import HashCache
from modules.models.manager import DeviceConfig, ModelManager, default_device
from modules.models.registry import CheckpointRegistry
from modules.paths import Paths


def quiet_libraries() -> None:
    """Silence the progress bars and advisory warnings of diffusers and transformers."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def build_engine(paths: Paths | None = None, device: str | None = None, precision: str = "auto",
                 attention: str = "Automatic", cache_limit: int = 1) -> Engine:
    quiet_libraries()
    paths = paths or Paths.create()
    registry = CheckpointRegistry(paths.ckpt_dirs, HashCache(paths.hash_cache_file))
    config = DeviceConfig(device=device or default_device(), precision=precision, attention=attention)
    return Engine(ModelManager(registry, config, cache_limit))

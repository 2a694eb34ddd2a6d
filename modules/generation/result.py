"""What a generation returns, and the context each image's infotext is written with."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from PIL import Image

from modules.models.loader import ModelParts
from modules.params import InfotextContext
from modules.requests import GenerationRequest


@dataclass
class GenerationResult:
    request: GenerationRequest  # with the seeds resolved
    images: list[Image.Image]
    infotexts: list[str]
    all_prompts: list[str]
    all_negative_prompts: list[str]
    all_seeds: list[int]
    all_subseeds: list[int]
    model_name: str = ""
    model_hash: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    job_timestamp: str = field(default_factory=lambda: _dt.datetime.now().strftime("%Y%m%d%H%M%S"))
    extra_params: dict[str, object] = field(default_factory=dict)


def infotext_context(parts: ModelParts | None, seed: int, subseed: int) -> InfotextContext:
    """The model, VAE and seeds an image's infotext records."""
    info = parts.info if parts is not None else None
    vae = parts.vae_info if parts is not None else None
    return InfotextContext(seed=seed, subseed=subseed, model_hash=info.shorthash if info else None,
                           model_name=info.model_name if info else None, vae_name=vae.name if vae else None,
                           vae_hash=parts.vae_hash if parts is not None else None,
                           inpainting=parts.is_inpaint if parts is not None else False)

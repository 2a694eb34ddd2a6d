"""External VAEs (A1111's ``sd_vae``): found in ``models/VAE`` or beside a checkpoint, swapped into the model.

"Automatic" uses ``<checkpoint>.vae.safetensors|.vae.pt|.vae.ckpt`` beside the checkpoint, or a file of the same
name in ``models/VAE``, else the VAE baked into the checkpoint; "None" always uses the baked one. Files may be in the
original layout (``encoder.down.0.block...``, with or without ``first_stage_model.``) or in diffusers' layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from modules.errors import ModelLoadError
from modules.hashing import HashCache
from modules.models.checkpoint_file import CheckpointFile

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

log = logging.getLogger(__name__)
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
AUTOMATIC, NONE = "Automatic", "None"


@dataclass(frozen=True)
class VaeInfo:
    path: Path
    name: str  # file name, as A1111 lists it


def list_vaes(folder: Path) -> list[VaeInfo]:
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VAE_SUFFIXES
                   and not p.name.startswith("."))
    return [VaeInfo(p, p.relative_to(folder).as_posix()) for p in files]


def resolve_vae(choice: str | None, checkpoint: Path | None, folder: Path) -> VaeInfo | None:
    """The VAE file to use for ``choice`` (a name from :func:`list_vaes`, Automatic or None); None = the baked one."""
    choice = choice or AUTOMATIC
    if choice == NONE:
        return None
    known = list_vaes(folder)
    if choice != AUTOMATIC:
        for info in known:
            if choice in (info.name, info.path.stem, Path(info.name).stem):
                return info
        raise ModelLoadError(f"VAE not found: {choice!r}")
    if checkpoint is None:
        return None
    stem = checkpoint.name.rsplit(".", 1)[0] if checkpoint.is_file() else checkpoint.name
    for suffix in VAE_SUFFIXES:
        beside = checkpoint.parent / f"{stem}.vae{suffix}"
        if beside.is_file():
            return VaeInfo(beside, beside.name)
    for info in known:
        if info.path.name.rsplit(".", 1)[0] in (stem, f"{stem}.vae"):
            return info
    return None


def load_vae(info: VaeInfo, like: AutoencoderKL, device: torch.device | str | None = None) -> AutoencoderKL:
    """An ``AutoencoderKL`` with ``info``'s weights and the shapes and dtype of the model's own VAE."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    tensors = CheckpointFile(info.path).tensors([""])
    tensors = {k.removeprefix("first_stage_model."): v for k, v in tensors.items()
               if not k.startswith(("loss.", "model_ema."))}
    diffusers_layout = any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in tensors)
    state = tensors if diffusers_layout else convert_ldm_vae_checkpoint(
        {f"first_stage_model.{k}": v for k, v in tensors.items()}, like.config)
    vae: AutoencoderKL = AutoencoderKL.from_config(like.config)
    target = next(like.parameters())
    try:
        vae.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise ModelLoadError(f"the VAE {info.name} does not fit this model ({first})") from None
    vae.to(device=device or target.device, dtype=target.dtype)  # type: ignore[call-arg]  # diffusers types .to via wraps
    return vae.eval()


def vae_hash(info: VaeInfo, cache: HashCache) -> str:
    return cache.sha256(info.path, [info.path])[:10]

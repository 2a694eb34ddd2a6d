"""Live-preview decoders: A1111's ``show_progress_type`` (Full, Approx NN, Approx cheap, TAESD).

TAESD (Ollin Boer Bohan's tiny autoencoder) decodes the sampler's latents into a recognisable picture for a
fraction of the VAE's cost. Its decoder weights are the files A1111 reads, put in ``models/VAE-approx``:
``taesd_decoder.pth`` for SD 1.x/2.x and ``taesdxl_decoder.pth`` for SDXL (``.safetensors`` copies are read too).
They hold the state of the original ``nn.Sequential`` decoder, whose layers are diffusers' ``DecoderTiny`` layers
one place later (the original starts with its clamp as a layer); the network here is diffusers'.

"Full" decodes with the model's own VAE; "Approx cheap" is a fixed linear map of the latent channels to RGB.
"Approx NN" (A1111's small convolutional approximation, ``VAE-approx/model.pt``) is not built here: it shows the
cheap approximation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from modules.models.loader import ModelParts

log = logging.getLogger(__name__)

CHOICES = ("Full", "Approx NN", "Approx cheap", "TAESD")
FILES = {False: "taesd_decoder", True: "taesdxl_decoder"}
PreviewDecoder = Callable[[torch.Tensor, "ModelParts"], Image.Image]


class TaesdError(ValueError):
    """A TAESD file that is not a TAESD decoder."""


def find(folder: Path, is_xl: bool) -> Path | None:
    for suffix in (".pth", ".safetensors"):
        path = folder / f"{FILES[is_xl]}{suffix}"
        if path.is_file():
            return path
    return None


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)  # plain tensors only: no code runs
    if not isinstance(state, dict):
        raise TaesdError(f"{path.name} is not a state dict")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def build_decoder() -> torch.nn.Module:
    from diffusers.models.autoencoders.vae import DecoderTiny

    return DecoderTiny(in_channels=4, out_channels=3, num_blocks=(3, 3, 3, 1), block_out_channels=(64, 64, 64, 64),
                       upsampling_scaling_factor=2, act_fn="relu", upsample_fn="nearest")


def to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original decoder's keys (``"3.conv.0.weight"``; A1111 also saves them under ``decoder.``) in
    ``DecoderTiny``'s names (``"layers.2.conv.0.weight"``)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("decoder.")
        index, _, rest = key.partition(".")
        if not index.isdigit() or not rest:
            raise TaesdError(f"unexpected key {key!r}")
        out[f"layers.{int(index) - 1}.{rest}"] = value
    return out


def load(path: Path) -> torch.nn.Module:
    decoder = build_decoder()
    try:
        decoder.load_state_dict(to_diffusers(_read(path)), strict=True)
    except (RuntimeError, KeyError) as exc:
        raise TaesdError(f"{path.name} is not a TAESD decoder: {str(exc).splitlines()[0][:160]}") from None
    return decoder.eval().requires_grad_(False)


class Previews:
    """Makes the live-preview decoder that a setting names; TAESD decoders are loaded once and kept."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._decoders: dict[tuple[Path, float], torch.nn.Module] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def _taesd(self, is_xl: bool) -> torch.nn.Module | None:
        path = find(self.folder, is_xl)
        if path is None:
            self._warn_once(f"TAESD previews need {FILES[is_xl]}.pth in {self.folder}; showing the cheap "
                            "approximation")
            return None
        key = (path, path.stat().st_mtime)
        with self._lock:
            if key not in self._decoders:
                try:
                    self._decoders = {key: load(path)}  # one kept at a time: the family in use
                except (TaesdError, OSError, ValueError) as exc:
                    self._warn_once(str(exc))
                    return None
            return self._decoders[key]

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning(message)

    def decoder(self, kind: str) -> PreviewDecoder:
        """The function turning a step's denoised latents (the UNet's scale) into a preview image."""
        if kind == "TAESD":
            return self._decode_taesd
        if kind == "Full":
            return _decode_full
        return _decode_cheap

    def _decode_taesd(self, latents: torch.Tensor, parts: ModelParts) -> Image.Image:
        decoder = self._taesd(parts.family.is_xl)
        if decoder is None:
            return _decode_cheap(latents, parts)
        device = latents.device
        decoder.to(device)
        with torch.no_grad():
            x = decoder(latents[:1].float().to(device))[0]  # [-1, 1]
        return _image((x + 1) / 2)


def _image(x: torch.Tensor) -> Image.Image:
    arr = (x.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def _decode_cheap(latents: torch.Tensor, parts: ModelParts) -> Image.Image:
    from modules.generation.latents import preview

    return preview(latents, parts.family.is_xl)


def _decode_full(latents: torch.Tensor, parts: ModelParts) -> Image.Image:
    from modules.generation.latents import decode

    return _image(decode(parts.vae, latents[:1], None, "Automatic")[0])


"""One registry of pixel upscalers: the built-in None, Lanczos and Nearest, and every model file of the upscaler
folders (``models/ESRGAN``, ``RealESRGAN``, ``SwinIR``, ``DAT``, ``HAT``, ``ScuNET``), loaded with spandrel (which
reads the architecture from the weights; ``.pth`` files through its restricted unpickler), cached, run in tiles.

Names are A1111's: a file's stem, and for the files A1111 knows by another name (``RealESRGAN_x4plus.pth`` is
"R-ESRGAN 4x+", ...) that name too, so infotexts from A1111 find them.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from modules.upscalers.spandrel_loader import spandrel
from modules.upscalers.tiles import OnTile, upscale_tiled, upscale_weighted

log = logging.getLogger(__name__)

FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "ScuNET")
EXTENSIONS = (".pth", ".pt", ".safetensors", ".ckpt")
BUILTIN = ("None", "Lanczos", "Nearest")
WEIGHTED_TILING = ("SwinIR", "ScuNET")  # the folders whose models A1111 tiles with averaged overlaps
# folder -> the settings of its tile size and overlap, as A1111 names them (HAT uses ESRGAN's, as in A1111)
TILE_SETTINGS = {"SwinIR": ("SWIN_tile", "SWIN_tile_overlap"), "ScuNET": ("SCUNET_tile", "SCUNET_tile_overlap"),
                 "DAT": ("DAT_tile", "DAT_tile_overlap")}
DEFAULT_TILE_SETTINGS = ("ESRGAN_tile", "ESRGAN_tile_overlap")
A1111_NAMES = {  # file name -> the name A1111 lists it under
    "RealESRGAN_x4plus.pth": "R-ESRGAN 4x+",
    "RealESRGAN_x4plus_anime_6B.pth": "R-ESRGAN 4x+ Anime6B",
    "RealESRGAN_x2plus.pth": "R-ESRGAN 2x+",
    "realesr-general-x4v3.pth": "R-ESRGAN General 4xV3",
    "realesr-general-wdn-x4v3.pth": "R-ESRGAN General WDN 4xV3",
    "realesr-animevideov3.pth": "R-ESRGAN AnimeVideo",
    "DAT_x2.pth": "DAT x2",
    "DAT_x3.pth": "DAT x3",
    "DAT_x4.pth": "DAT x4",
    "scunet_color_real_gan.pth": "ScuNET GAN",
    "scunet_color_real_psnr.pth": "ScuNET PSNR",
    "SwinIR_4x.pth": "SwinIR 4x",
}


class UpscalerError(ValueError):
    """An upscaler that cannot be used; the message names it (and its file)."""


@dataclass(frozen=True)
class Upscaler:
    name: str
    path: Path | None = None  # None for the built-in resamplers
    folder: str = ""

    @property
    def nominal_scale(self) -> int:
        """The scale its name gives (``4x-UltraSharp``, ``RealESRGAN_x2plus``), else 4 (1 for None), as A1111 lists
        it without loading the model."""
        if self.name == "None":
            return 1
        found = re.search(r"(?<![0-9])([1-8])x|x([1-8])(?![0-9])", self.path.stem if self.path else self.name)
        return int(found.group(1) or found.group(2)) if found else 4

    def api(self) -> dict[str, Any]:
        """A1111's ``/sdapi/v1/upscalers`` entry."""
        return {"name": self.name, "model_name": self.folder or None,
                "model_path": str(self.path) if self.path else None, "model_url": None, "scale": self.nominal_scale}


class UpscalerRegistry:
    """Finds, loads (the last ``cache_size`` models stay loaded), caches and runs the upscalers."""

    def __init__(self, models_dir: Path, device: Callable[[], torch.device],
                 extra_dirs: Sequence[tuple[str, Path]] = (), cache_size: int = 2,
                 tiles: Callable[[str], tuple[int, int]] = lambda kind: (192, 8)) -> None:
        """``extra_dirs``: (folder kind, path) pairs searched after ``models_dir/<kind>`` (A1111's path flags such
        as ``--esrgan-models-path``)."""
        self.dirs = [(f, models_dir / f) for f in FOLDERS] + [(kind, d) for kind, d in extra_dirs if kind in FOLDERS]
        self.device = device
        self.tiles = tiles  # folder kind -> (tile size, overlap): A1111's ESRGAN_tile, SWIN_tile, ... settings
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._entries: dict[str, Upscaler] = {}
        self._loaded: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()
        self.refresh()

    def refresh(self) -> None:
        entries = {name: Upscaler(name) for name in BUILTIN}
        for folder, path in self.dirs:
            if not path.is_dir():
                continue
            for file in sorted(path.rglob("*"), key=lambda p: str(p).lower()):
                if file.is_file() and file.suffix.lower() in EXTENSIONS:
                    for name in dict.fromkeys([A1111_NAMES.get(file.name), file.stem]):
                        if name and name not in entries:
                            entries[name] = Upscaler(name, file, folder)
        with self._lock:
            self._entries = entries

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def find(self, name: str) -> Upscaler | None:
        with self._lock:
            return self._entries.get(name)

    def entries(self) -> list[Upscaler]:
        with self._lock:
            return list(self._entries.values())

    # --- models ---------------------------------------------------------------------------------------------------

    def model(self, upscaler: Upscaler) -> Any:
        """The spandrel descriptor of a model upscaler, on the device (fp16 on CUDA where the architecture allows)."""
        assert upscaler.path is not None
        device = self.device()
        key = (str(upscaler.path.resolve()), str(device))
        with self._lock:
            hit = self._loaded.get(key)
            if hit is not None:
                self._loaded.move_to_end(key)
                return hit
        descriptor = self._load(upscaler.path)
        descriptor.to(device)
        if device.type == "cuda" and descriptor.supports_half:
            descriptor.half()
        descriptor.eval()
        with self._lock:
            self._loaded[key] = descriptor
            while len(self._loaded) > self.cache_size:
                self._loaded.popitem(last=False)
        return descriptor

    @staticmethod
    def _load(path: Path) -> Any:
        sp = spandrel()
        try:
            descriptor = sp.ModelLoader().load_from_file(str(path))
        except sp.UnsupportedModelError:
            raise UpscalerError(f"{path.name}: not a model architecture spandrel knows") from None
        except Exception as exc:  # noqa: BLE001 - any failure to read the file is reported the same way
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise UpscalerError(f"{path.name}: cannot be read ({reason})") from None
        if not isinstance(descriptor, sp.ImageModelDescriptor):
            raise UpscalerError(f"{path.name}: a {descriptor.architecture.name} model is not an image upscaler")
        return descriptor

    def model_scale(self, name: str) -> int | None:
        upscaler = self.find(name)
        if upscaler is None or upscaler.path is None:
            return None
        return int(self.model(upscaler).scale)

    # --- running --------------------------------------------------------------------------------------------------

    def upscale(self, image: Image.Image, name: str, scale: float, on_tile: OnTile | None = None) -> Image.Image:
        """``image`` upscaled ``scale`` times by ``name``, as A1111's upscalers do: the target is the scaled size
        rounded down to a multiple of 8; the model runs (up to three times) until the image is at least that
        big; then Lanczos gives the exact size (also after an interrupt, from what there is)."""
        upscaler = self.find(name)
        if upscaler is None:
            raise UpscalerError(f"unknown upscaler {name!r}; available: {', '.join(self.names())}")
        dest_w, dest_h = int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8)
        for i in range(3):
            if image.width >= dest_w and image.height >= dest_h and (i > 0 or scale != 1):
                break
            before = image.size
            step = self._once(upscaler, image, scale, on_tile)
            if step is None:  # interrupted: the image as it is, at the size asked for
                break
            image = step
            if image.size == before:
                break
        if image.size != (dest_w, dest_h):
            image = image.resize((dest_w, dest_h), resample=Image.Resampling.LANCZOS)
        return image

    def _once(self, upscaler: Upscaler, image: Image.Image, scale: float,
              on_tile: OnTile | None) -> Image.Image | None:
        if upscaler.path is None:
            if upscaler.name == "None":
                return image
            resample = Image.Resampling.NEAREST if upscaler.name == "Nearest" else Image.Resampling.LANCZOS
            return image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
        descriptor = self.model(upscaler)
        param = next(descriptor.model.parameters())
        tile, overlap = self.tiles(upscaler.folder)
        if upscaler.folder in WEIGHTED_TILING:
            return upscale_weighted(descriptor, image.convert("RGB"), tile, overlap, int(descriptor.scale),
                                    param.dtype, param.device, on_tile)
        return upscale_tiled(descriptor, image.convert("RGB"), tile, overlap, param.dtype, param.device, on_tile)

    def resize(self, image: Image.Image, width: int, height: int, name: str,
               on_tile: OnTile | None = None) -> Image.Image:
        """``image`` at exactly ``width`` x ``height`` through ``name`` (hires fix), as A1111's resize with an
        upscaler: the upscaler when the size grows, then Lanczos to the exact size; "None" is Lanczos."""
        if name == "None" or image.mode == "L":
            return image.resize((width, height), resample=Image.Resampling.LANCZOS)
        scale = max(width / image.width, height / image.height)
        if scale > 1.0:
            image = self.upscale(image, name, scale, on_tile)
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        return image

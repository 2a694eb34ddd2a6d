"""Latents <-> pixels: VAE decode/encode with the fp32 fallback for NaNs, tiled VAE passes for large images,
seamless tiling, cheap previews.

VAE tiling (the ``vae_tiling`` option): "Never", "Always", or "Automatic", which tiles when the whole pass would
not fit in the memory free on the VAE's device (estimated from the image size and the VAE's widest block). Tiles
are ``vae_tiles``' (the VAE's own ``sample_size`` a side, run layer by layer with exact halos and the whole image's
group-norm statistics, so a tiled pass gives the pixels of a whole one); a VAE of another layout than diffusers'
``AutoencoderKL`` falls back to diffusers' tiling (overlapping tiles normalised on their own, blended at the seams).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from modules.errors import GenerationError, is_out_of_memory
from modules.generation import vae_tiles
from modules.models import memory

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

log = logging.getLogger(__name__)
Tensor = torch.Tensor

# Linear latent -> RGB factors (A1111's "Approx cheap" previews).
_RGB_SD = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
                        [-0.184, -0.271, -0.473]])
_RGB_XL = torch.tensor([[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
                        [-0.3730, -0.2499, -0.2088]])


def _scale(vae: AutoencoderKL) -> tuple[float, float]:
    shift = vae.config.get("shift_factor") or 0.0
    return float(vae.config["scaling_factor"]), float(shift)


_ACTIVATIONS = 6  # full-resolution activations alive at once in the VAE's outer block, roughly


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def pass_bytes(vae: AutoencoderKL, height: int, width: int) -> int:
    """About what a whole decode or encode of a ``height`` x ``width`` image needs beyond the weights."""
    param = next(vae.parameters())
    channels = max(int(c) for c in vae.config["block_out_channels"])
    return height * width * channels * param.element_size() * _ACTIVATIONS


def wants_tiling(vae: AutoencoderKL, height: int, width: int, mode: str = "Automatic") -> bool:
    if mode == "Never":
        return False
    tile = int(vae.config.get("sample_size") or 512)
    if height <= tile and width <= tile:
        return False  # one tile: tiling would change nothing
    if mode == "Always":
        return True
    free = _free_bytes(next(vae.parameters()).device)
    return free is not None and pass_bytes(vae, height, width) > free * 0.8


@contextlib.contextmanager
def _tiled(vae: AutoencoderKL, on: bool) -> Iterator[None]:
    before = vae.use_tiling
    vae.use_tiling = on
    try:
        yield
    finally:
        vae.use_tiling = before


def _decode_pass(vae: AutoencoderKL, z: Tensor, tiled: bool, compact: bool = False) -> Tensor:
    """``z`` (unscaled, on the VAE's device and in its dtype) -> images in -1..1, whole or in tiles (``compact``:
    the tiles' stores in bfloat16 on a CPU)."""
    if tiled and vae_tiles.supports(vae, "decoder"):
        return vae_tiles.tiled_decode(vae, z, compact=compact)
    if tiled:
        log.debug("VAE %s: a layout vae_tiles does not know; diffusers' tiles", type(vae).__name__)
    with _tiled(vae, tiled):
        x: Tensor = vae.decode(z, return_dict=False)[0]
    return x


def _encode_pass(vae: AutoencoderKL, x: Tensor, tiled: bool, compact: bool = False) -> Any:
    """Images (-1..1, on the VAE's device and in its dtype) -> the posterior, whole or in tiles."""
    if tiled and vae_tiles.supports(vae, "encoder") and not x.shape[-1] % vae_tiles.downscale(vae) \
            and not x.shape[-2] % vae_tiles.downscale(vae):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(vae_tiles.tiled_encode(vae, x, compact=compact))
    with _tiled(vae, tiled):
        return vae.encode(x, return_dict=False)[0]


def _compact(tiling: str, param: Tensor) -> bool:
    """Tiles that Automatic takes on a CPU (the whole image would not fit in RAM, or a whole pass ran out of it)
    keep their stores in bfloat16: a quarter less memory, for pixels within about a grey level of a whole pass.
    "Always" gives a whole pass's pixels."""
    return tiling == "Automatic" and param.device.type == "cpu"


def _splittable(vae: AutoencoderKL, latent_hw: Any) -> bool:
    tile = int(vae.config.get("sample_size") or 512) // 8
    return bool(max(int(latent_hw[0]), int(latent_hw[1])) > tile)


def _release_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def decode(vae: AutoencoderKL, latents: Tensor, warn: Callable[[str], None] | None = None,
           tiling: str = "Automatic") -> Tensor:
    """Latents (B, 4, h, w) -> images (B, 3, H, W) in [0, 1], float32 on the CPU; one image at a time.

    A half-precision VAE that yields NaNs (a known SDXL problem) is retried once in float32, as A1111's
    "Automatically revert VAE to 32-bit floats" does; a whole decode that runs out of memory is retried in tiles
    (unless ``tiling`` is "Never"), with a warning.
    """
    scale, shift = _scale(vae)
    memory.bring(vae)  # under --medvram: the VAE to the GPU first, the latents after it
    param = next(vae.parameters())
    out = []
    tiled = wants_tiling(vae, latents.shape[-2] * 8, latents.shape[-1] * 8, tiling)
    compact = _compact(tiling, param)
    for i in range(latents.shape[0]):
        z = latents[i : i + 1] / scale + shift
        try:
            x = _decode_pass(vae, z.to(device=param.device, dtype=param.dtype), tiled, compact)
        except Exception as exc:
            if tiled or tiling == "Never" or not is_out_of_memory(exc) or not _splittable(vae, z.shape[-2:]):
                raise
            tiled = True  # the rest of the batch too
            _release_memory()
            if warn:
                warn("the VAE ran out of memory decoding the whole image; decoded again in tiles")
            x = _decode_pass(vae, z.to(device=param.device, dtype=param.dtype), True, compact)
        if not torch.isfinite(x).all() and param.dtype != torch.float32:
            if warn:
                warn("the VAE produced NaNs in half precision; decoded again in float32")
            x = _decode_fp32(vae, z, tiled)
        if not torch.isfinite(x).all():
            raise GenerationError("the VAE produced NaNs; try another VAE or the --no-half option")
        out.append(((x.float() + 1) / 2).clamp(0, 1).cpu())
    return torch.cat(out)


@contextlib.contextmanager
def _in_float32(vae: AutoencoderKL) -> Iterator[None]:
    """The VAE in float32 while active, back in its own dtype afterwards."""
    dtype = next(vae.parameters()).dtype
    # diffusers declares ModelMixin.to through functools.wraps, which type checkers cannot bind to the instance
    vae.to(torch.float32)  # type: ignore[arg-type]
    try:
        yield
    finally:
        vae.to(dtype)  # type: ignore[arg-type]


def _decode_fp32(vae: AutoencoderKL, z: Tensor, tiled: bool = False) -> Tensor:
    param = next(vae.parameters())
    with _in_float32(vae):
        return _decode_pass(vae, z.to(device=param.device, dtype=torch.float32), tiled)


@torch.no_grad()
def encode(vae: AutoencoderKL, images: Tensor, generator: torch.Generator | None = None,
           tiling: str = "Automatic") -> Tensor:
    """Images (B, 3, H, W) in [0, 1] -> scaled latents, float32.

    Without ``generator`` the posterior's mean (deterministic); with one, a sample of the posterior whose noise for
    the whole batch is one draw from ``generator`` on the CPU, as A1111 samples it (from a generator seeded per job
    here, where A1111 uses torch's global one)."""
    scale, shift = _scale(vae)
    memory.bring(vae)
    param = next(vae.parameters())
    means, stds = [], []
    tiled = wants_tiling(vae, images.shape[-2], images.shape[-1], tiling)
    compact = _compact(tiling, param)
    for i in range(images.shape[0]):
        x = images[i : i + 1].to(device=param.device, dtype=param.dtype) * 2 - 1
        dist = _encode_pass(vae, x, tiled, compact)
        if not torch.isfinite(dist.mean).all() and param.dtype != torch.float32:
            with _in_float32(vae):
                dist = _encode_pass(vae, x.float(), tiled)
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    mean = torch.cat(means)
    z = mean
    if generator is not None:
        eps = torch.randn(tuple(mean.shape), generator=generator, dtype=torch.float32).to(mean.device)
        z = mean + torch.cat(stds) * eps
    return (z - shift) * scale


def to_pil(images: Tensor) -> list[Image.Image]:
    """Images in [0, 1] -> 8-bit, as A1111 converts them: scaled by 255 and truncated."""
    arr = (images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def from_pil(images: list[Image.Image]) -> Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # NCHW in memory too, as A1111 feeds the VAE


def preview(latents: Tensor, is_xl: bool) -> Image.Image:
    """A cheap RGB approximation of the first latent of a batch (no VAE), for live previews."""
    coefs = (_RGB_XL if is_xl else _RGB_SD).to(latents.device)
    x = torch.einsum("lxy,lr->rxy", latents[0].float(), coefs)
    x = ((x + 1) / 2).clamp(0, 1)
    arr = (x.permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
    return Image.fromarray(arr)


@contextlib.contextmanager
def seamless(modules: list[torch.nn.Module], enabled: bool) -> Iterator[None]:
    """Circular padding in every convolution while active (A1111's "Tiling"); restored afterwards."""
    if not enabled:
        yield
        return
    changed = []
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, torch.nn.Conv2d) and layer.padding_mode != "circular":
                changed.append((layer, layer.padding_mode))
                layer.padding_mode = "circular"
    try:
        yield
    finally:
        for layer, mode in changed:
            layer.padding_mode = mode

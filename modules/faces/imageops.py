"""The few image filters face restoration needs, in torch, with OpenCV's conventions (pixel centres at integer
coordinates, its border rules and its Gaussian kernels), so detections and masks come out as facexlib's do.

Images are float tensors ``(C, H, W)`` or ``(H, W)``; values are not clamped or rounded here.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch
import torch.nn.functional as F

# OpenCV's fixed kernels for odd sizes up to 7 when no sigma is given (getGaussianKernel's small_gaussian_tab)
_SMALL_GAUSSIAN = MappingProxyType({
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
})


def _as_chw(image: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (image.unsqueeze(0), True) if image.dim() == 2 else (image, False)


def lanczos4_weights(src: int, dst: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``dst`` output positions along one axis: the 8 source indices (clamped to the edge) and their
    normalised Lanczos-4 weights, as OpenCV's INTER_LANCZOS4 resize takes them."""
    scale = src / dst
    pos = (torch.arange(dst, dtype=torch.float64) + 0.5) * scale - 0.5
    start = torch.floor(pos)
    frac = pos - start
    taps = torch.arange(-3, 5, dtype=torch.float64)
    distance = frac[:, None] - taps[None, :]
    weights = torch.sinc(distance) * torch.sinc(distance / 4)
    weights = weights / weights.sum(dim=1, keepdim=True)
    index = (start[:, None] + taps[None, :]).long().clamp(0, src - 1)
    return index, weights


def resize_lanczos4(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``image`` (C, H, W) resized to ``height`` x ``width`` with an 8x8 Lanczos kernel (no widening when shrinking,
    edge pixels repeated), as ``cv2.resize(..., interpolation=cv2.INTER_LANCZOS4)``."""
    _, h, w = image.shape
    if (w, h) == (width, height):
        return image.clone()
    rows = _resample(image.to(torch.float64), 1, height)
    return _resample(rows, 2, width).to(image.dtype)


def _resample(image: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    index, weights = (t.to(image.device) for t in lanczos4_weights(image.shape[dim], size))
    shape = [1, 1, 1]
    shape[dim] = size
    out = torch.zeros(0, dtype=image.dtype, device=image.device)
    for k in range(8):
        term = image.index_select(dim, index[:, k]) * weights[:, k].view(shape)
        out = term if k == 0 else out + term
    return out


def gaussian_kernel(size: int, sigma: float = 0.0) -> torch.Tensor:
    """OpenCV 4's ``getGaussianKernel(size, sigma)``: the fixed table for odd sizes up to 7 without a sigma, else the
    sampled Gaussian with ``sigma`` (or ``0.3 * ((size - 1) / 2 - 1) + 0.8`` when none is given), summing to 1."""
    if sigma <= 0 and size in _SMALL_GAUSSIAN:
        return torch.tensor(_SMALL_GAUSSIAN[size], dtype=torch.float64)
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(x**2) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def gaussian_blur(image: torch.Tensor, size: int, sigma: float = 0.0) -> torch.Tensor:
    """``cv2.GaussianBlur(image, (size, size), sigma)``: separable, borders mirrored without repeating the edge
    pixel (BORDER_REFLECT_101)."""
    if size <= 1:
        return image.clone()
    chw, squeezed = _as_chw(image)
    kernel = gaussian_kernel(size, sigma).to(device=image.device, dtype=image.dtype)
    pad = size // 2
    x = chw.unsqueeze(1)  # (C, 1, H, W): each channel on its own
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, -1, 1))
    out = x.squeeze(1)
    return out[0] if squeezed else out


def erode(image: torch.Tensor, size: int) -> torch.Tensor:
    """``cv2.erode(image, np.ones((size, size)))``: the minimum over a ``size`` x ``size`` window anchored at its
    centre (``size // 2``); outside the image counts as no limit. A size of 0 is OpenCV's default 3x3 window. The
    window is a rectangle, so it is applied as a row pass and a column pass."""
    if size <= 0:
        size = 3
    if size == 1:
        return image.clone()
    chw, squeezed = _as_chw(image)
    before, after = size // 2, size - 1 - size // 2
    x = -chw.unsqueeze(0)
    x = F.max_pool2d(F.pad(x, (before, after, 0, 0), value=-math.inf), (1, size), stride=1)
    x = F.max_pool2d(F.pad(x, (0, 0, before, after), value=-math.inf), (size, 1), stride=1)
    out = -x[0]
    return out[0] if squeezed else out

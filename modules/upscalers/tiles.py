"""Running an image model tile by tile, as A1111 does for its model upscalers.

The image is cut into ``tile`` x ``tile`` crops spread evenly so that neighbours share at least ``overlap`` pixels
(the last crop of a row or column ends at the image's edge; an image smaller than a tile is one crop padded with
black). Each crop goes through the model as a BGR tensor in [0, 1] (the colour order ESRGAN-family weights were
trained in, and what A1111 feeds every model upscaler), and comes back as 8-bit pixels. The results are put
together left to right and top to bottom: each tile covers what lies under it, except that over its first
``overlap`` pixels (times the scale) it fades in linearly over its neighbour, so seams are blended. Only 8-bit
images are held, so memory grows with the output image, not with float copies of it.

SwinIR and ScuNET models are tiled as A1111 tiles them instead (:func:`upscale_weighted`): overlapping outputs are
averaged in float, which holds the output as floats once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

Run = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, h, w) BGR in [0, 1] -> (1, 3, h*s, w*s)
OnTile = Callable[[int, int], bool]  # (tiles done, tiles in all) -> go on?


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where the crops of one axis start: evenly spread, neighbours sharing at least ``overlap`` pixels."""
    count = max(1, math.ceil((size - overlap) / (tile - overlap)))
    step = (size - tile) / (count - 1) if count > 1 else 0
    out = []
    for i in range(count):
        start = int(i * step)
        out.append(size - tile if start + tile >= size else start)
    return out


def to_bgr_tensor(image: Image.Image, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array) / 255).to(device=device, dtype=dtype).unsqueeze(0)


def from_bgr_tensor(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].float().cpu().clamp_(0, 1).numpy()
    array = (255.0 * np.moveaxis(array, 0, 2)).round().astype(np.uint8)[:, :, ::-1]
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def run_patch(run: Run, image: Image.Image, dtype: torch.dtype, device: torch.device) -> Image.Image:
    with torch.inference_mode():
        return from_bgr_tensor(run(to_bgr_tensor(image, dtype, device)))


def _ramp(overlap: int, length: int, horizontal: bool) -> Image.Image:
    """A linear 0..255 fade over ``overlap`` pixels, ``length`` long, as an 8-bit mask."""
    values = (np.arange(overlap, dtype=np.float32) * 255 / overlap).astype(np.uint8)
    array = np.tile(values, (length, 1)) if horizontal else np.tile(values[:, None], (1, length))
    return Image.fromarray(array, "L")


def upscale_tiled(run: Run, image: Image.Image, tile: int, overlap: int, dtype: torch.dtype,
                  device: torch.device, on_tile: OnTile | None = None) -> Image.Image | None:
    """``image`` through ``run`` in tiles (``tile`` <= 0: whole); None when ``on_tile`` asks to stop."""
    if tile <= 0:
        return run_patch(run, image, dtype, device)
    overlap = max(0, min(overlap, tile - 1))
    width, height = image.size
    xs, ys = tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)
    total, done = len(xs) * len(ys), 0
    rows: list[tuple[int, list[tuple[int, Image.Image]]]] = []
    scale = 1
    for y in ys:
        row = []
        for x in xs:
            out = run_patch(run, image.crop((x, y, x + tile, y + tile)), dtype, device)
            scale = out.width // tile
            row.append((x * scale, out))
            done += 1
            if on_tile is not None and not on_tile(done, total):
                return None
        rows.append((y * scale, row))
    return _combine(rows, width * scale, height * scale, tile * scale, overlap * scale)


def _combine(rows: list[tuple[int, list[tuple[int, Image.Image]]]], width: int, height: int, tile: int,
             overlap: int) -> Image.Image:
    combined = Image.new("RGB", (width, height))
    across = _ramp(overlap, tile, horizontal=True) if overlap else None
    down = _ramp(overlap, width, horizontal=False) if overlap else None
    for y, row in rows:
        band = Image.new("RGB", (width, tile))
        for x, piece in row:
            if x == 0 or across is None:
                band.paste(piece, (x, 0))
                continue
            band.paste(piece.crop((0, 0, overlap, tile)), (x, 0), mask=across)
            band.paste(piece.crop((overlap, 0, tile, tile)), (x + overlap, 0))
        if y == 0 or down is None:
            combined.paste(band, (0, y))
            continue
        combined.paste(band.crop((0, 0, width, overlap)), (0, y), mask=down)
        combined.paste(band.crop((0, overlap, width, tile)), (0, y + overlap))
    return combined


def upscale_weighted(run: Run, image: Image.Image, tile: int, overlap: int, scale: int, dtype: torch.dtype,
                     device: torch.device, on_tile: OnTile | None = None) -> Image.Image | None:
    """A1111's other tiling (its SwinIR and ScuNET upscalers): ``tile`` x ``tile`` crops every ``tile - overlap``
    pixels (the last at the edge), each output added into a float image and divided by how many tiles covered each
    pixel. None when ``on_tile`` asks to stop."""
    x = to_bgr_tensor(image, dtype, device)
    _, _, height, width = x.shape
    tile = min(tile, height, width)
    with torch.inference_mode():
        if tile <= 0:
            return from_bgr_tensor(run(x))
        stride = tile - max(0, min(overlap, tile - 1))
        ys = [*range(0, height - tile, stride), height - tile]
        xs = [*range(0, width - tile, stride), width - tile]
        result = torch.zeros(1, 3, height * scale, width * scale, device=device, dtype=dtype)
        weights = torch.zeros(1, 1, height * scale, width * scale, device=device, dtype=dtype)
        done = 0
        for y in ys:
            for x0 in xs:
                out = run(x[..., y:y + tile, x0:x0 + tile])
                area = (..., slice(y * scale, (y + tile) * scale), slice(x0 * scale, (x0 + tile) * scale))
                result[area] += out
                weights[area] += 1
                done += 1
                if on_tile is not None and not on_tile(done, len(xs) * len(ys)):
                    return None
        return from_bgr_tensor(result / weights)

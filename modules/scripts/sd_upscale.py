"""A1111's "SD upscale": the init image upscaled by a pixel upscaler, cut into overlapping tiles of the request's
width and height, each tile redrawn by img2img, and the tiles blended back together.

Also the tile grid it uses (A1111's ``split_grid`` / ``combine_grid``, shared with Poor man's outpainting) and
the way a script adds its own keys to an infotext.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from modules import infotext
from modules.generation.image_prep import flatten
from modules.requests import GenerationRequest, Img2ImgRequest
from modules.scripts.base import IMG2IMG, Control, RunContext, Script, ScriptOutput, arg_error

INFO = ("<p style=\"margin-bottom:0.75em\">Will upscale the image by the selected scale factor; use width and "
        "height sliders to set tile size</p>")
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")


# -- tiles -----------------------------------------------------------------------------------------------------------
@dataclass
class Tile:
    x: int
    width: int
    image: Image.Image


@dataclass
class TileRow:
    y: int
    height: int
    tiles: list[Tile] = field(default_factory=list)


@dataclass
class TileGrid:
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int
    rows: list[TileRow] = field(default_factory=list)

    @property
    def tiles(self) -> list[tuple[int, int, Tile]]:
        """(y, height, tile) of every tile, row by row."""
        return [(row.y, row.height, tile) for row in self.rows for tile in row.tiles]


def _positions(size: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side start: as few as cover ``size`` with ``overlap``, spread evenly, the last
    one flush with the end (A1111's rule)."""
    count = math.ceil((size - overlap) / (tile - overlap))
    step = (size - tile) / (count - 1) if count > 1 else 0
    starts = [int(i * step) for i in range(count)]
    return [size - tile if x + tile >= size else x for x in starts]


def split_tiles(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> TileGrid:
    """``image`` cut into tiles of ``tile_w`` x ``tile_h`` that overlap by at least ``overlap`` pixels."""
    grid = TileGrid(tile_w, tile_h, image.width, image.height, overlap)
    for y in _positions(image.height, tile_h, overlap):
        row = TileRow(y, tile_h)
        for x in _positions(image.width, tile_w, overlap):
            row.tiles.append(Tile(x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))))
        grid.rows.append(row)
    return grid


def _ramp(length: int, overlap: int, horizontal: bool) -> Image.Image:
    """The blend mask of an overlap: 0 to 255 across ``overlap`` pixels, ``length`` long."""
    ramp = (np.arange(overlap, dtype=np.float32) * 255 / overlap).astype(np.uint8)
    values = np.tile(ramp, (length, 1)) if horizontal else np.tile(ramp[:, None], (1, length))
    return Image.fromarray(values, "L")


def combine_tiles(grid: TileGrid) -> Image.Image:
    """The tiles put back together, each overlap blended linearly from the earlier tile into the later one."""
    out = Image.new("RGB", (grid.image_w, grid.image_h))
    blend = grid.overlap > 0
    for row in grid.rows:
        line = Image.new("RGB", (grid.image_w, row.height))
        for tile in row.tiles:
            if tile.x == 0 or not blend:
                line.paste(tile.image, (tile.x, 0))
                continue
            line.paste(tile.image.crop((0, 0, grid.overlap, row.height)), (tile.x, 0),
                       mask=_ramp(grid.tile_h, grid.overlap, True))
            line.paste(tile.image.crop((grid.overlap, 0, tile.width, row.height)), (tile.x + grid.overlap, 0))
        if row.y == 0 or not blend:
            out.paste(line, (0, row.y))
            continue
        ramp = _ramp(grid.image_w, grid.overlap, False)
        out.paste(line.crop((0, 0, line.width, grid.overlap)), (0, row.y), mask=ramp)
        out.paste(line.crop((0, grid.overlap, line.width, row.height)), (0, row.y + grid.overlap))
    return out


# -- infotexts -------------------------------------------------------------------------------------------------------
def with_params(text: str, params: Mapping[str, object]) -> str:
    """``text`` with ``params`` added to its parameters line, before ``Version`` and ``User`` (where A1111 writes a
    script's own keys). A float is written as Python prints it (``1.0``), as A1111 does."""
    head, _, last = text.rpartition("\n")
    found = infotext.find_params(last)
    if len(found) < 3:  # no parameters line: one is added
        head, found = text, []
    values = {k: infotext.SettingFloat(v) if isinstance(v, float) else v for k, v in params.items()}
    added = infotext.format_params_line(values)
    tail = [f"{k}: {v}" for k, v in found if k in ("Version", "User")]
    kept = [f"{k}: {v}" for k, v in found if k not in ("Version", "User") and k not in params]
    line = ", ".join([*kept, *([added] if added else []), *tail])
    return f"{head}\n{line}" if head else line


def add_params(out: ScriptOutput, params: Mapping[str, object]) -> None:
    """``params`` in the infotext of every image of ``out`` and in the result's extra parameters."""
    out.infotexts = [with_params(text, params) if text else text for text in out.infotexts]
    if out.last is not None:
        out.last.result.extra_params.update(params)


# -- the script ------------------------------------------------------------------------------------------------------
def upscaler_name(value: Any, names: Sequence[str]) -> str:
    """The upscaler an argument names: its position in the list (A1111's radio gives the index) or its name."""
    if isinstance(value, bool):
        raise ValueError(f"Upscaler: {value!r} is not an upscaler")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        if not 0 <= int(value) < len(names):
            raise ValueError(f"Upscaler: index {int(value)} is out of range (0 to {len(names) - 1})")
        return names[int(value)]
    found = next((n for n in names if n.lower() == str(value).strip().lower()), None)
    if found is None:
        raise ValueError(f"Upscaler: unknown upscaler {value!r}; available: {', '.join(names)}")
    return found


def _number(value: Any, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{label}: {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{label}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{label}: must be a finite number")
    return number


class SDUpscale(Script):
    title = "SD upscale"
    tabs = frozenset({IMG2IMG})

    def __init__(self, upscaler_names: Callable[[], Sequence[str]] | None = None) -> None:
        """``upscaler_names``: the installed upscalers (the application's registry); the built-ins without it."""
        self.upscaler_names = upscaler_names or (lambda: BUILTIN_UPSCALERS)

    def controls(self, kind: str) -> list[Control]:
        return [
            Control("", "html", INFO),
            Control("Tile overlap", "slider", 64, 0, 256, 16, elem_id="overlap"),
            Control("Upscaler", "radio", "None", choices=lambda: list(self.upscaler_names()), index=True,
                    elem_id="upscaler_index"),
            Control("Scale Factor", "slider", 2.0, 1.0, 4.0, 0.05, elem_id="scale_factor"),
        ]

    def _numbers(self, req: GenerationRequest, args: Sequence[Any]) -> tuple[int, float]:
        try:
            overlap, scale = _number(args[1], "Tile overlap"), _number(args[3], "Scale Factor")
        except ValueError as exc:
            raise arg_error(self, str(exc)) from None
        if overlap != int(overlap) or not 0 <= overlap < min(req.width, req.height):
            raise arg_error(self, f"Tile overlap: must be a whole number from 0 to less than the tile size, the "
                                  f"request's width and height {req.width}x{req.height} (got {args[1]})")
        if not 0 < scale <= 16:
            raise arg_error(self, f"Scale Factor: must be above 0 and at most 16 (got {args[3]})")
        return int(overlap), scale

    def check(self, req: GenerationRequest, args: Sequence[Any], kind: str) -> None:
        overlap, scale = self._numbers(req, args)
        if isinstance(req, Img2ImgRequest) and req.init_images:
            w, h = req.init_images[0].size
            if int(w * scale) * int(h * scale) > req.max_image_pixels:
                raise arg_error(self, f"Scale Factor: {w}x{h} upscaled {scale:g} times is too large")
        if isinstance(args[2], (int, float)) and not isinstance(args[2], bool):
            return  # an index: checked against the installed upscalers when the job runs
        try:
            upscaler_name(args[2], list(self.upscaler_names()))
        except ValueError as exc:
            raise arg_error(self, str(exc)) from None

    def _upscaled(self, ctx: RunContext, image: Image.Image, value: Any, scale: float) -> tuple[Image.Image, str]:
        registry = ctx.services.upscalers if ctx.services is not None else None
        names = registry.names() if registry is not None else list(BUILTIN_UPSCALERS)
        try:
            name = upscaler_name(value, names)
        except ValueError as exc:
            raise arg_error(self, str(exc)) from None
        if name == "None":  # A1111: the image as it is, tiled at its own size
            return image, name
        if registry is None:
            size = (int(image.width * scale) // 8 * 8, int(image.height * scale) // 8 * 8)
            resample = Image.Resampling.NEAREST if name == "Nearest" else Image.Resampling.LANCZOS
            return image.resize(size, resample), name
        ctx.control.update(phase="upscaling")
        return registry.upscale(image, name, scale), name

    def run(self, ctx: RunContext, req: GenerationRequest, args: Sequence[Any]) -> ScriptOutput:
        if not isinstance(req, Img2ImgRequest):
            raise arg_error(self, "SD upscale needs an init image (img2img)")
        from modules.generation.batches import resolve_seeds

        overlap, scale = self._numbers(req, args)
        req = resolve_seeds(req)
        image, name = self._upscaled(ctx, flatten(req.init_images[0]), args[2], scale)
        if image.width < req.width or image.height < req.height:
            raise arg_error(self, f"the upscaled image ({image.width}x{image.height}) is smaller than a tile, the "
                                  f"request's width and height ({req.width}x{req.height})")
        out = ScriptOutput()
        params = {"SD upscale overlap": overlap, "SD upscale upscaler": name}
        for n in range(req.n_iter):
            if ctx.control.interrupted:
                break
            self._one(ctx, req.replace(seed=req.seed + n, n_iter=1, mask=None), image, overlap, out, params)
        add_params(out, params)
        return out

    def _one(self, ctx: RunContext, req: Img2ImgRequest, image: Image.Image, overlap: int, out: ScriptOutput,
             params: Mapping[str, object]) -> None:
        """One upscale: every tile redrawn, a batch of ``batch_size`` tiles at a time, each batch's seed one more
        than the previous batch's first (A1111's rule), then the tiles blended into one image."""
        grid = split_tiles(image, req.width, req.height, overlap)
        tiles = [tile for _, _, tile in grid.tiles]
        seed, first = req.seed, None
        for start in range(0, len(tiles), req.batch_size):
            if ctx.control.interrupted:
                break
            batch = tiles[start:start + req.batch_size]
            job = ctx.process(req.replace(init_images=tuple(t.image for t in batch), seed=seed), save=False)
            if first is None:
                first = job
            seed = job.result.all_seeds[0] + 1
            for tile, done in zip(batch, job.result.images, strict=False):
                tile.image = done
        if first is None:
            return
        r = first.result
        image, info = combine_tiles(grid), with_params(r.infotexts[0], params)
        out.add(image, r.infotexts[0], req.seed, r.all_subseeds[0], r.all_prompts[0], r.all_negative_prompts[0],
                ctx.save_image(image, info, req, req.seed))
        out.warnings += [w for w in r.warnings if w not in out.warnings]
        out.last = first

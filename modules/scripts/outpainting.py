"""A1111's two outpainting scripts: "Poor man's outpainting" (the image on a bigger canvas, the new border redrawn
tile by tile as inpainting) and "Outpainting mk2" (one side at a time, the new strip pre-filled with noise shaped
like the image's own spectrum and colours, see :mod:`.outpainting_noise`).

Both grow the image by about the pixels asked for in each chosen direction, so that the new size is a multiple
of 64, as A1111 does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from modules.generation.image_prep import MASKED_CONTENT, flatten
from modules.requests import GenerationRequest, Img2ImgRequest
from modules.scripts.base import IMG2IMG, Control, RunContext, Script, ScriptOutput, arg_error
from modules.scripts.sd_upscale import combine_tiles, split_tiles

if TYPE_CHECKING:
    from modules.engine import JobOutput

DIRECTIONS = ("left", "right", "up", "down")
MAX_MASK_BLUR = 64  # what an img2img request accepts


@dataclass(frozen=True)
class Expansion:
    """The pixels added on each side."""

    left: int
    right: int
    up: int
    down: int


def expansion(width: int, height: int, pixels: int, directions: Sequence[str]) -> Expansion:
    """About ``pixels`` on each chosen side, so that the new size is the next multiple of 64 (split between
    opposite sides in proportion, as A1111 splits it)."""
    left, right, up, down = (pixels if d in directions else 0 for d in DIRECTIONS)
    target_w = math.ceil((width + left + right) / 64) * 64
    target_h = math.ceil((height + up + down) / 64) * 64
    if left > 0:
        left = left * (target_w - width) // (left + right)
    if right > 0:
        right = target_w - width - left
    if up > 0:
        up = up * (target_h - height) // (up + down)
    if down > 0:
        down = target_h - height - up
    return Expansion(left, right, up, down)


def whole_number(value: Any, label: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not (
            low <= value <= high):
        raise ValueError(f"{label}: must be a whole number from {low} to {high} (got {value!r})")
    return int(value)


def number(value: Any, label: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{label}: must be a number from {low:g} to {high:g} (got {value!r})")
    return float(value)


def directions(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or any(d not in DIRECTIONS for d in value):
        raise ValueError(f"Outpainting direction: a list of {', '.join(DIRECTIONS)} (got {value!r})")
    return tuple(value)


def masked_content(value: Any) -> int:
    """A1111's radio gives the index; a name is taken too."""
    if isinstance(value, str) and value in MASKED_CONTENT:
        return MASKED_CONTENT.index(value)
    return whole_number(value, "Masked content", 0, len(MASKED_CONTENT) - 1)


def blur_within_limit(ctx: RunContext, blur: int) -> int:
    if blur > MAX_MASK_BLUR:
        ctx.control.warn(f"outpainting: the mask blur of {blur} was lowered to {MAX_MASK_BLUR}")
    return min(blur, MAX_MASK_BLUR)


def init_image(script: Script, req: GenerationRequest) -> Image.Image:
    if not isinstance(req, Img2ImgRequest) or not req.init_images:
        raise arg_error(script, f"{script.title} needs an init image (img2img)")
    return flatten(req.init_images[0])


# -- Poor man's outpainting ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PoorLayout:
    """The arguments read, and what they make of the init image: the sides grown and the tile size."""

    pixels: int
    blur: int
    fill: int
    image: Image.Image
    grown: Expansion
    tile_w: int
    tile_h: int

    @property
    def size(self) -> tuple[int, int]:
        e = self.grown
        return self.image.width + e.left + e.right, self.image.height + e.up + e.down

    def inside(self, x: int, y: int, w: int, h: int) -> bool:
        """Whether a tile lies wholly on the original image (it is left as it is)."""
        e, (cw, ch) = self.grown, self.size
        return x >= e.left and x + w <= cw - e.right and y >= e.up and y + h <= ch - e.down


class PoorMansOutpainting(Script):
    title = "Poor man's outpainting"
    tabs = frozenset({IMG2IMG})

    def controls(self, kind: str) -> list[Control]:
        return [
            Control("Pixels to expand", "slider", 128, 8, 256, 8, elem_id="pixels"),
            Control("Mask blur", "slider", 4, 0, 64, 1, elem_id="mask_blur"),
            Control("Masked content", "radio", "fill", choices=MASKED_CONTENT, index=True, elem_id="inpainting_fill"),
            Control("Outpainting direction", "checkboxgroup", list(DIRECTIONS), choices=DIRECTIONS,
                    elem_id="direction"),
        ]

    def _layout(self, req: GenerationRequest, args: Sequence[Any]) -> _PoorLayout:
        try:
            pixels = whole_number(args[0], "Pixels to expand", 1, 2048)
            blur = whole_number(args[1], "Mask blur", 0, 256)
            fill, sides = masked_content(args[2]), directions(args[3])
        except ValueError as exc:
            raise arg_error(self, str(exc)) from None
        image = init_image(self, req)
        grown = expansion(image.width, image.height, pixels, sides)
        width, height = image.width + grown.left + grown.right, image.height + grown.up + grown.down
        # tiles of the request's size, but no bigger than the canvas (where A1111 would make no tile at all)
        tile_w, tile_h = min(req.width, width // 8 * 8), min(req.height, height // 8 * 8)
        if pixels >= min(tile_w, tile_h):
            raise arg_error(self, f"Pixels to expand: the tiles overlap by this much, so it must be less than the "
                                  f"tile size, the request's width and height ({tile_w}x{tile_h}); got {pixels}")
        return _PoorLayout(pixels, blur, fill, image, grown, tile_w, tile_h)

    def check(self, req: GenerationRequest, args: Sequence[Any], kind: str) -> None:
        self._layout(req, args)

    def run(self, ctx: RunContext, req: GenerationRequest, args: Sequence[Any]) -> ScriptOutput:
        from modules.generation.batches import resolve_seeds

        lay = self._layout(req, args)
        assert isinstance(req, Img2ImgRequest)
        canvas, mask = _poor_canvas(lay)
        grid = split_tiles(canvas, lay.tile_w, lay.tile_h, lay.pixels)
        masks = split_tiles(mask, lay.tile_w, lay.tile_h, lay.pixels)
        latents = split_tiles(_poor_mask(lay, lay.blur // 2), lay.tile_w, lay.tile_h, lay.pixels)
        blur = blur_within_limit(ctx, lay.blur * 2)
        one = resolve_seeds(req).replace(
            n_iter=1, batch_size=1, width=lay.tile_w, height=lay.tile_h, mask_blur_x=blur, mask_blur_y=blur,
            inpainting_fill=lay.fill, inpaint_full_res=False)
        first: JobOutput | None = None
        for (y, h, tile), (_, _, tile_mask), (_, _, latent) in zip(grid.tiles, masks.tiles, latents.tiles,
                                                                   strict=True):
            if lay.inside(tile.x, y, tile.width, h) or ctx.control.interrupted:
                continue
            job = ctx.process(one.replace(init_images=(tile.image,), mask=tile_mask.image, latent_mask=latent.image),
                              save=False)
            if first is None:
                first = job
            one = one.replace(seed=job.result.all_seeds[0] + 1)  # each tile the next seed
            tile.image = job.result.images[0]
        out = ScriptOutput()
        if first is not None:
            r = first.result
            image = combine_tiles(grid)
            out.add(image, r.infotexts[0], r.all_seeds[0], r.all_subseeds[0], r.all_prompts[0],
                    r.all_negative_prompts[0], ctx.save_image(image, r.infotexts[0], req, r.all_seeds[0]))
            out.warnings += r.warnings
            out.last = first
        return out


def _poor_canvas(lay: _PoorLayout) -> tuple[Image.Image, Image.Image]:
    """The image on the grown (black) canvas, and the mask: white but for the image less twice the blur on each
    grown side."""
    canvas = Image.new("RGB", lay.size)
    canvas.paste(lay.image, (lay.grown.left, lay.grown.up))
    return canvas, _poor_mask(lay, lay.blur * 2)


def _poor_mask(lay: _PoorLayout, inset: int) -> Image.Image:
    """White but for the image less ``inset`` on each grown side (twice the blur for the image mask, half of it
    for the latent mask, as A1111)."""
    e = lay.grown
    mask = Image.new("L", lay.size, "white")
    ImageDraw.Draw(mask).rectangle((
        e.left + (inset if e.left > 0 else 0), e.up + (inset if e.up > 0 else 0),
        mask.width - e.right - (inset if e.right > 0 else 0), mask.height - e.down - (inset if e.down > 0 else 0)),
        fill="black")
    return mask

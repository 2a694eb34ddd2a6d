"""A1111's "Outpainting mk2": the image grown one side at a time; each new strip is first filled with noise whose
spectrum and colour histogram follow the image's own (:func:`matched_noise`), then redrawn as inpainting with the
masked content kept ("original") and a wide mask blur."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from modules import images as image_utils
from modules.requests import GenerationRequest, Img2ImgRequest
from modules.scripts.base import IMG2IMG, Control, RunContext, Script, ScriptOutput, arg_error
from modules.scripts.outpainting import (
    DIRECTIONS,
    blur_within_limit,
    directions,
    expansion,
    init_image,
    number,
    whole_number,
)

if TYPE_CHECKING:
    from modules.engine import JobOutput

INFO = ("<p style=\"margin-bottom:0.75em\">Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, "
        "Denoising strength: 0.8</p>")


# -- matched noise ---------------------------------------------------------------------------------------------------
def _spectrum(data: np.ndarray) -> np.ndarray:
    """The orthonormal 2-D FFT of each channel, centred before and after."""
    shifted = np.fft.fftshift(data, axes=(0, 1))
    return np.fft.ifftshift(np.fft.fft2(shifted, axes=(0, 1), norm="ortho"), axes=(0, 1))


def _inverse_spectrum(data: np.ndarray) -> np.ndarray:
    shifted = np.fft.fftshift(data, axes=(0, 1))
    return np.fft.ifftshift(np.fft.ifft2(shifted, axes=(0, 1), norm="ortho"), axes=(0, 1))


def _falloff_window(rows: int, cols: int) -> np.ndarray:
    """1 / ((x^2 + 1)(y^2 + 1)) over coordinates from -1 to 1 along the shorter side (stretched along the longer)."""
    short = min(rows, cols)
    x = (np.arange(rows) / rows * 2.0 - 1.0) * (rows / short)
    y = (np.arange(cols) / cols * 2.0 - 1.0) * (cols / short)
    window: np.ndarray = 1.0 / np.outer(x**2 + 1.0, y**2 + 1.0)
    return window


def match_histogram(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``values`` (one channel) remapped so that their distribution is that of ``reference``: each distinct value
    goes to the reference value at the same cumulative share."""
    distinct, where, counts = np.unique(values, return_inverse=True, return_counts=True)
    ref_values, ref_counts = np.unique(reference, return_counts=True)
    shares = np.cumsum(counts) / values.size
    ref_shares = np.cumsum(ref_counts) / reference.size
    mapped: np.ndarray = np.interp(shares, ref_shares, ref_values)[where.reshape(-1)]
    return mapped.reshape(values.shape)


def matched_noise(image: np.ndarray, mask: np.ndarray, noise_q: float = 1.0,
                  color_variation: float = 0.05) -> np.ndarray:
    """``image`` (H x W x 3, floats from 0 to 1) with its masked area (``mask``, same shape, 1 = new) filled with
    noise shaped like the unmasked area: the image's spectrum raised to ``noise_q`` gives the noise its structure,
    then its values take the unmasked colours' histogram. ``color_variation`` is how colourful the noise starts.
    Deterministic: the noise has a fixed seed."""
    grey_mask = mask.sum(axis=2) / 3.0
    new, known = grey_mask > 1e-6, grey_mask < 1e-3
    grey3 = np.repeat(grey_mask[:, :, None], 3, axis=2)
    windowed = image * (1.0 - grey3)
    windowed = windowed / np.max(windowed) + np.average(image) * mask
    source = _spectrum(windowed)
    magnitude = np.absolute(source)
    phase = np.divide(source, magnitude, out=np.zeros_like(source), where=magnitude > 0)  # A1111: NaN where 0

    rng = np.random.default_rng(0)
    noise = rng.random(image.shape)
    grey_noise = noise.sum(axis=2) / 3.0
    noise = noise * color_variation + ((1.0 - color_variation) * grey_noise)[:, :, None]
    smoothed = _spectrum(noise) * _falloff_window(image.shape[0], image.shape[1])[:, :, None]
    noise_spectrum = _spectrum(np.real(_inverse_spectrum(smoothed)))
    shaped_spectrum = np.absolute(noise_spectrum) ** 2 * magnitude**noise_q * phase

    shaped = np.real(_inverse_spectrum(shaped_spectrum))
    shaped = shaped - np.min(shaped)
    shaped = shaped / np.max(shaped)
    reference = image[known]
    picked = shaped[new]
    shaped[new] = np.stack([match_histogram(picked[:, c], reference[:, c]) for c in range(3)], axis=1)
    out: np.ndarray = np.clip(image * (1.0 - mask) + shaped * mask, 0.0, 1.0)
    return out


# -- the script ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Args:
    pixels: int
    blur: int
    directions: tuple[str, ...]
    noise_q: float
    color_variation: float


@dataclass(frozen=True)
class _Side:
    """One side being grown: by how much, and the mask blurs of the whole run."""

    name: str
    pixels: int
    blur_x: int
    blur_y: int

    @property
    def horizontal(self) -> bool:
        return self.name in ("left", "right")


def _round64(value: int) -> int:
    return math.ceil(value / 64) * 64


class OutpaintingMk2(Script):
    title = "Outpainting mk2"
    tabs = frozenset({IMG2IMG})

    def controls(self, kind: str) -> list[Control]:
        return [
            Control("", "html", INFO),
            Control("Pixels to expand", "slider", 128, 8, 256, 8, elem_id="pixels"),
            Control("Mask blur", "slider", 8, 0, 64, 1, elem_id="mask_blur"),
            Control("Outpainting direction", "checkboxgroup", list(DIRECTIONS), choices=DIRECTIONS,
                    elem_id="direction"),
            Control("Fall-off exponent (lower=higher detail)", "slider", 1.0, 0.0, 4.0, 0.01, elem_id="noise_q"),
            Control("Color variation", "slider", 0.05, 0.0, 1.0, 0.01, elem_id="color_variation"),
        ]

    def _args(self, args: Sequence[Any]) -> _Args:
        try:
            return _Args(whole_number(args[1], "Pixels to expand", 1, 2048), whole_number(args[2], "Mask blur", 0, 256),
                         directions(args[3]), number(args[4], "Fall-off exponent", 0.0, 16.0),
                         number(args[5], "Color variation", 0.0, 1.0))
        except ValueError as exc:
            raise arg_error(self, str(exc)) from None

    def check(self, req: GenerationRequest, args: Sequence[Any], kind: str) -> None:
        self._args(args)

    def run(self, ctx: RunContext, req: GenerationRequest, args: Sequence[Any]) -> ScriptOutput:
        from modules.generation.batches import resolve_seeds

        a = self._args(args)
        image = init_image(self, req)
        assert isinstance(req, Img2ImgRequest)
        e = expansion(image.width, image.height, a.pixels, a.directions)
        blur_x = a.blur if e.left > 0 or e.right > 0 else 0
        blur_y = a.blur if e.up > 0 or e.down > 0 else 0
        sides = [_Side(name, amount, blur_x, blur_y) for name, amount in
                 (("left", e.left), ("right", e.right), ("up", e.up), ("down", e.down)) if amount > 0]
        batches = req.n_iter
        req = resolve_seeds(req).replace(
            n_iter=1, inpaint_full_res=False, inpainting_fill=1, mask_blur_x=blur_within_limit(ctx, blur_x * 4),
            mask_blur_y=blur_within_limit(ctx, blur_y * 4))
        out = ScriptOutput()
        for n in range(batches):
            batch, first = [image] * req.batch_size, None
            one = req.replace(seed=req.seed + n * req.batch_size)  # every side of a batch uses the same seeds
            for side in sides:
                if ctx.control.interrupted:
                    break
                batch, job = self._grow(ctx, one, batch, side, a)
                if first is None:
                    first = job
            if first is None:
                break
            r = first.result
            for k, grown in enumerate(batch):
                out.add(grown, r.infotexts[k], r.all_seeds[k], r.all_subseeds[k], r.all_prompts[k],
                        r.all_negative_prompts[k], ctx.save_image(grown, r.infotexts[k], req, r.all_seeds[k]))
            out.warnings += [w for w in r.warnings if w not in out.warnings]
            out.last = first
        if len(out.images) > 1:  # A1111's grid of every image, first (only when there are several)
            grid = image_utils.image_grid(out.images)
            out.add(grid, out.infotexts[0], out.seeds[0], out.subseeds[0], out.prompts[0], out.negative_prompts[0],
                    ctx.save_grid(grid, out.infotexts[0], req), grid=True)
        out.index_of_first_image = 0  # A1111 reports 0 although its grid comes first
        return out

    def _grow(self, ctx: RunContext, req: Img2ImgRequest, batch: list[Image.Image], side: _Side, a: _Args
              ) -> tuple[list[Image.Image], JobOutput]:
        """Every image of ``batch`` grown on one side: pre-filled with matched noise, the strip at that side (at
        most the request's size) redrawn as one img2img batch, pasted back."""
        filled, crops, masks, regions = [], [], [], []
        for image in batch:
            canvas, mask = _canvas(image, side)
            noised = matched_noise(np.asarray(canvas) / 255.0, np.asarray(mask) / 255.0, a.noise_q,
                                   a.color_variation)
            filled.append(Image.fromarray(np.clip(noised * 255.0, 0, 255).astype(np.uint8), "RGB"))
            regions.append(_work_region(filled[-1].size, image.size, side, req.width, req.height))
            crops.append(filled[-1].crop(regions[-1]))
            masks.append(mask.crop(regions[-1]))
        x0, y0, x1, y1 = regions[-1]
        latent = _latent_mask((x1 - x0, y1 - y0), _grown_size(batch[-1].size, side), side)
        job = ctx.process(req.replace(init_images=tuple(crops), mask=masks[-1], latent_mask=latent, width=x1 - x0,
                                      height=y1 - y0), save=False)
        grown = []
        for k, (image, done) in enumerate(zip(filled, job.result.images, strict=False)):
            image.paste(done, regions[k][:2])
            grown.append(image.crop((0, 0, *_grown_size(batch[k].size, side))))
        return grown, job


def _latent_mask(size: tuple[int, int], grown: tuple[int, int], side: _Side) -> Image.Image:
    """A1111's latent mask of a grown strip: white, black over the old image less twice the blur on the grown
    side (the image mask keeps the blur once)."""
    w, h = size
    mask = Image.new("RGB", size, "white")
    box = (side.pixels + side.blur_x * 2 if side.name == "left" else 0,
           side.pixels + side.blur_y * 2 if side.name == "up" else 0,
           w - side.pixels - side.blur_x * 2 if side.name == "right" else grown[0],
           h - side.pixels - side.blur_y * 2 if side.name == "down" else grown[1])
    if box[2] >= box[0] and box[3] >= box[1]:
        ImageDraw.Draw(mask).rectangle(box, fill="black")
    return mask


def _grown_size(size: tuple[int, int], side: _Side) -> tuple[int, int]:
    w, h = size
    return (w + side.pixels, h) if side.horizontal else (w, h + side.pixels)


def _canvas(image: Image.Image, side: _Side) -> tuple[Image.Image, Image.Image]:
    """The image on a canvas grown on ``side`` (rounded up to multiples of 64, black), and its mask: white where
    new, black over the image less the blur on the grown side."""
    res_w, res_h = _grown_size(image.size, side)
    canvas = Image.new("RGB", (_round64(res_w), _round64(res_h)))
    canvas.paste(image, (side.pixels if side.name == "left" else 0, side.pixels if side.name == "up" else 0))
    mask = Image.new("RGB", canvas.size, "white")
    box = (side.pixels + side.blur_x if side.name == "left" else 0,
           side.pixels + side.blur_y if side.name == "up" else 0,
           canvas.width - side.pixels - side.blur_x if side.name == "right" else res_w,
           canvas.height - side.pixels - side.blur_y if side.name == "down" else res_h)
    if box[2] >= box[0] and box[3] >= box[1]:
        ImageDraw.Draw(mask).rectangle(box, fill="black")
    return canvas, mask


def _work_region(canvas: tuple[int, int], image: tuple[int, int], side: _Side, width: int, height: int
                 ) -> tuple[int, int, int, int]:
    """The part of the canvas redrawn: the strip at the grown side, as wide (or tall) as the request's width (or
    height) allows, a multiple of 8; along the other side the whole canvas."""
    cw, ch = canvas
    w = min(width, image[0] + side.pixels) // 8 * 8 if side.horizontal else cw
    h = ch if side.horizontal else min(height, image[1] + side.pixels) // 8 * 8
    left, top = side.name == "left", side.name == "up"
    return (0 if left else cw - w, 0 if top else ch - h, w if left else cw, h if top else ch)

"""Pixel-side preparation for img2img and inpainting, with A1111's rules.

Images of any mode are normalised (EXIF rotation, 16-bit, palette, alpha flattened on white); masks of any mode are
binarised at 128 (a mask with transparency uses its alpha); resize modes, "only masked" crop regions, the "fill"
pre-fill of masked content, and the final paste-back and overlay that keep unmasked pixels as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
BACKGROUND = (255, 255, 255)
LANCZOS = Image.Resampling.LANCZOS


def normalise(image: Image.Image) -> Image.Image:
    """An RGB or RGBA 8-bit image, upright (EXIF orientation applied), whatever mode it came in."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image) * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    return image


def flatten(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """RGB with any transparency composited over ``background`` (A1111's img2img background colour)."""
    image = normalise(image)
    if image.mode == "RGBA":
        base = Image.new("RGBA", image.size, background + (255,))
        base.alpha_composite(image)
        return base.convert("RGB")
    return image


def binary_mask(mask: Image.Image, round_mask: bool = True) -> Image.Image:
    """An "L" mask, white = inpaint. RGBA masks with transparency use their alpha; threshold 128, as A1111."""
    mask = ImageOps.exif_transpose(mask) or mask
    if mask.mode in ("P", "LA", "PA"):
        mask = mask.convert("RGBA")
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        gray = mask.split()[-1]
    else:
        gray = normalise(mask).convert("L")
    return gray.point(lambda v: 255 if v > 128 else 0) if round_mask else gray


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's resize modes: 0 just resize, 1 crop and resize, 2 resize and fill (3 is handled in latent space)."""
    if mode in (0, 3) or image.size == (width, height):
        return image.resize((width, height), LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = image.resize((src_w, src_h), LANCZOS)
        out = Image.new(image.mode, (width, height))
        out.paste(resized, (width // 2 - src_w // 2, height // 2 - src_h // 2))
        return out
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), LANCZOS)
    out = Image.new(image.mode, (width, height))
    out.paste(resized, (width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), (0, 0))
            out.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                      (0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), (0, 0))
            out.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                      (fill + src_w, 0))
    return out


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The box around the mask's white pixels, grown by ``padding`` and clamped to the image; None if empty."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def expand_region(region: tuple[int, int, int, int], width: int, height: int, image_w: int, image_h: int
                  ) -> tuple[int, int, int, int]:
    """Grow ``region`` to the aspect ratio of the working size, staying inside the image (A1111's rule)."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        want = int((x2 - x1) / (width / height) - (y2 - y1))
        y1, y2 = y1 - want // 2, y2 + want - want // 2
        if y2 >= image_h:
            y1, y2 = y1 - (y2 - image_h), image_h
        if y1 < 0:
            y2, y1 = y2 - y1, 0
        y2 = min(y2, image_h)
    else:
        want = int((y2 - y1) * (width / height) - (x2 - x1))
        x1, x2 = x1 - want // 2, x2 + want - want // 2
        if x2 >= image_w:
            x1, x2 = x1 - (x2 - image_w), image_w
        if x1 < 0:
            x2, x1 = x2 - x1, 0
        x2 = min(x2, image_w)
    return x1, y1, x2, y2


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": the masked area painted with ever finer blurs of the surrounding colours."""
    out = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


@dataclass
class PreparedImage:
    """One init image ready for sampling, and what is needed to put the result back."""

    image: Image.Image  # RGB at the working size (pre-filled when masked content is "fill")
    mask: Image.Image | None  # "L" at the working size, the latent mask (white = regenerate)
    base: Image.Image | None = None  # the image the result is pasted onto (only masked)
    paste: tuple[int, int, int, int] | None = None  # x, y, w, h of that paste
    overlay: Image.Image | None = None  # RGBA: the original where it must stay, transparent where regenerated
    source: Image.Image | None = None  # for "Just resize (latent upscale)": the unresized image
    latent_mask: Image.Image | None = None  # a separate mask for the latents and the pre-fill (A1111's latent_mask)


def _fixed_point_gaussian(size: int, sigma: float, bits: int = 8) -> list[int]:
    """A sampled Gaussian of odd ``size`` in fixed point with ``bits`` fraction bits that sums to exactly one: the
    half kernel rounded with error diffusion, the centre taking the remainder (OpenCV's bit-exact 8-bit kernel)."""
    half = (size - 1) // 2
    scale = -0.125 / (sigma * sigma)
    values = [math.exp(float(x * x) * scale) for x in range(1 - size, 1 - size + 2 * half, 2)]
    total = 2 * sum(values) + 1.0
    one = 1 << bits
    out = [0] * size
    err = 0.0
    for i, v in enumerate(values):
        adj = v / total * one + err
        q = int(np.rint(adj))
        err = adj - q
        out[i] = out[size - 1 - i] = q
    out[half] = one - 2 * sum(out[:half])
    return out


def gaussian_blur_u8(arr: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """A1111's mask blur: a 1-D Gaussian of size 2 * int(2.5 * sigma + 0.5) + 1 along ``axis`` of an 8-bit image,
    with mirrored borders (without repeating the edge) and the integer rounding of OpenCV's ``GaussianBlur``."""
    size = 2 * int(2.5 * sigma + 0.5) + 1
    kernel = _fixed_point_gaussian(size, sigma)
    half = size // 2
    src = np.asarray(arr, dtype=np.int64)
    n = src.shape[axis]
    index = np.arange(-half, n + half)
    while (index < 0).any() or (index >= n).any():  # reflect-101, repeated for kernels wider than the image
        index = np.where(index < 0, -index, index)
        index = np.where(index >= n, 2 * (n - 1) - index, index)
    padded = np.take(src, index, axis=axis)
    acc = np.zeros_like(src)
    for k, c in enumerate(kernel):
        acc += c * np.take(padded, np.arange(k, k + n), axis=axis)
    out: np.ndarray = np.clip((acc + 128) >> 8, 0, 255).astype(np.uint8)
    return out


def prepare(image: Image.Image, mask: Image.Image | None, width: int, height: int, resize_mode: int,
            blur: tuple[int, int], invert: bool, masked_content: int, full_res: bool, padding: int,
            round_mask: bool = True, latent_mask: Image.Image | None = None) -> PreparedImage:
    """A1111's img2img preparation of one image and its optional mask. ``latent_mask`` (A1111's, used by its
    outpainting scripts) replaces the mask where the latents are blended and the masked area pre-filled; the
    inpainting model's conditioning and the overlay keep the (blurred) mask."""
    image = flatten(image)
    if mask is None:
        if resize_mode == 3:
            return PreparedImage(resize_image(0, image, width, height), None, source=image)
        return PreparedImage(resize_image(resize_mode, image, width, height), None)
    mask = binary_mask(mask, round_mask)
    if mask.size != image.size:
        mask = resize_image(resize_mode if resize_mode != 3 else 0, mask, *image.size)
    if invert:
        mask = ImageOps.invert(mask)
    if blur[0] > 0:
        mask = Image.fromarray(gaussian_blur_u8(np.asarray(mask), blur[0], axis=1))
    if blur[1] > 0:
        mask = Image.fromarray(gaussian_blur_u8(np.asarray(mask), blur[1], axis=0))
    if full_res:
        region = crop_region(mask, padding)
        if region is not None:
            region = expand_region(region, width, height, mask.width, mask.height)
            x1, y1, x2, y2 = region
            work = resize_image(2, image.crop(region), width, height)
            work_mask = resize_image(2, mask.crop(region), width, height)
            prepared = PreparedImage(work, work_mask, base=image, paste=(x1, y1, x2 - x1, y2 - y1),
                                     overlay=_overlay(image, mask), latent_mask=latent_mask)
            if masked_content != 1:  # A1111 pre-fills for "fill", "latent noise" and "latent nothing"
                prepared.image = fill_masked(work, _same_size(latent_mask, work) or work_mask)
            return prepared
    work = resize_image(resize_mode if resize_mode != 3 else 0, image, width, height)
    work_mask = resize_image(resize_mode if resize_mode != 3 else 0, mask, width, height)
    overlay_mask = Image.fromarray(np.clip(np.asarray(work_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8))
    prepared = PreparedImage(work, work_mask, overlay=_overlay(work, overlay_mask), latent_mask=latent_mask)
    if masked_content != 1:  # A1111 pre-fills for "fill", "latent noise" and "latent nothing"
        prepared.image = fill_masked(work, _same_size(latent_mask, work) or work_mask)
    return prepared


def _same_size(mask: Image.Image | None, image: Image.Image) -> Image.Image | None:
    return mask.convert("L").resize(image.size) if mask is not None else None


def _overlay(image: Image.Image, mask: Image.Image) -> Image.Image:
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    return kept.convert("RGBA")


def finish(result: Image.Image, prepared: PreparedImage) -> Image.Image:
    """Paste an only-masked result back and lay the untouched original over the result (A1111's overlay)."""
    image = result
    if prepared.paste is not None and prepared.base is not None:
        x, y, w, h = prepared.paste
        base = prepared.base.copy()
        base.paste(result.resize((w, h), LANCZOS), (x, y))
        image = base
    if prepared.overlay is not None:
        image = image.convert("RGBA")
        image.alpha_composite(prepared.overlay)
        image = image.convert("RGB")
    return image

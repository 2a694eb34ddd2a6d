"""img2img and inpainting: prepare images and masks, encode, denoise from the images, decode, put back."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules import samplers
from modules.generation import image_prep
from modules.generation import latents as lat
from modules.generation.batches import Batch, ImageListener, Sampled, make_rng, resolve_seeds, run_batches
from modules.generation.conditioning import build_conditioning
from modules.generation.control import JobControl
from modules.generation.passes import PassSpec, full_mask_conditioning, sample_from_latents
from modules.generation.result import GenerationResult
from modules.generation.txt2img import churn_params
from modules.models.loader import ModelParts
from modules.requests import Img2ImgRequest

Tensor = torch.Tensor


def _prepare_all(req: Img2ImgRequest, count: int) -> list[image_prep.PreparedImage]:
    images = list(req.init_images)
    if len(images) == 1:
        images = images * count
    prepared = []
    for image in images[:count]:
        prepared.append(image_prep.prepare(
            image, req.mask, req.width, req.height, req.resize_mode, (req.mask_blur_x, req.mask_blur_y),
            req.inpainting_mask_invert, req.inpainting_fill, req.inpaint_full_res, req.inpaint_full_res_padding,
            req.mask_round))
    return prepared


def _encode(parts: ModelParts, batch: list[image_prep.PreparedImage], req: Img2ImgRequest) -> Tensor:
    if req.resize_mode == 3 and batch[0].source is not None:  # encode as is, then upscale in latent space
        out = []
        for item in batch:
            src = item.source
            assert src is not None  # every image of a job has the same resize mode
            src = src.resize((max(8, src.width - src.width % 8), max(8, src.height - src.height % 8)))
            z = lat.encode(parts.vae, lat.from_pil([src]))
            out.append(F.interpolate(z, size=(req.height // 8, req.width // 8), mode="bilinear"))
        return torch.cat(out).to(parts.device)
    return lat.encode(parts.vae, lat.from_pil([item.image for item in batch])).to(parts.device)


def _pixel_masks(batch: list[image_prep.PreparedImage]) -> list[Image.Image]:
    """The masks of a batch: every image of a job has one, or none has."""
    return [item.mask for item in batch if item.mask is not None]


def _latent_mask(batch: list[image_prep.PreparedImage], shape: torch.Size, round_mask: bool) -> Tensor | None:
    if batch[0].mask is None:
        return None
    masks = []
    for pixel_mask in _pixel_masks(batch):
        small = pixel_mask.convert("L").resize((shape[3], shape[2]), Image.Resampling.BICUBIC)
        m = torch.from_numpy(np.asarray(small, dtype="float32") / 255.0)
        masks.append(m.round() if round_mask else m)
    return torch.stack(masks).unsqueeze(1)


def _inpaint_conditioning(parts: ModelParts, batch: list[image_prep.PreparedImage], mask: Tensor | None,
                          req: Img2ImgRequest) -> Tensor | None:
    """Extra UNet inputs of an inpainting model: the mask and the latents of the image with the mask cut out."""
    if not parts.is_inpaint:
        return None
    if mask is None:
        return full_mask_conditioning(parts, len(batch), req.width, req.height)
    pixels = lat.from_pil([item.image for item in batch])
    full = torch.stack([torch.from_numpy(np.asarray(m.convert("L"), dtype="float32") / 255.0)
                        for m in _pixel_masks(batch)]).unsqueeze(1).round()
    masked = lat.encode(parts.vae, pixels * (1 - full) + 0.5 * full).to(parts.device)
    return torch.cat([mask.to(parts.device), masked], dim=1)


def _start_latents(req: Img2ImgRequest, init: Tensor, mask: Tensor | None, seed: int) -> Tensor | None:
    """A1111's "latent noise" / "latent nothing" masked content: what the masked area starts from."""
    if mask is None or req.inpainting_fill not in (2, 3):
        return None
    m = mask.to(init.device)
    filler = torch.randn(init.shape, generator=torch.Generator().manual_seed(seed)).to(init.device) \
        if req.inpainting_fill == 2 else torch.zeros_like(init)
    return init * (1 - m) + filler * m


def img2img(parts: ModelParts, req: Img2ImgRequest, control: JobControl, preview_every: int = 0,
            on_image: ImageListener | None = None) -> GenerationResult:
    """Generate ``n_iter`` batches from the init images. ``req`` must be validated already."""
    req = resolve_seeds(req)
    if len(req.init_images) > 1:  # several init images make one batch of that size, as in A1111
        req = req.replace(batch_size=len(req.init_images))
    spec, schedule = samplers.resolve_sampler(req.sampler_name, req.scheduler)

    def sample(batch: Batch) -> Sampled:
        control.update(phase="encoding")
        prepared = _prepare_all(req, req.batch_size)
        init = _encode(parts, prepared, req)
        mask = _latent_mask(prepared, init.shape, req.mask_round)
        rng = make_rng(req, parts, batch.seeds, batch.subseeds, req.width, req.height)
        conds = build_conditioning(batch.encoder, batch.prompts.positive, batch.prompts.negative, req.steps)
        ps = PassSpec(spec, schedule, req.steps, req.cfg_scale, conds, req.width, req.height, req.eta,
                      churn_params(req), "sampling", preview_every, _inpaint_conditioning(parts, prepared, mask, req))
        keep = mask if (mask is not None and not parts.is_inpaint) else None
        latents = sample_from_latents(parts, ps, init, req.denoising_strength, rng, control,
                                      req.initial_noise_multiplier, keep_mask=keep,
                                      start_latents=_start_latents(req, init, mask, batch.seeds[0]))
        return Sampled(latents, lambda k, image: image_prep.finish(image, prepared[k]))

    return run_batches(parts, req, control, sample, on_image)

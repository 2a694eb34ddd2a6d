"""img2img and inpainting: prepare images and masks, encode, denoise from the images, decode, put back."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules import samplers
from modules.errors import GenerationError
from modules.generation import image_prep
from modules.generation import latents as lat
from modules.generation.conditioning import TextEncoder, build_conditioning
from modules.generation.control import JobControl
from modules.generation.noise import all_seeds
from modules.generation.passes import PassSpec, full_mask_conditioning, sample_from_latents
from modules.generation.prompts import prepare_prompts
from modules.generation.result import GenerationResult, build_infotext
from modules.generation.txt2img import churn_params, make_rng, resolve_seeds
from modules.models.loader import ModelParts
from modules.requests import Img2ImgRequest

Tensor = torch.Tensor


def infotext_extras(req: Img2ImgRequest) -> dict[str, Any]:
    """The img2img keys of the infotext, as A1111 writes them."""
    out: dict[str, Any] = {"Denoising strength": req.denoising_strength}
    if req.mask is not None:
        if req.mask_blur_x == req.mask_blur_y:
            out["Mask blur"] = req.mask_blur_x
        else:
            out["Mask blur x"], out["Mask blur y"] = req.mask_blur_x, req.mask_blur_y
        out["Mask mode"] = "Inpaint not masked" if req.inpainting_mask_invert else "Inpaint masked"
        out["Masked content"] = image_prep.MASKED_CONTENT[req.inpainting_fill]
        out["Inpaint area"] = "Only masked" if req.inpaint_full_res else "Whole picture"
        if req.inpaint_full_res:
            out["Masked area padding"] = req.inpaint_full_res_padding
    if req.initial_noise_multiplier != 1.0:
        out["Noise multiplier"] = req.initial_noise_multiplier
    if req.resize_mode == 3:
        out["Resize mode"] = image_prep.RESIZE_MODES[3]
    return out


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
            src = src.resize((max(8, src.width - src.width % 8), max(8, src.height - src.height % 8)))
            z = lat.encode(parts.vae, lat.from_pil([src]))
            out.append(F.interpolate(z, size=(req.height // 8, req.width // 8), mode="bilinear"))
        return torch.cat(out).to(parts.device)
    return lat.encode(parts.vae, lat.from_pil([item.image for item in batch])).to(parts.device)


def _latent_mask(batch: list[image_prep.PreparedImage], shape: torch.Size, round_mask: bool) -> Tensor | None:
    if batch[0].mask is None:
        return None
    masks = []
    for item in batch:
        small = item.mask.convert("L").resize((shape[3], shape[2]), Image.Resampling.BICUBIC)
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
    full = torch.stack([torch.from_numpy(np.asarray(item.mask.convert("L"), dtype="float32") / 255.0)
                        for item in batch]).unsqueeze(1).round()
    masked = lat.encode(parts.vae, pixels * (1 - full) + 0.5 * full).to(parts.device)
    return torch.cat([mask.to(parts.device), masked], dim=1)


def img2img(parts: ModelParts, req: Img2ImgRequest, control: JobControl, preview_every: int = 0
            ) -> GenerationResult:
    """Generate ``n_iter`` batches from the init images. ``req`` must be validated already."""
    req = resolve_seeds(req)
    if len(req.init_images) > 1:  # several init images make one batch of that size, as in A1111
        req = req.replace(batch_size=len(req.init_images))
    total = req.image_count
    seeds, subseeds = all_seeds(req.seed, total), all_seeds(req.subseed, total)
    prepared_prompts = prepare_prompts(req, total)
    encoder = TextEncoder(parts, req.clip_skip)
    extras = infotext_extras(req)
    result = GenerationResult(request=req, images=[], infotexts=[], all_prompts=prepared_prompts.original_positive,
                              all_negative_prompts=prepared_prompts.original_negative, all_seeds=seeds,
                              all_subseeds=subseeds, model_name=parts.info.model_name if parts.info else "",
                              model_hash=parts.info.shorthash if parts.info else None, extra_params=extras)
    spec, schedule = samplers.resolve_sampler(req.sampler_name, req.scheduler)
    control.update(job_count=req.n_iter, job_no=0)
    with torch.inference_mode(), lat.seamless([parts.unet, parts.vae], req.tiling):
        for it in range(req.n_iter):
            if control.interrupted:
                break
            control.clear_skip()
            control.update(job_no=it, sampling_step=0, phase="encoding")
            sl = slice(it * req.batch_size, (it + 1) * req.batch_size)
            batch = _prepare_all(req, req.batch_size)
            init = _encode(parts, batch, req)
            mask = _latent_mask(batch, init.shape, req.mask_round)
            rng = make_rng(req, parts, seeds[sl], subseeds[sl], req.width, req.height)
            start = None
            if mask is not None and req.inpainting_fill in (2, 3):
                m = mask.to(init.device)
                filler = torch.randn(init.shape, generator=torch.Generator().manual_seed(seeds[sl.start])
                                     ).to(init.device) if req.inpainting_fill == 2 else torch.zeros_like(init)
                start = init * (1 - m) + filler * m
            conds = build_conditioning(encoder, prepared_prompts.positive[sl], prepared_prompts.negative[sl],
                                       req.steps)
            ps = PassSpec(spec, schedule, req.steps, req.cfg_scale, conds, req.width, req.height, req.eta,
                          churn_params(req), "sampling", preview_every,
                          _inpaint_conditioning(parts, batch, mask, req))
            keep = mask if (mask is not None and not parts.is_inpaint) else None
            latents = sample_from_latents(parts, ps, init, req.denoising_strength, rng, control,
                                          req.initial_noise_multiplier, keep_mask=keep, start_latents=start)
            if not torch.isfinite(latents).all():
                raise GenerationError("the UNet produced NaNs; try the --no-half option or another sampler")
            control.update(phase="decoding")
            decoded = lat.to_pil(lat.decode(parts.vae, latents, control.warn))
            for k, image in enumerate(decoded):
                i = sl.start + k
                result.images.append(image_prep.finish(image, batch[k]))
                result.infotexts.append(build_infotext(req, parts, prepared_prompts.original_positive[i],
                                                       prepared_prompts.original_negative[i], seeds[i],
                                                       subseeds[i], extras))
    result.interrupted = control.interrupted
    result.warnings = list(control.warnings) + prepared_prompts.warnings
    control.update(job_no=req.n_iter, phase="done")
    return result

"""img2img and inpainting: prepare images and masks, encode, denoise from the images, decode, put back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules import samplers
from modules.generation import image_prep
from modules.generation import latents as lat
from modules.generation.batches import (
    Batch,
    FaceRestore,
    ImageListener,
    JobModels,
    ModelSource,
    Sampled,
    make_rng,
    resolve_seeds,
    run_batches,
)
from modules.generation.conditioning import ImageConds, build_conditioning
from modules.generation.control import JobControl
from modules.generation.passes import PassSpec, sample_from_latents
from modules.generation.result import GenerationResult
from modules.generation.tome import pass_ratio, token_merging
from modules.generation.txt2img import refiner_for, sampling_options
from modules.models.loader import ModelParts
from modules.networks.service import ExtraNetworks
from modules.requests import Img2ImgRequest
from modules.upscalers.registry import UpscalerRegistry

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
            req.mask_round, req.latent_mask))
    return prepared


def _encode(parts: ModelParts, batch: list[image_prep.PreparedImage], req: Img2ImgRequest,
            generator: torch.Generator) -> Tensor:
    if req.resize_mode == 3 and batch[0].source is not None:  # encode as is, then upscale in latent space
        sources = []
        for item in batch:
            src = item.source
            assert src is not None  # every image of a job has the same resize mode
            sources.append(src.resize((max(8, src.width - src.width % 8), max(8, src.height - src.height % 8))))
        z = lat.encode(parts.vae, lat.from_pil(sources), generator, req.vae_tiling)
        return F.interpolate(z, size=(req.height // 8, req.width // 8), mode="bilinear").to(parts.device)
    return lat.encode(parts.vae, lat.from_pil([item.image for item in batch]), generator,
                      req.vae_tiling).to(parts.device)


def _pixel_masks(batch: list[image_prep.PreparedImage]) -> list[Image.Image]:
    """The masks of a batch: every image of a job has one, or none has."""
    return [item.mask for item in batch if item.mask is not None]


def _latent_mask(batch: list[image_prep.PreparedImage], shape: torch.Size, round_mask: bool) -> Tensor | None:
    if batch[0].mask is None:
        return None
    masks = []
    for pixel_mask in [item.latent_mask or item.mask for item in batch if item.mask is not None]:
        # as A1111: the mask as RGB, resized (bicubic) to the latent size, its first channel
        small = pixel_mask.convert("RGB").resize((shape[3], shape[2]), Image.Resampling.BICUBIC).getchannel(0)
        m = torch.from_numpy(np.asarray(small, dtype="float32") / 255.0)
        masks.append(m.round() if round_mask else m)
    return torch.stack(masks).unsqueeze(1)


def _inpaint_conditioning(parts: ModelParts, batch: list[image_prep.PreparedImage], req: Img2ImgRequest,
                          latent_shape: torch.Size, generator: torch.Generator) -> Tensor | None:
    """Extra UNet inputs of an inpainting model: the mask (rounded, full resolution, then nearest to latent size;
    without a mask, ones) and the latents of the image with the masked area turned grey by the "conditioning mask
    strength", encoded as A1111 does."""
    if not parts.is_inpaint:
        return None
    pixels = lat.from_pil([item.image for item in batch])
    if batch[0].mask is None:
        full = torch.ones((pixels.shape[0], 1, *pixels.shape[2:]))
    else:
        full = torch.stack([torch.from_numpy(np.asarray(m.convert("L"), dtype="float32") / 255.0)
                            for m in _pixel_masks(batch)]).unsqueeze(1)
        if req.mask_round:
            full = full.round()
    weight = req.inpainting_mask_weight * full
    masked = lat.encode(parts.vae, pixels * (1 - weight) + 0.5 * weight, generator, req.vae_tiling).to(parts.device)
    small = F.interpolate(full, size=tuple(latent_shape[-2:])).to(parts.device)
    return torch.cat([small.expand(masked.shape[0], -1, -1, -1), masked], dim=1)


@dataclass
class _Init:
    """What A1111 prepares once per job: the images, their latents, the mask and the inpainting conditioning."""

    prepared: list[image_prep.PreparedImage]
    latents: Tensor
    mask: Tensor | None
    image_cond: Tensor | None


def _prepare_job(parts: ModelParts, req: Img2ImgRequest, first_seeds: list[int], last_seed: int) -> _Init:
    prepared = _prepare_all(req, req.batch_size)
    # A1111 samples the VAE posterior with torch's global generator, last seeded by the previous request's last
    # image; here a generator seeded by this job's last seed, which gives A1111's result for a repeated request
    generator = torch.Generator().manual_seed(int(last_seed))
    init = _encode(parts, prepared, req, generator)
    mask = _latent_mask(prepared, init.shape, req.mask_round)
    if mask is not None:
        m = mask.to(init.device)
        if req.inpainting_fill == 2:  # latent noise: the first batch's seeds' noise
            rng = make_rng(req.replace(subseed_strength=0.0, seed_resize_from_w=0, seed_resize_from_h=0), parts,
                           first_seeds, [], req.width, req.height)
            init = init * (1 - m) + rng.next() * m
            generator = torch.Generator().manual_seed(int(first_seeds[-1]))
        elif req.inpainting_fill == 3:  # latent nothing
            init = init * (1 - m)
    return _Init(prepared, init, mask, _inpaint_conditioning(parts, prepared, req, init.shape, generator))


def img2img(parts: ModelParts, req: Img2ImgRequest, control: JobControl, preview_every: int = 0,
            on_image: ImageListener | None = None, models: ModelSource | None = None,
            networks: ExtraNetworks | None = None, upscalers: UpscalerRegistry | None = None,
            faces: FaceRestore | None = None) -> GenerationResult:
    """Generate ``n_iter`` batches from the init images. ``req`` must be validated already."""
    req = resolve_seeds(req)
    if len(req.init_images) > 1:  # several init images make one batch of that size, as in A1111
        req = req.replace(batch_size=len(req.init_images))
    spec, schedule = samplers.resolve_sampler(req.sampler_name, req.scheduler)

    state: dict[str, _Init] = {}

    job = JobModels(parts, models)

    def sample(batch: Batch) -> Sampled:
        job.restore(parts)
        control.update(phase="encoding")
        if "init" not in state:
            state["init"] = _prepare_job(parts, req, batch.seeds, req.seed + req.image_count - 1)
        init = state["init"]
        rng = make_rng(req, parts, batch.seeds, batch.subseeds, req.width, req.height)
        def conds_for(p: ModelParts) -> list[ImageConds]:
            enc = batch.encoder.for_parts(p)
            return build_conditioning(enc, batch.prompts.positive, batch.prompts.negative, req.steps)

        conds = conds_for(parts)
        ps = PassSpec(spec, schedule, req.steps, req.cfg_scale, conds, req.width, req.height, sampling_options(req),
                      "sampling", preview_every, init.image_cond, refiner_for(req, job, False, conds_for))
        ratio = pass_ratio(req.token_merging_ratio, 0.0, req.token_merging_ratio_img2img, img2img=True)
        with token_merging(parts.unet, ratio):
            latents = sample_from_latents(parts, ps, init.latents, req.denoising_strength, rng, control,
                                          req.initial_noise_multiplier, mask=init.mask)
        return Sampled(latents, lambda k, image: image_prep.finish(image, init.prepared[k]), job.current)

    return run_batches(parts, req, control, sample, on_image, networks, faces)

"""txt2img with hires fix: batches of seeds -> first pass -> optional upscale and second pass -> images."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from PIL import Image

from modules import samplers
from modules.errors import ValidationError
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
from modules.generation.conditioning import ImageConds, TextEncoder, build_conditioning
from modules.generation.control import JobControl
from modules.generation.noise import ImageRNG
from modules.generation.passes import (
    PassSpec,
    Refiner,
    SamplingOptions,
    crop_latents,
    full_mask_conditioning,
    sample_from_latents,
    sample_from_noise,
    upscale_latents,
)
from modules.generation.prompts import PreparedPrompts
from modules.generation.result import GenerationResult
from modules.generation.tome import pass_ratio, token_merging
from modules.models.loader import ModelParts
from modules.networks.service import ExtraNetworks
from modules.requests import (
    LATENT_UPSCALE_MODES,
    NO_REFINER,
    PIXEL_UPSCALERS,
    SAME_CHECKPOINT,
    SAME_SAMPLER,
    GenerationRequest,
    Img2ImgRequest,
)
from modules.sampling import schedules
from modules.upscalers.registry import UpscalerError, UpscalerRegistry

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def sampling_options(req: GenerationRequest) -> SamplingOptions:
    """The request's sampler and schedule parameters."""
    return SamplingOptions(
        eta=req.eta, eta_ancestral=req.eta_ancestral, eta_ddim=req.eta_ddim, s_churn=req.s_churn, s_tmin=req.s_tmin,
        s_tmax=req.s_tmax or 0.0, s_noise=req.s_noise, s_min_uncond=req.s_min_uncond,
        schedule=schedules.ScheduleOptions(req.sigma_min, req.sigma_max, req.rho, req.beta_dist_alpha,
                                           req.beta_dist_beta, req.use_old_karras_scheduler_sigmas,
                                           req.always_discard_next_to_last_sigma),
        sgm_noise_multiplier=req.sgm_noise_multiplier)


def refiner_for(req: GenerationRequest, models: JobModels, hires: bool,
                conds: Callable[[ModelParts], list[ImageConds]]
                ) -> Refiner | None:
    """The refiner of a pass, if the request has one for it (with hires fix, A1111's "Hires fix: which pass to
    enable refiner for" decides)."""
    if req.refiner_checkpoint in NO_REFINER:
        return None
    if req.enable_hr and not isinstance(req, Img2ImgRequest):
        wanted = ("second pass", "both passes") if hires else ("first pass", "both passes")
        if req.hires_fix_refiner_pass not in wanted:
            return None
    return Refiner(str(req.refiner_checkpoint), req.refiner_switch_at, models, conds)


def _first_pass(models: JobModels, req: GenerationRequest, encoder: TextEncoder, prompts: PreparedPrompts,
                rng: ImageRNG, control: JobControl, preview_every: int, generator: torch.Generator) -> Tensor:
    parts = models.current
    spec, schedule = samplers.resolve_sampler(req.sampler_name, req.scheduler)
    hires_steps = req.hr_second_pass_steps or req.steps if req.enable_hr else None

    def conds_for(p: ModelParts) -> list[ImageConds]:
        enc = encoder.for_parts(p)
        return build_conditioning(enc, prompts.positive, prompts.negative, req.steps, hires_steps)

    conds = conds_for(parts)
    ps = PassSpec(spec, schedule, req.steps, req.cfg_scale, conds, req.width, req.height, sampling_options(req),
                  "sampling", preview_every,
                  full_mask_conditioning(parts, len(conds), req.width, req.height, generator),
                  refiner_for(req, models, False, conds_for))
    with token_merging(parts.unet, pass_ratio(req.token_merging_ratio)):
        return sample_from_noise(parts, ps, rng, control)


def _pixel_upscale(images: list[Image.Image], name: str, width: int, height: int,
                   upscalers: UpscalerRegistry | None, control: JobControl) -> list[Image.Image]:
    """The first pass's images at the hires size through a pixel upscaler: the built-in resamplers, or a model
    upscaler run in tiles (progress per tile; an interrupt stops it)."""
    if name in PIXEL_UPSCALERS:
        resample = Image.Resampling.NEAREST if name == "Nearest" else Image.Resampling.LANCZOS
        return [im.resize((width, height), resample) for im in images]
    if upscalers is None or upscalers.find(name) is None:
        raise ValidationError(f"hr_upscaler: unknown upscaler {name!r}", field="hr_upscaler")

    def on_tile(done: int, total: int) -> bool:
        control.update(phase=f"upscaling: tile {done} of {total}")
        return not control.should_stop()

    try:
        return [upscalers.resize(im, width, height, name, on_tile) for im in images]
    except UpscalerError as exc:
        raise ValidationError(f"hr_upscaler: {exc}", field="hr_upscaler") from None


def _hires_pass(models: JobModels, req: GenerationRequest, encoder: TextEncoder, prompts: PreparedPrompts,
                latents: Tensor, seeds: list[int], subseeds: list[int], control: JobControl,
                preview_every: int, generator: torch.Generator, upscalers: UpscalerRegistry | None = None) -> Tensor:
    parts = models.current
    up_w, up_h, final_w, final_h = req.hires_target()
    images = None
    if req.hr_upscaler not in LATENT_UPSCALE_MODES:  # decoded by the first pass's model
        control.update(phase="upscaling")
        images = lat.to_pil(lat.decode(parts.vae, latents, control.warn, req.vae_tiling))
    if req.hr_checkpoint_name not in (None, "", SAME_CHECKPOINT):
        control.update(phase="loading model")
        parts = models.switch(str(req.hr_checkpoint_name), "hr_checkpoint_name")
    if images is None:
        mode, antialias = LATENT_UPSCALE_MODES[req.hr_upscaler]
        latents = upscale_latents(latents, up_w, up_h, mode, antialias)
    else:
        images = _pixel_upscale(images, req.hr_upscaler, up_w, up_h, upscalers, control)
        latents = lat.encode(parts.vae, lat.from_pil(images), generator, req.vae_tiling).to(parts.device)
    if (up_w, up_h) != (final_w, final_h):
        latents = crop_latents(latents, final_w, final_h)
    steps = req.hr_second_pass_steps or req.steps
    sampler_name = req.hr_sampler_name if req.hr_sampler_name not in (None, "", SAME_SAMPLER) else req.sampler_name
    sched_name = req.hr_scheduler if req.hr_scheduler not in (None, "", SAME_SAMPLER) else req.scheduler
    spec, schedule = samplers.resolve_sampler(sampler_name, sched_name, field_name="hr_sampler_name")

    def conds_for(p: ModelParts) -> list[ImageConds]:
        enc = encoder.for_parts(p)
        return build_conditioning(enc, prompts.hr_positive, prompts.hr_negative, req.steps, steps)

    conds = conds_for(parts)
    ps = PassSpec(spec, schedule, steps, req.cfg_scale, conds, final_w, final_h, sampling_options(req), "hires",
                  preview_every, full_mask_conditioning(parts, len(conds), final_w, final_h, generator),
                  refiner_for(req, models, True, conds_for))
    rng = make_rng(req, parts, seeds, subseeds, final_w, final_h)
    with token_merging(parts.unet, pass_ratio(req.token_merging_ratio, req.token_merging_ratio_hr, hires=True)):
        return sample_from_latents(parts, ps, latents, req.denoising_strength, rng, control, fixed_steps=True)


def txt2img(parts: ModelParts, req: GenerationRequest, control: JobControl, preview_every: int = 0,
            on_image: ImageListener | None = None, models: ModelSource | None = None,
            networks: ExtraNetworks | None = None, upscalers: UpscalerRegistry | None = None,
            faces: FaceRestore | None = None) -> GenerationResult:
    """Generate ``n_iter`` batches of ``batch_size`` images. ``req`` must be validated already. ``models`` loads
    the hires checkpoint and the refiner when the request names them."""
    req = resolve_seeds(req)
    job = JobModels(parts, models)

    def sample(batch: Batch) -> Sampled:
        job.restore(parts)
        rng = make_rng(req, parts, batch.seeds, batch.subseeds, req.width, req.height)
        # A1111 samples VAE posteriors (an inpainting model's grey image, the hires pass's upscaled images) from
        # torch's global generator, which making the batch's noise leaves seeded with the batch's last seed
        generator = torch.Generator().manual_seed(int(batch.seeds[-1]))
        latents = _first_pass(job, req, batch.encoder, batch.prompts, rng, control, preview_every, generator)
        if req.enable_hr and not control.should_stop():
            latents = _hires_pass(job, req, batch.encoder, batch.prompts, latents, batch.seeds, batch.subseeds,
                                  control, preview_every, generator, upscalers)
        return Sampled(latents, parts=job.current)

    return run_batches(parts, req, control, sample, on_image, networks, faces)

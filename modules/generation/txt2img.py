"""txt2img with hires fix: batches of seeds -> first pass -> optional upscale and second pass -> images."""

from __future__ import annotations

import logging

import torch
from PIL import Image

from modules import samplers
from modules.errors import GenerationError
from modules.generation import latents as lat
from modules.generation.conditioning import TextEncoder, build_conditioning
from modules.generation.control import JobControl
from modules.generation.noise import ImageRNG, all_seeds, pick_seed
from modules.generation.passes import (
    PassSpec,
    crop_latents,
    full_mask_conditioning,
    sample_from_latents,
    sample_from_noise,
    upscale_latents,
)
from modules.generation.prompts import PreparedPrompts, prepare_prompts
from modules.generation.result import GenerationResult, build_infotext
from modules.models.loader import ModelParts
from modules.requests import LATENT_UPSCALE_MODES, SAME_SAMPLER, GenerationRequest

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def resolve_seeds(req: GenerationRequest) -> GenerationRequest:
    """Replace -1 seeds by random ones, recorded in the returned request."""
    return req.replace(seed=pick_seed(req.seed), subseed=pick_seed(req.subseed))


def churn_params(req: GenerationRequest) -> dict[str, float]:
    out = {"s_churn": req.s_churn, "s_tmin": req.s_tmin, "s_noise": req.s_noise}
    if req.s_tmax is not None and req.s_tmax > 0:
        out["s_tmax"] = req.s_tmax
    return {k: v for k, v in out.items() if not (k == "s_noise" and v == 1.0) and not (k != "s_noise" and v == 0)}


def make_rng(req: GenerationRequest, parts: ModelParts, seeds: list[int], subseeds: list[int], width: int,
         height: int) -> ImageRNG:
    resize = (0, 0)
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        resize = (req.seed_resize_from_h // 8, req.seed_resize_from_w // 8)
    channels = int(parts.unet.config.out_channels)
    return ImageRNG((channels, height // 8, width // 8), seeds, subseeds, req.subseed_strength, resize,
                    req.randn_source, parts.device, req.eta_noise_seed_delta)


def _first_pass(parts: ModelParts, req: GenerationRequest, encoder: TextEncoder, prompts: PreparedPrompts,
                rng: ImageRNG, control: JobControl, preview_every: int) -> Tensor:
    spec, schedule = samplers.resolve_sampler(req.sampler_name, req.scheduler)
    conds = build_conditioning(encoder, prompts.positive, prompts.negative, req.steps,
                               req.hr_second_pass_steps or req.steps if req.enable_hr else None)
    ps = PassSpec(spec, schedule, req.steps, req.cfg_scale, conds, req.width, req.height, req.eta, churn_params(req),
                  "sampling", preview_every, full_mask_conditioning(parts, len(conds), req.width, req.height))
    return sample_from_noise(parts, ps, rng, control)


def _hires_pass(parts: ModelParts, req: GenerationRequest, encoder: TextEncoder, prompts: PreparedPrompts,
                latents: Tensor, seeds: list[int], subseeds: list[int], control: JobControl,
                preview_every: int) -> Tensor:
    up_w, up_h, final_w, final_h = req.hires_target()
    if req.hr_upscaler in LATENT_UPSCALE_MODES:
        mode, antialias = LATENT_UPSCALE_MODES[req.hr_upscaler]
        latents = upscale_latents(latents, up_w, up_h, mode, antialias)
    else:
        control.update(phase="upscaling")
        images = lat.to_pil(lat.decode(parts.vae, latents, control.warn))
        resample = Image.Resampling.NEAREST if req.hr_upscaler == "Nearest" else Image.Resampling.LANCZOS
        images = [im.resize((up_w, up_h), resample) for im in images]
        latents = lat.encode(parts.vae, lat.from_pil(images)).to(parts.device)
    if (up_w, up_h) != (final_w, final_h):
        latents = crop_latents(latents, final_w, final_h)
    steps = req.hr_second_pass_steps or req.steps
    sampler_name = req.hr_sampler_name if req.hr_sampler_name not in (None, "", SAME_SAMPLER) else req.sampler_name
    sched_name = req.hr_scheduler if req.hr_scheduler not in (None, "", SAME_SAMPLER) else req.scheduler
    spec, schedule = samplers.resolve_sampler(sampler_name, sched_name, field_name="hr_sampler_name")
    conds = build_conditioning(encoder, prompts.hr_positive, prompts.hr_negative, req.steps, steps)
    ps = PassSpec(spec, schedule, steps, req.cfg_scale, conds, final_w, final_h, req.eta, churn_params(req), "hires",
                  preview_every, full_mask_conditioning(parts, len(conds), final_w, final_h))
    rng = make_rng(req.replace(seed_resize_from_w=0, seed_resize_from_h=0), parts, seeds, subseeds, final_w, final_h)
    return sample_from_latents(parts, ps, latents, req.denoising_strength, rng, control)


def txt2img(parts: ModelParts, req: GenerationRequest, control: JobControl, preview_every: int = 0
            ) -> GenerationResult:
    """Generate ``n_iter`` batches of ``batch_size`` images. ``req`` must be validated already."""
    req = resolve_seeds(req)
    total = req.image_count
    seeds = all_seeds(req.seed, total)
    subseeds = all_seeds(req.subseed, total)
    prepared = prepare_prompts(req, total)
    encoder = TextEncoder(parts, req.clip_skip)
    result = GenerationResult(request=req, images=[], infotexts=[], all_prompts=prepared.original_positive,
                              all_negative_prompts=prepared.original_negative, all_seeds=seeds,
                              all_subseeds=subseeds, model_name=parts.info.model_name if parts.info else "",
                              model_hash=parts.info.shorthash if parts.info else None)
    control.update(job_count=req.n_iter, job_no=0)
    modules = [parts.unet, parts.vae]
    with torch.inference_mode(), lat.seamless(modules, req.tiling):
        for it in range(req.n_iter):
            if control.interrupted:
                break
            control.clear_skip()
            control.update(job_no=it, sampling_step=0, phase="sampling")
            sl = slice(it * req.batch_size, (it + 1) * req.batch_size)
            batch = prepared.slice(sl)
            rng = make_rng(req, parts, seeds[sl], subseeds[sl], req.width, req.height)
            latents = _first_pass(parts, req, encoder, batch, rng, control, preview_every)
            if req.enable_hr and not control.should_stop():
                latents = _hires_pass(parts, req, encoder, batch, latents, seeds[sl], subseeds[sl], control,
                                      preview_every)
            if not torch.isfinite(latents).all():
                raise GenerationError("the UNet produced NaNs; try the --no-half option or another sampler")
            control.update(phase="decoding")
            images = lat.to_pil(lat.decode(parts.vae, latents, control.warn))
            for k, image in enumerate(images):
                i = sl.start + k
                result.images.append(image)
                result.infotexts.append(build_infotext(req, parts, prepared.original_positive[i],
                                                       prepared.original_negative[i], seeds[i], subseeds[i]))
    result.interrupted = control.interrupted
    result.warnings = list(control.warnings) + prepared.warnings
    control.update(job_no=req.n_iter, phase="done")
    return result

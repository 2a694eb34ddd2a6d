"""One sampling pass (txt2img from noise, or img2img from latents with a denoising strength) as named steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from modules import samplers
from modules.generation.conditioning import ImageConds
from modules.generation.control import JobControl
from modules.generation.denoise import DenoiseContext, StepCallback, run_steps
from modules.generation.latents import preview
from modules.generation.noise import ImageRNG
from modules.models.loader import ModelParts

Tensor = torch.Tensor


@dataclass
class PassSpec:
    """Everything a sampling pass needs besides the model and the latents."""

    sampler: samplers.SamplerSpec
    schedule: str
    steps: int
    cfg_scale: float
    conds: list[ImageConds]
    width: int
    height: int
    eta: float | None = None
    churn: dict[str, float] | None = None
    phase: str = "sampling"
    preview_every: int = 0
    extra_channels: Tensor | None = None


def full_mask_conditioning(parts: ModelParts, batch: int, width: int, height: int) -> Tensor | None:
    """Extra UNet inputs of an inpainting model asked to draw everything (txt2img, the hires pass): a mask of ones
    and the latents of a grey image, as A1111 feeds them."""
    if not parts.is_inpaint:
        return None
    from modules.generation.latents import encode

    grey = torch.full((1, 3, height, width), 0.5)
    masked = encode(parts.vae, grey).to(parts.device)
    mask = torch.ones((1, 1, height // 8, width // 8), device=parts.device)
    return torch.cat([mask, masked], dim=1).repeat(batch, 1, 1, 1)


def sdxl_time_ids(width: int, height: int, batch: int) -> Tensor:
    """SDXL micro-conditioning: original size, crop (0, 0), target size — the image size, as A1111 uses it."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(batch, 1)


def _context(parts: ModelParts, spec: PassSpec, scheduler: Any, device: torch.device) -> DenoiseContext:
    batch = len(spec.conds)
    time_ids = sdxl_time_ids(spec.width, spec.height, batch).to(device) if parts.family.is_xl else None
    return DenoiseContext(
        unet=parts.unet, conds=spec.conds, cfg_scale=spec.cfg_scale, time_ids=time_ids,
        extra_channels=spec.extra_channels, dtype=parts.dtype,
        step_kwargs=samplers.step_kwargs(scheduler, spec.eta, spec.churn or {}),
    )


def _on_step(control: JobControl, spec: PassSpec, is_xl: bool) -> StepCallback:
    def callback(step: int, total: int, latents: Tensor) -> None:
        changes: dict[str, Any] = {"sampling_step": step, "sampling_steps": total, "phase": spec.phase}
        if spec.preview_every and (step % spec.preview_every == 0 or step == total):
            changes["preview"] = preview(latents, is_xl)
            changes["preview_id"] = control.progress.preview_id + 1
        control.update(**changes)

    return callback


def sample_from_noise(parts: ModelParts, spec: PassSpec, rng: ImageRNG, control: JobControl) -> Tensor:
    """txt2img: start from the seeds' noise at full strength."""
    device = parts.device
    scheduler = samplers.build_scheduler(spec.sampler, spec.schedule, parts.scheduler_config,
                                         parts.prediction_type, seed=rng.seeds[0])
    scheduler.set_timesteps(spec.steps, device=device)
    latents = rng.first() * scheduler.init_noise_sigma
    ctx = _context(parts, spec, scheduler, device)
    return run_steps(ctx, scheduler, latents, scheduler.timesteps, spec.steps, 0, control,
                     rng.sampler_generators(), _on_step(control, spec, parts.family.is_xl))


def sample_from_latents(parts: ModelParts, spec: PassSpec, init_latents: Tensor, strength: float,
                        rng: ImageRNG, control: JobControl, noise_multiplier: float = 1.0,
                        keep_mask: Tensor | None = None, start_latents: Tensor | None = None) -> Tensor:
    """img2img and the hires pass: noise ``init_latents`` to ``strength`` and denoise the rest of the schedule.

    ``keep_mask`` (B, 1, h, w; 1 = regenerate) makes every step put the suitably noised ``init_latents`` back
    outside the mask (inpainting with an ordinary model). ``start_latents`` replaces what gets noised at the start
    (A1111's "latent noise" / "latent nothing" masked content) while ``init_latents`` stays the reference.
    """
    device = parts.device
    scheduler = samplers.build_scheduler(spec.sampler, spec.schedule, parts.scheduler_config,
                                         parts.prediction_type, seed=rng.seeds[0])
    scheduler.set_timesteps(spec.steps, device=device)
    init_steps = min(int(spec.steps * strength), spec.steps)
    t_start = max(spec.steps - init_steps, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    noise = rng.first() * noise_multiplier
    init = init_latents.to(device=device, dtype=torch.float32)
    latents = start_latents.to(device=device, dtype=torch.float32) if start_latents is not None else init
    if len(timesteps) == 0:
        return init
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    batch = latents.shape[0]
    latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(batch))
    after_step = None
    if keep_mask is not None:
        mask = keep_mask.to(device=device, dtype=torch.float32)

        def after_step(x: Tensor, i: int) -> Tensor:
            reference: Tensor
            if i + 1 < len(timesteps):
                reference = scheduler.add_noise(init, noise, timesteps[i + 1:i + 2].repeat(batch))
            else:
                reference = init
            return (1 - mask) * reference + mask * x

    ctx = _context(parts, spec, scheduler, device)
    return run_steps(ctx, scheduler, latents, timesteps, spec.steps, t_start, control, rng.sampler_generators(),
                     _on_step(control, spec, parts.family.is_xl), after_step)


def upscale_latents(latents: Tensor, width: int, height: int, mode: str, antialias: bool) -> Tensor:
    return F.interpolate(latents, size=(height // 8, width // 8), mode=mode,
                         antialias=antialias if mode in ("bilinear", "bicubic") else False)


def crop_latents(latents: Tensor, width: int, height: int) -> Tensor:
    """Centre-crop latents to ``width`` x ``height`` pixels (A1111's hires resize truncation)."""
    h, w = height // 8, width // 8
    dy, dx = (latents.shape[2] - h) // 2, (latents.shape[3] - w) // 2
    return latents[:, :, dy:dy + h, dx:dx + w]

"""One sampling pass (txt2img from noise, or img2img / the hires pass from latents) with A1111's samplers.

The pass builds the model's sigma table, the schedule, the guided denoiser and the noise, then runs one of the
sampler functions of :mod:`modules.sampling` exactly as A1111 calls it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from modules import samplers
from modules.generation.batches import JobModels
from modules.generation.conditioning import ImageConds
from modules.generation.control import JobControl
from modules.generation.denoise import CFGDenoiser, ModelDenoiser, SamplingStopped
from modules.generation.latents import preview
from modules.generation.noise import ImageRNG
from modules.models.loader import ModelParts
from modules.samplers import SamplerSpec
from modules.sampling import extra_samplers, k_samplers, schedules, timestep_samplers
from modules.sampling.k_common import Step

Tensor = torch.Tensor


@dataclass(frozen=True)
class SamplingOptions:
    """The sampler and schedule parameters of a request (A1111 keeps most of them in its settings)."""

    eta: float | None = None  # None: eta_ancestral for k-diffusion samplers, eta_ddim for the timestep samplers
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0 means infinity
    s_noise: float = 1.0
    s_min_uncond: float = 0.0
    schedule: schedules.ScheduleOptions = field(default_factory=schedules.ScheduleOptions)
    sgm_noise_multiplier: bool = False

    def eta_for(self, spec: SamplerSpec) -> float:
        if self.eta is not None:
            return self.eta
        return self.eta_ancestral if spec.kind == samplers.K_DIFFUSION else self.eta_ddim


@dataclass
class Refiner:
    """A checkpoint that takes over a pass once ``switch_at`` of the way is done (A1111's refiner): the switch
    happens inside the pass, before the first model call at or past that point, and the pass goes on with the
    refiner's UNet and its text encoders' conditioning."""

    name: str
    switch_at: float | None
    models: JobModels
    conds: Callable[[ModelParts], list[ImageConds]]
    switched: bool = False


@dataclass
class PassSpec:
    """Everything a sampling pass needs besides the model and the latents."""

    sampler: SamplerSpec
    schedule: str
    steps: int
    cfg_scale: float
    conds: list[ImageConds]
    width: int
    height: int
    options: SamplingOptions = field(default_factory=SamplingOptions)
    phase: str = "sampling"
    preview_every: int = 0
    image_cond: Tensor | None = None
    refiner: Refiner | None = None


def full_mask_conditioning(parts: ModelParts, batch: int, width: int, height: int,
                           generator: torch.Generator | None = None) -> Tensor | None:
    """Extra UNet inputs of an inpainting model asked to draw everything (txt2img, the hires pass, img2img without
    a mask): a mask of ones and the latents of grey images, sampled from the VAE posterior with ``generator`` as A1111
    samples them (from its global generator)."""
    if not parts.is_inpaint:
        return None
    from modules.generation.latents import encode

    grey = torch.full((batch, 3, height, width), 0.5)
    masked = encode(parts.vae, grey, generator).to(parts.device)
    mask = torch.ones((batch, 1, height // 8, width // 8), device=parts.device)
    return torch.cat([mask, masked], dim=1)


def sdxl_time_ids(width: int, height: int, batch: int) -> Tensor:
    """SDXL micro-conditioning: original size, crop (0, 0), target size — the image size, as A1111 uses it."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(batch, 1)


def alphas_cumprod(parts: ModelParts) -> Tensor:
    """The model's abar table, from its training schedule (scaled linear betas; zero terminal SNR if set)."""
    cfg = parts.scheduler_config
    abar = schedules.scaled_linear_alphas_cumprod(float(cfg.get("beta_start", 0.00085)),
                                                  float(cfg.get("beta_end", 0.012)),
                                                  int(cfg.get("num_train_timesteps", 1000)))
    return schedules.rescale_zero_terminal_snr(abar) if cfg.get("rescale_betas_zero_snr") else abar


def sigma_table(parts: ModelParts, abar: Tensor | None = None) -> schedules.SigmaTable:
    """The model's discrete sigmas (from ``abar`` when the caller has the table already)."""
    return schedules.SigmaTable.from_alphas_cumprod(alphas_cumprod(parts) if abar is None else abar)


def lcm_sigmas(schedule: str, steps: int, abar: Tensor, options: schedules.ScheduleOptions) -> Tensor:
    """LCM's sigmas: its own 50-entry table stepped through for "Automatic", "Uniform", "Normal" and "SGM Uniform",
    the other schedule types over that table's range."""
    table = timestep_samplers.lcm_sigma_table(abar)
    if schedule not in (schedules.AUTOMATIC, "Uniform", "Normal", "SGM Uniform"):
        return schedules.build_sigmas(schedules.find_schedule(schedule).name, steps, table, options)
    n = steps + 1 if options.discard_penultimate else steps
    sigmas = timestep_samplers.lcm_sigmas(n, table, sgm=schedule == "SGM Uniform")
    return schedules.discard_penultimate(sigmas) if options.discard_penultimate else sigmas


def get_sigmas(spec: SamplerSpec, schedule: str, steps: int, table: schedules.SigmaTable,
               options: schedules.ScheduleOptions, sdxl: bool) -> Tensor:
    """The sigmas A1111 samples ``steps`` steps through: the schedule type (or the sampler's default), the model's
    range and overrides, and the next-to-last sigma dropped where the sampler or the settings say so."""
    opts = options
    if spec.discard_penultimate and not opts.discard_penultimate:
        opts = schedules.ScheduleOptions(**{**opts.__dict__, "discard_penultimate": True})
    return schedules.build_sigmas(samplers.schedule_name(spec, schedule), steps, table, opts, sdxl)


def sampler_function(spec: SamplerSpec) -> Callable[..., Tensor]:
    """The function of one of A1111's samplers, by the naming of :mod:`modules.sampling` (``sample_<function>``)."""
    name = "sample_" + spec.function + ("_heun" if spec.solver_type == "heun" else "")
    for module in (k_samplers, extra_samplers, timestep_samplers):
        fn: Callable[..., Tensor] | None = getattr(module, name, None)
        if fn is not None:
            return fn
    raise LookupError(f"no sampling function {name} for {spec.name}")


def _sampler_kwargs(spec: SamplerSpec, options: SamplingOptions) -> dict[str, Any]:
    """The keyword arguments A1111 passes to this sampler: eta where it takes one, and its churn / noise options."""
    out: dict[str, Any] = {}
    if spec.takes_eta:
        out["eta"] = options.eta_for(spec)
    values = {"s_churn": options.s_churn, "s_tmin": options.s_tmin,
              "s_tmax": options.s_tmax or math.inf, "s_noise": options.s_noise}
    for name in spec.extra:
        out[name] = values[name]
    return out


def _progress(control: JobControl, spec: PassSpec, total: int, parts: ModelParts) -> Callable[[Step], None]:
    def callback(step: Step) -> None:
        done = step.i + 1
        changes: dict[str, Any] = {"sampling_step": done, "sampling_steps": total, "phase": spec.phase}
        if spec.preview_every and (done % spec.preview_every == 0 or done == total):
            decoder = control.preview_decoder
            changes["preview"] = decoder(step.denoised, parts) if decoder else preview(step.denoised,
                                                                                       parts.family.is_xl)
            changes["preview_id"] = control.progress.preview_id + 1
        control.update(**changes)

    return callback


def _model_denoiser(parts: ModelParts, spec: PassSpec) -> ModelDenoiser:
    batch = len(spec.conds)
    time_ids = sdxl_time_ids(spec.width, spec.height, batch).to(parts.device) if parts.family.is_xl else None
    kind = spec.sampler.kind
    abar = alphas_cumprod(parts)
    return ModelDenoiser(parts.unet, sigma_table(parts, abar), parts.prediction_type == "v_prediction", parts.dtype,
                         time_ids, spec.image_cond,
                         kind={samplers.TIMESTEPS: "eps", samplers.LCM: "lcm"}.get(kind, "sigma"), alphas_cumprod=abar,
                         lcm_table=timestep_samplers.lcm_sigma_table(abar) if kind == samplers.LCM else None)


def _refiner_hook(spec: PassSpec, refiner: Refiner) -> Callable[[CFGDenoiser, Tensor], None]:
    def before_call(cfg: CFGDenoiser, sigma: Tensor) -> None:
        if refiner.switched:
            return
        if spec.sampler.kind == samplers.TIMESTEPS:  # the "sigma" of a timestep sampler is the timestep
            t = int(sigma.max())
        else:  # the nearest entry of the model's table (LCM: of its own 50-entry table), as A1111 looks it up
            table = cfg.model.lcm_table if cfg.model.lcm_table is not None else cfg.model.table
            t = int(torch.argmin((table.sigmas.to(sigma.device) - sigma.max()).abs()))
        if refiner.switch_at is not None and (999 - t) / 1000 < refiner.switch_at:
            return
        parts = refiner.models.switch(refiner.name, "refiner_checkpoint")
        cfg.model = _model_denoiser(parts, spec)
        cfg.conds = refiner.conds(parts)
        refiner.switched = True

    return before_call


def _denoiser(parts: ModelParts, spec: PassSpec, control: JobControl, init_latent: Tensor | None = None,
              mask: Tensor | None = None) -> CFGDenoiser:
    model = _model_denoiser(parts, spec)
    multiplier = timestep_samplers.CFGPP_SCALE_MULTIPLIER if spec.sampler.function == "ddim_cfgpp" else 1.0
    cfg = CFGDenoiser(model, spec.conds, spec.cfg_scale, spec.options.s_min_uncond, init_latent, mask,
                      control.should_stop, blend_before=spec.sampler.kind == samplers.TIMESTEPS,
                      scale_multiplier=multiplier)
    if spec.refiner is not None:
        cfg.before_call = _refiner_hook(spec, spec.refiner)
    return cfg


def _run(spec: PassSpec, cfg: CFGDenoiser, x: Tensor, sigmas: Tensor, full_sigmas: Tensor, rng: ImageRNG,
         control: JobControl, parts: ModelParts, total: int, extra: dict[str, Any] | None = None) -> Tensor:
    """Run the sampler; ``sigmas`` are the timesteps for the timestep samplers."""
    fn = sampler_function(spec.sampler)
    progress = _progress(control, spec, total, parts)
    last: list[Tensor] = []

    def callback(step: Step) -> None:
        last[:] = [step.denoised]
        progress(step)

    control.update(sampling_step=0, sampling_steps=total, phase=spec.phase)
    kwargs = {**_sampler_kwargs(spec.sampler, spec.options), **(extra or {})}
    try:
        if spec.sampler.kind == samplers.TIMESTEPS:
            abar = alphas_cumprod_on(cfg, x.device)
            call: dict[str, Any] = {"callback": callback}
            if spec.sampler.takes_eta:
                call.update(eta=kwargs["eta"], noise=rng.next)
            if spec.sampler.function == "ddim_cfgpp":
                call["uncond_eps"] = lambda: _required(cfg.last_uncond)
            if spec.sampler.function == "unipc":
                call["is_img2img"] = bool(extra and extra.get("is_img2img"))
            return fn(cfg, x, sigmas.to(x.device), abar, **call)
        if spec.sampler.function in ("dpm_fast", "dpm_adaptive") and "sigma_max" not in kwargs and len(sigmas) <= 2:
            # one img2img step: DPM-Solver integrates from sigmas[0] to sigmas[-2], the same level (A1111 fails)
            return x
        noise = rng.brownian_noise(x, full_sigmas) if spec.sampler.brownian_noise else rng.noise_sampler()
        return fn(cfg, x, sigmas.to(x.device), callback=callback, noise=noise, **kwargs)
    except SamplingStopped:
        if spec.sampler.kind == samplers.K_DIFFUSION and cfg.last_x0 is not None:
            return cfg.last_x0
        return last[0] if last else x


def _required(value: Tensor | None) -> Tensor:
    if value is None:
        raise RuntimeError("the guidance has not run yet")
    return value


def alphas_cumprod_on(cfg: CFGDenoiser, device: torch.device) -> Tensor:
    abar = cfg.model.alphas_cumprod
    assert abar is not None
    return abar.to(device)


def sample_from_noise(parts: ModelParts, spec: PassSpec, rng: ImageRNG, control: JobControl) -> Tensor:
    """txt2img: the seeds' noise scaled to the first sigma, sampled down to zero."""
    table = sigma_table(parts)
    if spec.sampler.kind == samplers.TIMESTEPS:
        ts = timestep_samplers.timesteps(spec.steps, discard_penultimate=spec.options.schedule.discard_penultimate)
        cfg = _denoiser(parts, spec, control)
        return _run(spec, cfg, rng.next(), ts, ts, rng, control, parts, spec.steps)
    if spec.sampler.kind == samplers.LCM:
        sigmas = lcm_sigmas(spec.schedule, spec.steps, alphas_cumprod(parts), spec.options.schedule)
    else:
        sigmas = get_sigmas(spec.sampler, spec.schedule, spec.steps, table, spec.options.schedule,
                            parts.family.is_xl)
    noise = rng.next()
    scale = torch.sqrt(1.0 + sigmas[0] ** 2.0) if spec.options.sgm_noise_multiplier else sigmas[0]
    x = noise * scale.to(noise.device)
    cfg = _denoiser(parts, spec, control)
    extra: dict[str, Any] = {}
    if spec.sampler.function in ("dpm_fast", "dpm_adaptive"):  # from noise, these span the model's whole range
        extra = {"sigma_min": table.sigma_min, "sigma_max": table.sigma_max}
        if spec.sampler.function == "dpm_fast":
            extra["n"] = spec.steps
    return _run(spec, cfg, x, sigmas, sigmas, rng, control, parts, spec.steps, extra)


def sample_from_latents(parts: ModelParts, spec: PassSpec, init_latents: Tensor, strength: float, rng: ImageRNG,
                        control: JobControl, noise_multiplier: float = 1.0, mask: Tensor | None = None,
                        fixed_steps: bool = False) -> Tensor:
    """img2img and the hires pass: noise ``init_latents`` to the sigma ``strength`` of the way down the schedule,
    then sample the rest. With ``mask`` (B or 1, 1, h, w; 1 = regenerate) the original latents are blended back
    outside it after every model call and at the end (inpainting)."""
    device = parts.device
    steps, t_enc = timestep_samplers.img2img_steps(spec.steps, strength, fixed_steps)
    noise = rng.next() * noise_multiplier
    init = init_latents.to(device=device, dtype=torch.float32)
    if steps <= 0 or t_enc < 0:
        return init
    table = sigma_table(parts)
    m = mask.to(device=device, dtype=torch.float32) if mask is not None else None
    cfg = _denoiser(parts, spec, control, init if m is not None else None, m)
    if spec.sampler.kind == samplers.TIMESTEPS:
        ts = timestep_samplers.timesteps(steps, discard_penultimate=spec.options.schedule.discard_penultimate)
        abar = alphas_cumprod(parts).to(device)
        x = timestep_samplers.noise_init_latent(init, noise, abar, int(ts[t_enc]))
        out = _run(spec, cfg, x, ts[:t_enc], ts, rng, control, parts, t_enc + 1, {"is_img2img": True})
    else:
        if spec.sampler.kind == samplers.LCM:
            sigmas = lcm_sigmas(spec.schedule, steps, alphas_cumprod(parts), spec.options.schedule)
        else:
            sigmas = get_sigmas(spec.sampler, spec.schedule, steps, table, spec.options.schedule,
                                parts.family.is_xl)
        sched = sigmas[steps - t_enc - 1:]
        x = init + noise * sched[0].to(device)
        out = _run(spec, cfg, x, sched, sigmas, rng, control, parts, t_enc + 1)
    if m is not None:
        out = out * m + init * (1 - m)
    return out


def upscale_latents(latents: Tensor, width: int, height: int, mode: str, antialias: bool) -> Tensor:
    return F.interpolate(latents, size=(height // 8, width // 8), mode=mode,
                         antialias=antialias if mode in ("bilinear", "bicubic") else False)


def crop_latents(latents: Tensor, width: int, height: int) -> Tensor:
    """Centre-crop latents to ``width`` x ``height`` pixels (A1111's hires resize truncation)."""
    h, w = height // 8, width // 8
    dy, dx = (latents.shape[2] - h) // 2, (latents.shape[3] - w) // 2
    return latents[:, :, dy:dy + h, dx:dx + w]

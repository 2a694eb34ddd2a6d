"""The typed, immutable generation request every front door builds, and its validation.

It holds every parameter an A1111 infotext can carry, plus which checkpoint to use. Validation happens once, at the
edge, with short messages naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, TypeVar

from modules import samplers
from modules.errors import ValidationError

VAE_TILING = ("Automatic", "Always", "Never")
RANDN_SOURCES = ("GPU", "CPU", "NV")  # A1111's "Random number generator source" choices
REFINER_PASSES = ("first pass", "second pass", "both passes")
NO_REFINER = (None, "", "None", "none")
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_UPSCALERS: tuple[str, ...] = ("None", "Lanczos", "Nearest")
SAME_SAMPLER = "Use same sampler"
SAME_CHECKPOINT = "Use same checkpoint"
MAX_SEED = 2**64 - 1
_R = TypeVar("_R", bound="GenerationRequest")


@dataclass(frozen=True)
class Limits:
    """Server-side bounds, set in the settings with safe defaults."""

    min_size: int = 64
    max_size: int = 2048
    max_steps: int = 150
    max_batch_size: int = 8
    max_n_iter: int = 100
    max_cfg_scale: float = 100.0
    max_prompt_chars: int = 20000
    upscalers: tuple[str, ...] = PIXEL_UPSCALERS  # the pixel upscalers installed (built-ins and model files)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    styles: tuple[str, ...] = ()
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    tiling: bool = False
    restore_faces: bool = False
    face_restoration_model: str = "CodeFormer"  # A1111 takes these two from its settings
    code_former_weight: float = 0.5
    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float | None = None
    s_noise: float = 1.0
    s_min_uncond: float = 0.0
    eta_ancestral: float = 1.0  # eta when the request has none: k-diffusion samplers ...
    eta_ddim: float = 0.0  # ... and the timestep samplers
    sigma_min: float = 0.0  # schedule overrides; 0 = the model's
    sigma_max: float = 0.0
    rho: float = 0.0
    beta_dist_alpha: float = 0.6
    beta_dist_beta: float = 0.6
    use_old_karras_scheduler_sigmas: bool = False
    always_discard_next_to_last_sigma: bool = False
    sgm_noise_multiplier: bool = False
    vae_tiling: str = "Automatic"  # "Automatic" (tiles when the whole image would not fit), "Always", "Never"
    token_merging_ratio: float = 0.0  # A1111's token merging settings (0: off; see modules.generation.tome)
    token_merging_ratio_hr: float = 0.0  # the hires pass's (0: token_merging_ratio)
    token_merging_ratio_img2img: float = 0.0  # img2img's (0: token_merging_ratio)
    clip_skip: int = 1
    eta_noise_seed_delta: int = 0
    randn_source: str = "GPU"
    checkpoint: str | None = None
    vae: str | None = None  # a file in models/VAE, "Automatic" (None) or "None" (the checkpoint's own)
    # hires fix
    enable_hr: bool = False
    denoising_strength: float = 0.7
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_checkpoint_name: str | None = None
    # refiner: another checkpoint takes over once this share of the schedule is done
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    hires_fix_refiner_pass: str = "second pass"

    def replace(self: _R, **changes: Any) -> _R:
        return dataclasses.replace(self, **changes)

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def hires_target(self) -> tuple[int, int, int, int]:
        """(upscale_to_w, upscale_to_h, final_w, final_h) of the hires pass, with A1111's rules for resize targets."""
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            w, h = int(self.width * self.hr_scale), int(self.height * self.hr_scale)
            w, h = w - w % 8, h - h % 8
            return w, h, w, h
        if self.hr_resize_y == 0:
            w, h = self.hr_resize_x, self.hr_resize_x * self.height // self.width
            return w - w % 8, h - h % 8, w - w % 8, h - h % 8
        if self.hr_resize_x == 0:
            w, h = self.hr_resize_y * self.width // self.height, self.hr_resize_y
            return w - w % 8, h - h % 8, w - w % 8, h - h % 8
        tw, th = self.hr_resize_x, self.hr_resize_y
        if self.width / self.height < tw / th:
            w, h = tw, tw * self.height // self.width
        else:
            w, h = th * self.width // self.height, th
        w, h = -(-w // 8) * 8, -(-h // 8) * 8
        return w, h, tw - tw % 8, th - th % 8


def _check(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise ValidationError(f"{field_name}: {message}", field=field_name)


def _check_size(value: int, field_name: str, limits: Limits) -> None:
    _check(limits.min_size <= value <= limits.max_size, field_name,
           f"must be between {limits.min_size} and {limits.max_size} (got {value})")
    _check(value % 8 == 0, field_name, f"must be a multiple of 8 (got {value})")


def validate(req: GenerationRequest, limits: Limits = Limits()) -> None:
    """Raise :class:`ValidationError` naming the first invalid field; returns nothing when ``req`` is valid."""
    _check(len(req.prompt) <= limits.max_prompt_chars, "prompt", f"longer than {limits.max_prompt_chars} characters")
    _check(len(req.negative_prompt) <= limits.max_prompt_chars, "negative_prompt",
           f"longer than {limits.max_prompt_chars} characters")
    _check_size(req.width, "width", limits)
    _check_size(req.height, "height", limits)
    _check(1 <= req.steps <= limits.max_steps, "steps", f"must be between 1 and {limits.max_steps} (got {req.steps})")
    _check(1 <= req.batch_size <= limits.max_batch_size, "batch_size",
           f"must be between 1 and {limits.max_batch_size} (got {req.batch_size})")
    _check(1 <= req.n_iter <= limits.max_n_iter, "n_iter",
           f"must be between 1 and {limits.max_n_iter} (got {req.n_iter})")
    _check(0 <= req.cfg_scale <= limits.max_cfg_scale, "cfg_scale",
           f"must be between 0 and {limits.max_cfg_scale:g} (got {req.cfg_scale})")
    _check(-1 <= req.seed <= MAX_SEED, "seed", "must be -1 (random) or a non-negative 64-bit integer")
    _check(-1 <= req.subseed <= MAX_SEED, "subseed", "must be -1 (random) or a non-negative 64-bit integer")
    _check(0 <= req.subseed_strength <= 1, "subseed_strength", "must be between 0 and 1")
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        value = getattr(req, name)
        _check(value <= 0 or limits.min_size <= value <= limits.max_size, name,
               f"must be 0 (off) or between {limits.min_size} and {limits.max_size}")
    _check(1 <= req.clip_skip <= 12, "clip_skip", "must be between 1 and 12")
    _check(req.randn_source in RANDN_SOURCES, "randn_source", f"must be one of: {', '.join(RANDN_SOURCES)}")
    _check(req.vae_tiling in VAE_TILING, "vae_tiling", f"must be one of: {', '.join(VAE_TILING)}")
    for name in ("s_min_uncond", "sigma_min", "sigma_max", "rho"):
        _check(math.isfinite(getattr(req, name)) and 0 <= getattr(req, name) <= 1000, name,
               "must be between 0 and 1000")
    for name in ("beta_dist_alpha", "beta_dist_beta"):
        _check(math.isfinite(getattr(req, name)) and 0.01 <= getattr(req, name) <= 100, name,
               "must be between 0.01 and 100")
    for name in ("token_merging_ratio", "token_merging_ratio_hr", "token_merging_ratio_img2img"):
        _check(math.isfinite(getattr(req, name)) and 0 <= getattr(req, name) <= 0.9, name,
               "must be between 0 and 0.9")
    for name in ("eta_ancestral", "eta_ddim"):
        _check(math.isfinite(getattr(req, name)) and 0 <= getattr(req, name) <= 1, name, "must be between 0 and 1")
    _check(0 <= req.eta_noise_seed_delta <= 2**31 - 1, "eta_noise_seed_delta", "must be between 0 and 2147483647")
    _check(req.eta is None or 0 <= req.eta <= 1, "eta", "must be between 0 and 1")
    _check(req.refiner_switch_at is None or (math.isfinite(req.refiner_switch_at) and 0 <= req.refiner_switch_at <= 1),
           "refiner_switch_at", "must be between 0 and 1")
    _check(req.hires_fix_refiner_pass in REFINER_PASSES, "hires_fix_refiner_pass",
           f"must be one of: {', '.join(REFINER_PASSES)}")
    _check(req.s_noise >= 0 and req.s_churn >= 0 and req.s_tmin >= 0, "s_noise", "sampler parameters must be >= 0")
    samplers.resolve_sampler(req.sampler_name, req.scheduler)
    if req.enable_hr:
        _validate_hires(req, limits)
    from modules.generation.prompts import prepare_prompts  # the prompt parsers, bounded: refuse here, not later

    prepare_prompts(req, 1)


def _validate_hires(req: GenerationRequest, limits: Limits) -> None:
    _check(0 <= req.denoising_strength <= 1, "denoising_strength", "must be between 0 and 1")
    _check(1 <= req.hr_scale <= 8, "hr_scale", "must be between 1 and 8")
    _check(0 <= req.hr_second_pass_steps <= limits.max_steps, "hr_second_pass_steps",
           f"must be between 0 and {limits.max_steps}")
    for name in ("hr_resize_x", "hr_resize_y"):
        value = getattr(req, name)
        _check(value == 0 or limits.min_size <= value <= limits.max_size, name,
               f"must be 0 (use hr_scale) or between {limits.min_size} and {limits.max_size}")
    known = list(LATENT_UPSCALE_MODES) + list(dict.fromkeys([*PIXEL_UPSCALERS, *limits.upscalers]))
    _check(req.hr_upscaler in known, "hr_upscaler",
           f"unknown upscaler {req.hr_upscaler!r}; available: {', '.join(known)}")
    up_w, up_h, _, _ = req.hires_target()
    _check(up_w <= limits.max_size * 2 and up_h <= limits.max_size * 2, "hr_scale",
           f"the hires size {up_w}x{up_h} exceeds {limits.max_size * 2} pixels per side")
    if req.hr_sampler_name not in (None, "", SAME_SAMPLER) or req.hr_scheduler not in (None, "", SAME_SAMPLER):
        name = req.hr_sampler_name if req.hr_sampler_name not in (None, "", SAME_SAMPLER) else req.sampler_name
        sched = req.hr_scheduler if req.hr_scheduler not in (None, "", SAME_SAMPLER) else None
        samplers.resolve_sampler(name, sched, field_name="hr_sampler_name")


@dataclass(frozen=True)
class Img2ImgRequest(GenerationRequest):
    """img2img and inpainting: a generation request with init images, an optional mask and A1111's options."""

    init_images: tuple[Any, ...] = ()  # PIL images; one is reused for the whole batch
    mask: Any = None  # PIL image, white = regenerate (inpaint)
    latent_mask: Any = None  # PIL image: A1111's separate mask for the latent blend (its outpainting scripts)
    resize_mode: int = 0  # Just resize, Crop and resize, Resize and fill, Just resize (latent upscale)
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 1  # fill, original, latent noise, latent nothing
    inpaint_full_res: bool = False  # "Only masked"
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    inpainting_mask_weight: float = 1.0  # inpainting models: how much of the masked area their image input hides
    initial_noise_multiplier: float = 1.0
    mask_round: bool = True
    max_image_pixels: int = 8192 * 8192


def validate_img2img(req: Img2ImgRequest, limits: Limits = Limits()) -> None:
    """:func:`validate` plus the img2img fields; the images themselves must already be decoded."""
    validate(req.replace(enable_hr=False), limits)
    _check(len(req.init_images) >= 1, "init_images", "at least one image is needed")
    _check(len(req.init_images) in (1,) or len(req.init_images) <= req.batch_size, "init_images",
           f"{len(req.init_images)} images for a batch size of {req.batch_size}; give one image or at most "
           f"batch_size images")
    for image in [*req.init_images, *([req.mask] if req.mask is not None else [])]:
        _check(hasattr(image, "size") and image.size[0] > 0 and image.size[1] > 0, "init_images",
               "an image could not be read")
        _check(image.size[0] * image.size[1] <= req.max_image_pixels, "init_images",
               f"an image of {image.size[0]}x{image.size[1]} pixels is too large")
    _check(0 <= req.denoising_strength <= 1, "denoising_strength", "must be between 0 and 1")
    _check(req.resize_mode in (0, 1, 2, 3), "resize_mode", "must be 0, 1, 2 or 3")
    _check(req.inpainting_fill in (0, 1, 2, 3), "inpainting_fill", "must be 0 (fill), 1 (original), "
           "2 (latent noise) or 3 (latent nothing)")
    _check(0 <= req.mask_blur_x <= 64 and 0 <= req.mask_blur_y <= 64, "mask_blur", "must be between 0 and 64")
    _check(0 <= req.inpaint_full_res_padding <= 256, "inpaint_full_res_padding", "must be between 0 and 256")
    _check(math.isfinite(req.inpainting_mask_weight) and 0 <= req.inpainting_mask_weight <= 1,
           "inpainting_mask_weight", "must be between 0 and 1")
    _check(0 <= req.initial_noise_multiplier <= 1.5, "initial_noise_multiplier", "must be between 0 and 1.5")
    _check(req.image_cfg_scale is None or 0 <= req.image_cfg_scale <= 3, "image_cfg_scale",
           "must be between 0 and 3")


def validate_any(req: GenerationRequest, limits: Limits = Limits()) -> None:
    """:func:`validate_img2img` for an img2img request, :func:`validate` for the others."""
    if isinstance(req, Img2ImgRequest):
        validate_img2img(req, limits)
    else:
        validate(req, limits)

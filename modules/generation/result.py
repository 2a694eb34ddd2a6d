"""What a generation returns, and the infotext of each image (A1111's keys, A1111's order)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from modules import infotext, samplers
from modules.models.loader import ModelParts
from modules.requests import SAME_SAMPLER, GenerationRequest
from modules.version import VERSION


@dataclass
class GenerationResult:
    request: GenerationRequest  # with the seeds resolved
    images: list[Image.Image]
    infotexts: list[str]
    all_prompts: list[str]
    all_negative_prompts: list[str]
    all_seeds: list[int]
    all_subseeds: list[int]
    model_name: str = ""
    model_hash: str | None = None
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    job_timestamp: str = field(default_factory=lambda: _dt.datetime.now().strftime("%Y%m%d%H%M%S"))
    extra_params: dict[str, Any] = field(default_factory=dict)


def _schedule_label(req: GenerationRequest, hires: bool = False) -> str:
    if hires:
        name = req.hr_sampler_name if req.hr_sampler_name not in (None, "", SAME_SAMPLER) else req.sampler_name
        sched = req.hr_scheduler if req.hr_scheduler not in (None, "", SAME_SAMPLER) else req.scheduler
    else:
        name, sched = req.sampler_name, req.scheduler
    spec, label = samplers.resolve_sampler(name, sched)
    if label != "Automatic" and samplers.effective_schedule(spec, label) != label:
        return samplers.effective_schedule(spec, label)
    return label


def generation_params(req: GenerationRequest, parts: ModelParts | None, seed: int, subseed: int,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The key/value part of an image's infotext, unordered extras last (ordered by :func:`infotext.order_params`)."""
    spec, _ = samplers.resolve_sampler(req.sampler_name, req.scheduler)
    info = parts.info if parts is not None else None
    params: dict[str, Any] = {
        "Steps": req.steps,
        "Sampler": spec.name,
        "Schedule type": _schedule_label(req),
        "CFG scale": req.cfg_scale,
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model hash": info.shorthash if info else None,
        "Model": info.model_name if info else None,
        "VAE hash": parts.extra.get("vae_hash") if parts is not None else None,
        "VAE": parts.extra["vae_info"].name if parts is not None and parts.extra.get("vae_info") else None,
        "Variation seed": subseed if req.subseed_strength > 0 else None,
        "Variation seed strength": req.subseed_strength if req.subseed_strength > 0 else None,
        "Seed resize from": f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
        if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0 else None,
        "Denoising strength": req.denoising_strength if req.enable_hr else None,
        "Clip skip": req.clip_skip if req.clip_skip > 1 else None,
        "ENSD": req.eta_noise_seed_delta or None,
        "RNG": req.randn_source if req.randn_source != "GPU" else None,
        "Tiling": True if req.tiling else None,
        "Eta": req.eta if req.eta is not None and spec.name in ("DDIM",) and req.eta != 0 else None,
    }
    if req.enable_hr:
        params.update(_hires_params(req))
    params.update(extra or {})
    params["Version"] = VERSION
    return infotext.order_params({k: v for k, v in params.items() if v is not None})


def _hires_params(req: GenerationRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if req.hr_resize_x == 0 and req.hr_resize_y == 0:
        out["Hires upscale"] = req.hr_scale
    else:
        out["Hires resize"] = f"{req.hr_resize_x}x{req.hr_resize_y}"
    if req.hr_second_pass_steps:
        out["Hires steps"] = req.hr_second_pass_steps
    out["Hires upscaler"] = req.hr_upscaler
    if req.hr_sampler_name not in (None, "", SAME_SAMPLER):
        out["Hires sampler"] = samplers.resolve_sampler(req.hr_sampler_name, None)[0].name
    if req.hr_scheduler not in (None, "", SAME_SAMPLER):
        out["Hires schedule type"] = _schedule_label(req, hires=True)
    if req.hr_prompt and req.hr_prompt != req.prompt:
        out["Hires prompt"] = req.hr_prompt
    if req.hr_negative_prompt and req.hr_negative_prompt != req.negative_prompt:
        out["Hires negative prompt"] = req.hr_negative_prompt
    return out


def build_infotext(req: GenerationRequest, parts: ModelParts | None, prompt: str, negative: str, seed: int,
                   subseed: int, extra: dict[str, Any] | None = None) -> str:
    return infotext.format_infotext(prompt, negative, generation_params(req, parts, seed, subseed, extra))

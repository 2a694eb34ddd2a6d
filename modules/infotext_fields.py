"""Infotext keys <-> request fields: how a pasted or attached infotext fills a generation request."""

from __future__ import annotations

from typing import Any

from modules import infotext

# (infotext key, request field)
FIELDS: tuple[tuple[str, str], ...] = (
    ("Prompt", "prompt"),
    ("Negative prompt", "negative_prompt"),
    ("Steps", "steps"),
    ("Sampler", "sampler_name"),
    ("Schedule type", "scheduler"),
    ("CFG scale", "cfg_scale"),
    ("Seed", "seed"),
    ("Size-1", "width"),
    ("Size-2", "height"),
    ("Variation seed", "subseed"),
    ("Variation seed strength", "subseed_strength"),
    ("Seed resize from-1", "seed_resize_from_w"),
    ("Seed resize from-2", "seed_resize_from_h"),
    ("Denoising strength", "denoising_strength"),
    ("Hires upscale", "hr_scale"),
    ("Hires steps", "hr_second_pass_steps"),
    ("Hires upscaler", "hr_upscaler"),
    ("Hires resize-1", "hr_resize_x"),
    ("Hires resize-2", "hr_resize_y"),
    ("Hires sampler", "hr_sampler_name"),
    ("Hires schedule type", "hr_scheduler"),
    ("Hires prompt", "hr_prompt"),
    ("Hires negative prompt", "hr_negative_prompt"),
    ("Tiling", "tiling"),
    ("Eta", "eta"),
    ("Image CFG scale", "image_cfg_scale"),
    ("Mask blur", "mask_blur"),
)

# (infotext key, setting) for values A1111 keeps in the settings rather than in the request
SETTINGS: tuple[tuple[str, str], ...] = (
    ("Clip skip", "CLIP_stop_at_last_layers"),
    ("RNG", "randn_source"),
    ("ENSD", "eta_noise_seed_delta"),
)


def fields_from_infotext(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request fields, setting overrides) described by an infotext; model names come as ``sd_model_checkpoint``."""
    params = infotext.parse_infotext(text)
    raw_keys = _keys_written(text)
    always = {"Prompt", "Negative prompt"} | ({"Schedule type"} if "Sampler" in raw_keys else set())
    fields: dict[str, Any] = {}
    for key, name in FIELDS:
        if key in params and (key in raw_keys or key in always):
            fields[name] = params[key]
    if "Hires upscale" in raw_keys or "Hires resize-1" in raw_keys:
        fields["enable_hr"] = True
    overrides: dict[str, Any] = {}
    for key, setting in SETTINGS:
        if key in raw_keys and key in params:
            overrides[setting] = params[key]
    model = params.get("Model hash") if "Model hash" in raw_keys else None
    name = params.get("Model") if "Model" in raw_keys else None
    if model or name:
        overrides["sd_model_checkpoint"] = str(model or name)
        if model and name:
            overrides["_model_name"] = str(name)
    return fields, overrides


def _keys_written(text: str) -> set[str]:
    """The parameter keys actually present in ``text`` (not the defaults the parser adds), with WxH keys split."""
    lines = text.strip().split("\n")
    keys = {m[0].strip() for m in infotext.RE_PARAM.findall(lines[-1])} if lines else set()
    out = set(keys)
    for key in keys:
        out |= {f"{key}-1", f"{key}-2"}
    return out

"""A1111 request bodies -> the engine's request, and engine results -> A1111 response bodies."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from modules.app import App
from modules.engine import JobOutput
from modules.errors import ValidationError
from modules.infotext_fields import fields_from_infotext
from modules.requests import GenerationRequest, Img2ImgRequest
from modules.styles import apply_styles, load_styles
from modules.version import VERSION
from webui.api.images import decode_image
from webui.api.schemas import GenerationBody, Img2ImgBody, Txt2ImgBody

# settings a request may override for itself, and the request field each one sets
_PER_JOB_SETTINGS = {
    "CLIP_stop_at_last_layers": "clip_skip",
    "randn_source": "randn_source",
    "eta_noise_seed_delta": "eta_noise_seed_delta",
    "sd_vae": "vae",
}
_OUTPUT_SETTINGS = {"samples_format", "samples_save", "grid_save", "grid_format", "samples_filename_pattern",
                    "save_to_dirs", "enable_pnginfo", "grid_only_if_multiple", "jpeg_quality"}


@dataclass
class Prepared:
    request: GenerationRequest
    save: bool
    send_images: bool
    return_grid: bool
    warnings: list[str] = field(default_factory=list)
    output_overrides: dict[str, Any] = field(default_factory=dict)


def _apply_infotext(body: GenerationBody) -> dict[str, Any]:
    """Fill the fields the body did not set from its ``infotext``; returns the setting overrides it implies."""
    if not body.infotext:
        return {}
    fields, overrides = fields_from_infotext(body.infotext)
    explicit = body.model_fields_set
    for name, value in fields.items():
        if name in type(body).model_fields and name not in explicit:
            setattr(body, name, value)
    return overrides


def _resolve_model_override(app: App, overrides: dict[str, Any], warnings: list[str]) -> str | None:
    wanted = overrides.pop("sd_model_checkpoint", None)
    name_hint = overrides.pop("_model_name", None)
    if not wanted:
        return None
    info = app.registry.find(str(wanted)) or (app.registry.find(str(name_hint)) if name_hint else None)
    if info is None:
        raise ValidationError(f"override_settings.sd_model_checkpoint: checkpoint not found: {wanted!r}",
                              field="sd_model_checkpoint")
    return info.title


def _common(app: App, body: GenerationBody) -> tuple[dict[str, Any], Prepared]:
    """The request fields shared by txt2img and img2img, and the response options; raises ValidationError."""
    infotext_overrides = _apply_infotext(body)
    overrides = {**infotext_overrides, **(body.override_settings or {})}
    warnings: list[str] = []
    if body.alwayson_scripts:
        name = next(iter(body.alwayson_scripts))
        raise ValidationError(f"alwayson_scripts: always on script {name} not found", field="alwayson_scripts")
    if body.script_name:
        raise ValidationError(f"script_name: script {body.script_name!r} not found", field="script_name")
    checkpoint = _resolve_model_override(app, overrides, warnings)
    known = {k: v for k, v in overrides.items() if k in app.settings.options}
    for key in sorted(set(overrides) - set(known)):
        warnings.append(f"override_settings: unknown option {key!r} ignored")
    coerced = app.settings.validate(known)
    per_job = {**app.request_defaults(), **{_PER_JOB_SETTINGS[k]: v for k, v in coerced.items()
                                            if k in _PER_JOB_SETTINGS}}
    if body.restore_faces:
        warnings.append("restore_faces: no face restoration model is installed; images were not restored")
    if body.refiner_checkpoint:
        warnings.append("refiner_checkpoint: the refiner is not supported yet and was ignored")
    prompt, negative = body.prompt or "", body.negative_prompt or ""
    styles = tuple(body.styles or ())
    if styles:
        prompt, negative = apply_styles(load_styles(app.paths.styles_file), styles, prompt, negative)
    sampler = body.sampler_name or body.sampler_index or "Euler"
    eta = body.eta
    if eta is None and sampler.strip().lower() == "ddim":
        eta = coerced.get("eta_ddim", app.settings["eta_ddim"]) or None
    fields = dict(
        prompt=prompt, negative_prompt=negative, styles=styles,
        seed=-1 if body.seed is None else body.seed,
        subseed=-1 if body.subseed is None else body.subseed,
        subseed_strength=body.subseed_strength or 0.0,
        seed_resize_from_w=max(0, body.seed_resize_from_w or 0),
        seed_resize_from_h=max(0, body.seed_resize_from_h or 0),
        sampler_name=sampler, scheduler=body.scheduler or "Automatic",
        batch_size=1 if body.batch_size is None else body.batch_size,
        n_iter=1 if body.n_iter is None else body.n_iter,
        steps=50 if body.steps is None else body.steps,
        cfg_scale=7.0 if body.cfg_scale is None else body.cfg_scale,
        width=512 if body.width is None else body.width,
        height=512 if body.height is None else body.height,
        tiling=bool(body.tiling), restore_faces=bool(body.restore_faces),
        eta=eta, s_churn=body.s_churn or 0.0, s_tmin=body.s_tmin or 0.0, s_tmax=body.s_tmax,
        s_noise=1.0 if body.s_noise is None else body.s_noise,
        checkpoint=checkpoint, **per_job,
    )
    return_grid = coerced.get("return_grid", app.settings["return_grid"])
    output_overrides = {k: v for k, v in coerced.items() if k in _OUTPUT_SETTINGS}
    prepared = Prepared(GenerationRequest(), bool(body.save_images), body.send_images is not False, return_grid,
                        warnings, output_overrides)
    return fields, prepared


def prepare_txt2img(app: App, body: Txt2ImgBody) -> Prepared:
    """Validate everything that can be checked before queueing; raises :class:`ValidationError`."""
    fields, prepared = _common(app, body)
    prepared.request = GenerationRequest(
        **fields,
        enable_hr=bool(body.enable_hr),
        denoising_strength=0.7 if body.denoising_strength is None else body.denoising_strength,
        hr_scale=2.0 if body.hr_scale is None else body.hr_scale,
        hr_upscaler=body.hr_upscaler or "Latent",
        hr_second_pass_steps=body.hr_second_pass_steps or 0,
        hr_resize_x=body.hr_resize_x or 0, hr_resize_y=body.hr_resize_y or 0,
        hr_sampler_name=body.hr_sampler_name, hr_scheduler=body.hr_scheduler,
        hr_prompt=body.hr_prompt or "", hr_negative_prompt=body.hr_negative_prompt or "",
        hr_checkpoint_name=body.hr_checkpoint_name,
    )
    return prepared


def prepare_img2img(app: App, body: Img2ImgBody) -> Prepared:
    """Decode the images and build the img2img request; raises :class:`ValidationError` for any bad input."""
    fields, prepared = _common(app, body)
    if not body.init_images:
        raise ValidationError("init_images: at least one image is needed", field="init_images")
    images = tuple(decode_image(data, f"init_images[{i}]") for i, data in enumerate(body.init_images))
    mask = decode_image(body.mask, "mask") if body.mask else None
    blur_x = body.mask_blur if body.mask_blur is not None else (4 if body.mask_blur_x is None else body.mask_blur_x)
    blur_y = body.mask_blur if body.mask_blur is not None else (4 if body.mask_blur_y is None else body.mask_blur_y)
    prepared.request = Img2ImgRequest(
        **fields,
        init_images=images, mask=mask,
        resize_mode=body.resize_mode or 0,
        denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength,
        image_cfg_scale=body.image_cfg_scale,
        mask_blur_x=blur_x, mask_blur_y=blur_y,
        inpainting_fill=0 if body.inpainting_fill is None else body.inpainting_fill,
        inpaint_full_res=True if body.inpaint_full_res is None else bool(body.inpaint_full_res),
        inpaint_full_res_padding=body.inpaint_full_res_padding or 0,
        inpainting_mask_invert=bool(body.inpainting_mask_invert),
        initial_noise_multiplier=1.0 if body.initial_noise_multiplier is None else body.initial_noise_multiplier,
        mask_round=True if body.mask_round is None else bool(body.mask_round),
    )
    if body.image_cfg_scale is not None:
        prepared.warnings.append("image_cfg_scale applies to instruct-pix2pix models, which are not supported yet")
    return prepared


def extra_params_vae(result: Any, key: str) -> str | None:
    """The VAE name or hash recorded in the first image's infotext, if a separate VAE was used."""
    from modules.infotext import parse_infotext

    if not result.infotexts:
        return None
    value = parse_infotext(result.infotexts[0]).get(key)
    return str(value) if value else None


def encode_png(image: Image.Image, infotext: str | None) -> str:
    from modules.images import encode_image

    return base64.b64encode(encode_image(image, "png", infotext)).decode("ascii")


def info_json(job: JobOutput, prepared: Prepared, app: App, with_grid: bool, extra: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """A1111's ``Processed.js()`` keys, plus ``warnings``."""
    r = job.result
    req = r.request
    infotexts = list(r.infotexts)
    if with_grid:
        infotexts.insert(0, r.infotexts[0] if r.infotexts else "")
    out = {
        "prompt": r.all_prompts[0] if r.all_prompts else req.prompt,
        "all_prompts": r.all_prompts,
        "negative_prompt": r.all_negative_prompts[0] if r.all_negative_prompts else req.negative_prompt,
        "all_negative_prompts": r.all_negative_prompts,
        "seed": r.all_seeds[0] if r.all_seeds else req.seed,
        "all_seeds": r.all_seeds,
        "subseed": r.all_subseeds[0] if r.all_subseeds else req.subseed,
        "all_subseeds": r.all_subseeds,
        "subseed_strength": req.subseed_strength,
        "width": req.width,
        "height": req.height,
        "sampler_name": req.sampler_name,
        "cfg_scale": req.cfg_scale,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "restore_faces": req.restore_faces,
        "face_restoration_model": None,
        "sd_model_name": r.model_name,
        "sd_model_hash": r.model_hash,
        "sd_vae_name": extra_params_vae(r, "VAE"),
        "sd_vae_hash": extra_params_vae(r, "VAE hash"),
        "seed_resize_from_w": req.seed_resize_from_w or -1,
        "seed_resize_from_h": req.seed_resize_from_h or -1,
        "denoising_strength": req.denoising_strength if req.enable_hr else None,
        "extra_generation_params": r.extra_params,
        "index_of_first_image": 1 if with_grid else 0,
        "infotexts": infotexts,
        "styles": list(req.styles),
        "job_timestamp": r.job_timestamp,
        "clip_skip": req.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": VERSION,
        "warnings": prepared.warnings + r.warnings,
    }
    out.update(extra or {})
    return out


def response_body(job: JobOutput, prepared: Prepared, app: App, parameters: dict[str, Any],
                  extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
    r = job.result
    with_grid = prepared.return_grid and job.grid is not None
    images: list[str] = []
    if prepared.send_images:
        if with_grid:
            images.append(encode_png(job.grid, r.infotexts[0] if r.infotexts else None))
        images += [encode_png(im, info) for im, info in zip(r.images, r.infotexts)]
    info = info_json(job, prepared, app, with_grid, extra_info)
    return {"images": images, "parameters": parameters, "info": json.dumps(info, ensure_ascii=False)}

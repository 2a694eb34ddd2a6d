"""A1111 request bodies -> job specs, and job results -> A1111 response bodies (through the parameter table)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from modules.app import App
from modules.errors import ValidationError
from modules.job_types import ImagesResult, Img2ImgJob, Txt2ImgJob
from modules.param_io import api_echo, api_values, read_infotext, request_from_values, settings_to_fields
from modules.params import params_for
from modules.requests import GenerationRequest, Img2ImgRequest
from modules.styles import infer_styles
from modules.version import VERSION
from webui.api.images import decode_images
from webui.api.schemas import GenerationBody, Img2ImgBody

_OUTPUT_SETTINGS = {"samples_format", "samples_save", "grid_save", "grid_format", "samples_filename_pattern",
                    "save_to_dirs", "grid_save_to_dirs", "directories_filename_pattern", "directories_max_prompt_words",
                    "save_txt", "enable_pnginfo",
                    "grid_only_if_multiple", "jpeg_quality"}


@dataclass(frozen=True)
class Rendering:
    """How a job's result is rendered for the client that submitted it (kept beside the job as its tag)."""

    send_images: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prepared:
    spec: Txt2ImgJob | Img2ImgJob
    rendering: Rendering


def _resolve_checkpoint(app: App, wanted: object, hint: object, source: str) -> str:
    info = app.registry.find(str(wanted)) or (app.registry.find(str(hint)) if hint else None)
    if info is None:
        raise ValidationError(f"{source}.sd_model_checkpoint: checkpoint not found: {wanted!r}",
                              field="sd_model_checkpoint")
    return info.title


def _explicit_fields(body: BaseModel, kind: str) -> set[str]:
    names = body.model_fields_set
    return {p.field for p in params_for(kind) if set(p.api_names) & names}


def _values(app: App, body: GenerationBody, kind: str, warnings: list[str]) -> tuple[dict[str, object], dict]:
    """Request field values: the settings' defaults, then the body (A1111's API defaults), the infotext for what
    the body leaves out, and ``override_settings`` for the fields A1111 keeps in the settings."""
    overrides = dict(body.override_settings or {})
    known = {k: v for k, v in overrides.items() if k in app.settings.options}
    warnings += [f"override_settings: unknown option {k!r} ignored" for k in sorted(set(overrides) - set(known))]
    coerced = app.settings.validate(known)
    values: dict[str, object] = {**app.request_defaults(kind), **api_values(body.model_dump(), kind)}
    given = _explicit_fields(body, kind)
    if body.infotext:
        from_text, notes = read_infotext(body.infotext, kind)
        from_text = app.networks.pasted(from_text, body.infotext)
        from_text = infer_styles(app.styles, from_text, app.settings["infotext_styles"])
        warnings += [f"infotext: {note}" for note in notes]
        hint = from_text.pop("_model_name", None)
        explicit = _explicit_fields(body, kind)
        checkpoint = from_text.pop("checkpoint", None)
        if checkpoint and not coerced.get("sd_model_checkpoint"):
            values["checkpoint"] = _resolve_checkpoint(app, checkpoint, hint, "infotext")
        values.update({k: v for k, v in from_text.items() if k not in explicit})
        given |= set(from_text)
    if coerced.get("sd_model_checkpoint"):
        values["checkpoint"] = _resolve_checkpoint(app, coerced["sd_model_checkpoint"], None, "override_settings")
    from_settings = {k: v for k, v in settings_to_fields(coerced, kind).items() if k != "checkpoint"}
    values.update(from_settings)
    # a model that says what suits it (the demo model's 128x128): for what the request leaves out
    checkpoint = values.get("checkpoint")
    model_defaults = app.model_defaults(str(checkpoint) if checkpoint else None)
    values.update({k: v for k, v in model_defaults.items() if k not in given and k not in from_settings})
    return values, coerced


def _checks(body: GenerationBody, warnings: list[str]) -> None:
    if getattr(body, "image_cfg_scale", None) is not None:
        warnings.append("image_cfg_scale applies to instruct-pix2pix models, which are not supported yet")


def _finish(app: App, values: dict[str, object], coerced: dict[str, Any]) -> dict[str, object]:
    """Styles merged into the prompts."""
    raw_styles = values.get("styles")
    styles = tuple(str(s) for s in raw_styles) if isinstance(raw_styles, (list, tuple)) else ()
    if styles:
        prompt, negative = app.styles.apply(styles, str(values.get("prompt") or ""),
                                            str(values.get("negative_prompt") or ""))
        values.update(prompt=prompt, negative_prompt=negative)
    return values


def prepare(app: App, body: GenerationBody, kind: str) -> Prepared:
    """The job spec a txt2img or img2img body describes; raises :class:`ValidationError` before anything is queued."""
    warnings: list[str] = list(body.text_warnings)
    _checks(body, warnings)
    values, coerced = _values(app, body, kind, warnings)
    values = _finish(app, values, coerced)
    cls: type[GenerationRequest] = Img2ImgRequest if kind == "img2img" else GenerationRequest
    if isinstance(body, Img2ImgBody):
        values.update(_images(body, values))
    request = request_from_values(cls, values)
    output = {k: v for k, v in coerced.items() if k in _OUTPUT_SETTINGS}
    return_grid = bool(coerced.get("return_grid", app.settings["return_grid"]))
    script = app.scripts.selected(body.script_name, body.script_args, kind)
    alwayson = app.scripts.alwayson_calls(body.alwayson_scripts, kind)
    spec = app.generation_job(request, bool(body.save_images), output, return_grid, script, alwayson)
    parameters = api_echo(body.model_dump(), kind)
    if isinstance(body, Img2ImgBody) and not body.include_init_images:
        parameters.update(init_images=None, mask=None, latent_mask=None)
    return Prepared(spec, Rendering(body.send_images is not False, parameters, tuple(warnings)))


def _images(body: Img2ImgBody, values: dict[str, object]) -> dict[str, object]:
    """The decoded init images and mask; their count, each one's size and their total size are checked before any
    is decoded."""
    images = body.init_images or []
    if not images:
        raise ValidationError("init_images: at least one image is needed", field="init_images")
    batch = values.get("batch_size")
    if len(images) > 1 and isinstance(batch, int) and len(images) > max(batch, 1):
        raise ValidationError(f"init_images: {len(images)} images for a batch size of {batch}; give one image or "
                              f"at most batch_size images", field="init_images")
    named = [(f"init_images[{i}]", data) for i, data in enumerate(images)]
    extra = [(name, data) for name, data in (("mask", body.mask), ("latent_mask", body.latent_mask)) if data]
    decoded = decode_images(named + extra)
    masks = dict(zip([name for name, _ in extra], decoded[len(images):], strict=True))
    return {"init_images": tuple(decoded[:len(images)]), "mask": masks.get("mask"),
            "latent_mask": masks.get("latent_mask")}


# -- results -> A1111 responses ----------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def interruption(result: ImagesResult) -> list[str]:
    """The warning an interrupted job's result carries: how many of its images were made."""
    if not result.interrupted:
        return []
    if result.script:
        return [f"interrupted: {result.script} stopped early; {len(result.images)} images returned"]
    return [f"interrupted: {len(result.images)} of {result.request.image_count} images generated"]


def info_json(result: ImagesResult, rendering: Rendering, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A1111's ``Processed.js()`` keys, plus ``warnings``."""
    req = result.request
    with_grid = result.grid is not None
    infotexts = ([result.grid.infotext] if result.grid is not None else []) + result.infotexts
    prompts = [i.prompt for i in result.images] or [req.prompt]
    negatives = [i.negative_prompt for i in result.images] or [req.negative_prompt]
    seeds = [i.seed for i in result.images] or [req.seed]
    subseeds = [i.subseed for i in result.images] or [req.subseed]
    out: dict[str, Any] = {
        "prompt": prompts[0], "all_prompts": prompts, "negative_prompt": negatives[0],
        "all_negative_prompts": negatives, "seed": seeds[0], "all_seeds": seeds, "subseed": subseeds[0],
        "all_subseeds": subseeds, "subseed_strength": req.subseed_strength, "width": req.width,
        "height": req.height, "sampler_name": req.sampler_name, "cfg_scale": req.cfg_scale, "steps": req.steps,
        "batch_size": req.batch_size, "restore_faces": req.restore_faces,
        "face_restoration_model": req.face_restoration_model if req.restore_faces else None,
        "sd_model_name": result.model_name, "sd_model_hash": result.model_hash, "sd_vae_name": result.vae_name,
        "sd_vae_hash": result.vae_hash, "seed_resize_from_w": req.seed_resize_from_w or -1,
        "seed_resize_from_h": req.seed_resize_from_h or -1,
        "denoising_strength": req.denoising_strength if req.enable_hr or isinstance(req, Img2ImgRequest) else None,
        "extra_generation_params": result.extra_params, "index_of_first_image": 1 if with_grid else result.first_image,
        "infotexts": infotexts, "styles": list(req.styles), "job_timestamp": result.job_timestamp,
        "clip_skip": req.clip_skip, "is_using_inpainting_conditioning": False, "version": VERSION,
        "interrupted": result.interrupted,
        "warnings": list(dict.fromkeys([*rendering.warnings, *result.warnings, *interruption(result)])),
    }
    out.update(extra or {})
    return out


def response_body(result: ImagesResult, rendering: Rendering, extra_info: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """A1111's response: the images as base64 PNGs (the grid first when there is one), the echoed request and the
    info JSON string."""
    images: list[str] = []
    if rendering.send_images:
        if result.grid is not None:
            images.append(_b64(result.grid.png))
        images += [_b64(image.png) for image in result.images]
    info = info_json(result, rendering, extra_info)
    return {"images": images, "parameters": rendering.parameters, "info": json.dumps(info, ensure_ascii=False)}

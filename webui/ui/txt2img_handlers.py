"""The txt2img tab's behaviour, free of layout: build the request, run and poll the job, paste parameters.

Handlers take and return plain values (a dict of field values in, :class:`GenerateUpdate` tuples out) so tests can
call them without a browser; ``txt2img.py`` wires them to components in the order of :data:`FIELDS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import gradio as gr

from modules import samplers
from modules.app import App
from modules.errors import ValidationError, WebUIError
from modules.infotext_fields import fields_from_infotext
from modules.jobs import Job, JobState
from modules.metadata import text_to_infotext
from modules.requests import LATENT_UPSCALE_MODES, PIXEL_UPSCALERS, SAME_SAMPLER, GenerationRequest
from modules.styles import apply_styles, load_styles
from webui.ui.common import error_html, format_eta, infotext_html, progress_html, user_message, warning_html

log = logging.getLogger(__name__)
SAME_SCHEDULER = "Use same scheduler"
POLL_SECONDS = 0.25
UPSCALERS: tuple[str, ...] = (*LATENT_UPSCALE_MODES, *PIXEL_UPSCALERS)


def default_values(app: App) -> dict[str, Any]:
    """The form's initial values (A1111's UI defaults); the keys, in order, are :data:`FIELDS`."""
    return {
        "prompt": "", "negative_prompt": "", "styles": [],
        "sampler_name": "DPM++ 2M", "scheduler": "Automatic", "steps": 20,
        "width": 512, "height": 512, "n_iter": 1, "batch_size": 1, "cfg_scale": 7.0,
        "seed": -1, "seed_extra": False, "subseed": -1, "subseed_strength": 0.0,
        "seed_resize_from_w": 0, "seed_resize_from_h": 0,
        "enable_hr": False, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "denoising_strength": 0.7,
        "hr_scale": 2.0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_sampler_name": SAME_SAMPLER,
        "hr_scheduler": SAME_SCHEDULER, "hr_prompt": "", "hr_negative_prompt": "",
        "clip_skip": app.settings["CLIP_stop_at_last_layers"], "tiling": False,
    }


FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "styles", "sampler_name", "scheduler", "steps", "width", "height", "n_iter",
    "batch_size", "cfg_scale", "seed", "seed_extra", "subseed", "subseed_strength", "seed_resize_from_w",
    "seed_resize_from_h", "enable_hr", "hr_upscaler", "hr_second_pass_steps", "denoising_strength", "hr_scale",
    "hr_resize_x", "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
    "clip_skip", "tiling")
# what the ↙️ button may fill (everything but styles and batch settings)
PASTE_FIELDS: tuple[str, ...] = tuple(f for f in FIELDS if f not in ("styles", "n_iter", "batch_size"))


class GenerateUpdate(NamedTuple):
    """One update of the output column, in the order of the Generate event's outputs."""

    gallery: Any
    infotext: Any
    progress: Any
    preview: Any
    log: Any
    job_id: Any
    results: Any


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name}: expected a number, got {value!r}", field=name) from None
    if not number.is_integer():
        raise ValidationError(f"{name}: must be a whole number (got {value})", field=name)
    return int(number)


def _real(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name}: expected a number, got {value!r}", field=name) from None


def _same(value: Any, *same: str) -> str | None:
    return None if value in (None, "", *same) else str(value)


def build_request(app: App, values: dict[str, Any]) -> GenerationRequest:
    """The request the form describes: styles merged into the prompts, RNG source and ENSD from the settings."""
    v = {**default_values(app), **values}
    styles = tuple(v["styles"] or ())
    prompt, negative = str(v["prompt"] or ""), str(v["negative_prompt"] or "")
    if styles:
        prompt, negative = apply_styles(load_styles(app.paths.styles_file), styles, prompt, negative)
    extra = bool(v["seed_extra"])
    defaults = app.request_defaults()
    return GenerationRequest(
        prompt=prompt, negative_prompt=negative, styles=styles,
        seed=_whole(v["seed"], "seed"),
        subseed=_whole(v["subseed"], "subseed") if extra else -1,
        subseed_strength=_real(v["subseed_strength"], "subseed_strength") if extra else 0.0,
        seed_resize_from_w=_whole(v["seed_resize_from_w"], "seed_resize_from_w") if extra else 0,
        seed_resize_from_h=_whole(v["seed_resize_from_h"], "seed_resize_from_h") if extra else 0,
        sampler_name=str(v["sampler_name"]), scheduler=str(v["scheduler"] or "Automatic"),
        batch_size=_whole(v["batch_size"], "batch_size"), n_iter=_whole(v["n_iter"], "n_iter"),
        steps=_whole(v["steps"], "steps"), cfg_scale=_real(v["cfg_scale"], "cfg_scale"),
        width=_whole(v["width"], "width"), height=_whole(v["height"], "height"), tiling=bool(v["tiling"]),
        clip_skip=_whole(v["clip_skip"], "clip_skip"), randn_source=defaults["randn_source"],
        eta_noise_seed_delta=defaults["eta_noise_seed_delta"],
        enable_hr=bool(v["enable_hr"]), denoising_strength=_real(v["denoising_strength"], "denoising_strength"),
        hr_scale=_real(v["hr_scale"], "hr_scale"), hr_upscaler=str(v["hr_upscaler"]),
        hr_second_pass_steps=_whole(v["hr_second_pass_steps"], "hr_second_pass_steps"),
        hr_resize_x=_whole(v["hr_resize_x"], "hr_resize_x"), hr_resize_y=_whole(v["hr_resize_y"], "hr_resize_y"),
        hr_sampler_name=_same(v["hr_sampler_name"], SAME_SAMPLER),
        hr_scheduler=_same(v["hr_scheduler"], SAME_SCHEDULER, SAME_SAMPLER),
        hr_prompt=str(v["hr_prompt"] or ""), hr_negative_prompt=str(v["hr_negative_prompt"] or ""),
    )


def hires_resolution_html(width: Any, height: Any, scale: Any, resize_x: Any, resize_y: Any) -> str:
    """A1111's "from 512x512 to 1024x1024" line of the Hires. fix accordion."""
    try:
        req = GenerationRequest(width=int(width), height=int(height), hr_scale=float(scale),
                                hr_resize_x=int(resize_x or 0), hr_resize_y=int(resize_y or 0))
        _, _, w, h = req.hires_target()
    except (TypeError, ValueError, ZeroDivisionError):
        return ""
    return f'<div class="sd-info">from <b>{int(width)}x{int(height)}</b> to <b>{w}x{h}</b></div>'


def progress_view(app: App, job: Job) -> str:
    """The progress bar of a queued or running job: percentage, ETA, step and batch."""
    if job.state is JobState.QUEUED:
        return progress_html(0.0, f"Waiting in queue: position {app.queue.position(job)}")
    p = job.control.progress
    eta = p.eta() if p.sampling_step or p.job_no else None
    text = f"{p.fraction * 100:.0f}%" + (f" ETA {format_eta(eta)}" if eta is not None else "")
    info = []
    if p.sampling_steps:
        info.append(f"Step {min(p.sampling_step, p.sampling_steps)}/{p.sampling_steps}")
    if p.job_count > 1:
        info.append(f"Batch {min(p.job_no + 1, p.job_count)}/{p.job_count}")
    if p.phase:
        info.append(p.phase)
    return progress_html(p.fraction, text, " \u00b7 ".join(info))


def results_state(job: Job, return_grid: bool, took: float) -> dict[str, Any]:
    out = job.result
    res = out.result
    grid = bool(return_grid and out.grid is not None and len(res.images) > 1)
    return {"infotexts": list(res.infotexts), "seeds": list(res.all_seeds), "subseeds": list(res.all_subseeds),
            "grid": grid, "selected": 0, "footer": f"Time taken: {took:.1f} s"}


def image_index(results: dict[str, Any] | None, gallery_index: int | None) -> int | None:
    """The index of the image shown at ``gallery_index`` (the grid, first when shown, counts as the first image)."""
    if not results or not results.get("infotexts"):
        return None
    i = int(gallery_index or 0) - (1 if results.get("grid") else 0)
    return min(max(i, 0), len(results["infotexts"]) - 1)


def select_image(results: dict[str, Any] | None, gallery_index: int | None) -> tuple[str, dict[str, Any] | None]:
    """(infotext HTML, updated results state) when the user picks an image in the gallery."""
    i = image_index(results, gallery_index)
    if i is None:
        return "", results
    results = {**results, "selected": int(gallery_index or 0)}
    return infotext_html(results["infotexts"][i], results.get("footer", "")), results


def reuse_seed(results: dict[str, Any] | None, key: str = "seeds") -> Any:
    """♻️: the seed (or ``subseeds``) of the image selected in the gallery; unchanged when there is none."""
    i = image_index(results, (results or {}).get("selected", 0))
    if i is None or not results.get(key):
        return gr.skip()
    return int(results[key][min(i, len(results[key]) - 1)])


class Txt2ImgHandlers:
    def __init__(self, app: App) -> None:
        self.app = app

    # -- generate
    def generate(self, *args: Any) -> Iterator[GenerateUpdate]:
        """The Generate event: ``args`` are the form values in the order of :data:`FIELDS`."""
        yield from self.generate_values(dict(zip(FIELDS, args)))

    def generate_values(self, values: dict[str, Any]) -> Iterator[GenerateUpdate]:
        skip, hidden = gr.skip(), gr.update(visible=False, value=None)
        started = time.monotonic()
        try:
            job = self.app.submit_txt2img(build_request(self.app, values), save=True)
        except WebUIError as exc:
            yield GenerateUpdate(skip, skip, "", hidden, error_html(user_message(exc)), None, skip)
            return
        except Exception as exc:  # noqa: BLE001 - the UI shows a message; the traceback goes to the log
            log.exception("txt2img submission failed")
            yield GenerateUpdate(skip, skip, "", hidden, error_html(user_message(exc)), None, skip)
            return
        yield from self.poll(job)
        yield self.finish(job, time.monotonic() - started)

    def poll(self, job: Job) -> Iterator[GenerateUpdate]:
        """Progress updates (bar, and the live preview when it changed) until ``job`` has finished."""
        skip = gr.skip()
        yield GenerateUpdate(skip, skip, progress_view(self.app, job), skip, "", job.id, skip)
        shown_preview = 0
        while not job.wait(POLL_SECONDS):
            p = job.control.progress
            preview: Any = skip
            if p.preview is not None and p.preview_id != shown_preview:
                shown_preview = p.preview_id
                preview = gr.update(value=p.preview, visible=True)
            yield GenerateUpdate(skip, skip, progress_view(self.app, job), preview, skip, job.id, skip)

    def finish(self, job: Job, took: float) -> GenerateUpdate:
        """The final update: gallery (grid first), infotext of the first image, warnings or the error."""
        skip, hidden = gr.skip(), gr.update(visible=False, value=None)
        out = job.result
        if job.state is JobState.FAILED or out is None:
            message = job.error if job.state is JobState.FAILED else "Interrupted before generation started"
            prefix = "Generation failed: " if job.state is JobState.FAILED else ""
            return GenerateUpdate(skip, skip, "", hidden, error_html(prefix + (message or "unknown error")),
                                  None, skip)
        res = out.result
        state = results_state(job, self.app.settings["return_grid"], took)
        images = ([out.grid] if state["grid"] else []) + list(res.images)
        notes = list(dict.fromkeys([*res.warnings, *job.control.warnings]))
        if res.interrupted or job.state is JobState.CANCELLED:
            notes.insert(0, f"Interrupted: {len(res.images)} of {res.request.image_count} images generated")
        info = infotext_html(res.infotexts[0], state["footer"]) if res.infotexts else ""
        return GenerateUpdate(images, info, "", hidden, warning_html(notes), None, state)

    # -- interrupt / skip: only this session's job
    def interrupt(self, job_id: str | None) -> None:
        """Stop this session's job after the current step; images finished so far are kept and shown."""
        if job_id:
            self.app.queue.cancel(job_id)

    def skip(self, job_id: str | None) -> None:
        """Skip the current batch of this session's job (the next batch, if any, still runs)."""
        job = self.app.queue.get(job_id) if job_id else None
        if job is not None and job.state is JobState.RUNNING:
            job.control.skip()

    # -- ↙️ read generation parameters
    def read_parameters(self, text: str, results: dict[str, Any] | None = None, model_note: bool = True
                        ) -> tuple[dict[str, Any], str]:
        """(field values to set, message HTML) from the infotext in the prompt box, or the last image's.

        Other tools' pasted metadata (ComfyUI/SwarmUI/InvokeAI/Fooocus JSON, InvokeAI ``Dream``) is converted first;
        ``model_note=False`` leaves out the note about the checkpoint (for callers that switch it themselves)."""
        text = text_to_infotext(text or "")
        if not (text or "").strip():
            i = image_index(results, (results or {}).get("selected", 0))
            if i is None:
                return {}, warning_html(["Paste generation parameters into the prompt box first"])
            text = results["infotexts"][i]
        fields, overrides = fields_from_infotext(text)
        if not set(fields) - {"prompt", "negative_prompt", "scheduler"}:
            return {}, warning_html(["No generation parameters found in the prompt"])
        notes: list[str] = []
        out = _paste_values(fields, overrides, notes)
        for key, label in (("randn_source", "RNG"), ("eta_noise_seed_delta", "ENSD")):
            if key in overrides and str(overrides[key]) != str(self.app.settings[key]):
                notes.append(f"{label} {overrides[key]} is a setting (Settings tab); current: {self.app.settings[key]}")
        model = overrides.get("_model_name") or overrides.get("sd_model_checkpoint")
        if model and model_note:
            notes.append(f"Model: {model} (choose it in the checkpoint list to switch)")
        return out, warning_html(notes)


def _paste_values(fields: dict[str, Any], overrides: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    conv = {"steps": int, "cfg_scale": float, "seed": int, "width": int, "height": int, "subseed": int,
            "subseed_strength": float, "seed_resize_from_w": int, "seed_resize_from_h": int,
            "denoising_strength": float, "hr_scale": float, "hr_second_pass_steps": int, "hr_resize_x": int,
            "hr_resize_y": int}
    for name, value in fields.items():
        if name not in PASTE_FIELDS:
            continue
        try:
            out[name] = conv[name](value) if name in conv else value
        except (TypeError, ValueError):
            notes.append(f"Ignored {name}: {value!r}")
    for name, allowed in (("sampler_name", samplers.sampler_names()), ("scheduler", samplers.schedule_labels()),
                          ("hr_upscaler", UPSCALERS), ("hr_sampler_name", samplers.sampler_names()),
                          ("hr_scheduler", samplers.schedule_labels())):
        if name in out and out[name] not in allowed:
            notes.append(f"Unknown {name.replace('_', ' ')} {out.pop(name)!r}; kept the current one")
    out["tiling"] = bool(fields.get("tiling", False))
    out["enable_hr"] = bool(fields.get("enable_hr", False))
    if out["enable_hr"]:
        for name, default in (("hr_second_pass_steps", 0), ("hr_resize_x", 0), ("hr_resize_y", 0),
                              ("hr_sampler_name", SAME_SAMPLER), ("hr_scheduler", SAME_SCHEDULER),
                              ("hr_prompt", ""), ("hr_negative_prompt", "")):
            out.setdefault(name, default)
    if out.get("subseed_strength", 0) > 0 or out.get("seed_resize_from_w", 0) > 0:
        out["seed_extra"] = True
    else:
        out["subseed_strength"] = 0.0
    try:
        out["clip_skip"] = int(overrides.get("CLIP_stop_at_last_layers", 1))
    except (TypeError, ValueError):
        out["clip_skip"] = 1
    return out

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
from modules.errors import WebUIError
from modules.job_types import ImagesResult
from modules.jobs import Job, JobState, owns
from modules.metadata import text_to_infotext
from modules.param_io import read_infotext, request_from_values
from modules.params import by_field, params_for
from modules.requests import LATENT_UPSCALE_MODES, PIXEL_UPSCALERS, SAME_CHECKPOINT, SAME_SAMPLER, GenerationRequest
from modules.styles import infer_styles
from webui.ui.common import error_html, format_eta, infotext_html, progress_html, toast, user_message, warning_html

log = logging.getLogger(__name__)
SAME_SCHEDULER = "Use same scheduler"
POLL_SECONDS = 0.25
UPSCALERS: tuple[str, ...] = (*LATENT_UPSCALE_MODES, *PIXEL_UPSCALERS)


def request_user(request: gr.Request | None) -> str | None:
    """The logged-in user of a UI event (gradio sets ``username`` under auth); ``None`` without auth or request."""
    name = getattr(request, "username", None) if request is not None else None
    return str(name) if name else None


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
        "hr_scheduler": SAME_SCHEDULER, "hr_checkpoint_name": SAME_CHECKPOINT, "hr_prompt": "",
        "hr_negative_prompt": "", "clip_skip": app.settings["CLIP_stop_at_last_layers"], "tiling": False,
        **REFINER_DEFAULTS, **model_form_defaults(app),
    }


def model_form_defaults(app: App, checkpoint: str | None = None) -> dict[str, Any]:
    """The defaults the selected (or named) checkpoint carries for the form's fields (the demo model's 128x128)."""
    try:
        return dict(app.model_defaults(checkpoint))
    except Exception:  # never let a model's metadata stop the page from building
        log.warning("could not read the checkpoint's defaults", exc_info=True)
        return {}


REFINER_DEFAULTS: dict[str, Any] = {"refiner_enable": False, "refiner_checkpoint": None, "refiner_switch_at": 0.8}
REFINER_FIELDS: tuple[str, ...] = tuple(REFINER_DEFAULTS)


FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "styles", "sampler_name", "scheduler", "steps", "width", "height", "n_iter",
    "batch_size", "cfg_scale", "seed", "seed_extra", "subseed", "subseed_strength", "seed_resize_from_w",
    "seed_resize_from_h", "enable_hr", "hr_upscaler", "hr_second_pass_steps", "denoising_strength", "hr_scale",
    "hr_resize_x", "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_checkpoint_name", "hr_prompt",
    "hr_negative_prompt", "clip_skip", "tiling", *REFINER_FIELDS)
# what the ↙️ button may fill (everything but the batch settings; styles only when found in the prompts)
PASTE_FIELDS: tuple[str, ...] = tuple(f for f in FIELDS if f not in ("n_iter", "batch_size"))


class GenerateUpdate(NamedTuple):
    """One update of the output column, in the order of the Generate event's outputs."""

    gallery: Any
    infotext: Any
    progress: Any
    preview: Any
    log: Any
    job_id: Any
    results: Any


def form_values(app: App, values: dict[str, Any], kind: str = "txt2img") -> dict[str, object]:
    """The request field values a form describes (coerced through the parameter table when the request is built):
    styles merged into the prompts, the variation seed only with "Extra" on, "Use same ..." as none, and the settings
    A1111 keeps out of the form (RNG source, ENSD, VAE)."""
    v = {**default_values(app), **values}
    out: dict[str, object] = {**app.request_defaults(kind)}
    out.update({p.field: v[p.field] for p in params_for(kind) if p.field in v})
    styles = tuple(v["styles"] or ())
    out["prompt"], out["negative_prompt"] = str(v["prompt"] or ""), str(v["negative_prompt"] or "")
    if styles:
        out["prompt"], out["negative_prompt"] = app.styles.apply(styles, str(out["prompt"]),
                                                                 str(out["negative_prompt"]))
    out["styles"] = styles
    if not v.get("seed_extra"):
        out.update(subseed=-1, subseed_strength=0.0, seed_resize_from_w=0, seed_resize_from_h=0)
    out["scheduler"] = v.get("scheduler") or "Automatic"
    for name in ("hr_sampler_name", "hr_scheduler"):
        if name in out:
            out[name] = _same(out[name], SAME_SAMPLER, SAME_SCHEDULER)
    for name in ("hr_prompt", "hr_negative_prompt"):
        if name in out:
            out[name] = out[name] or ""
    if "hr_checkpoint_name" in out:
        out["hr_checkpoint_name"] = _same(out["hr_checkpoint_name"], SAME_CHECKPOINT)
    if not v.get("refiner_enable") or not v.get("refiner_checkpoint"):  # the accordion's checkbox decides
        out["refiner_checkpoint"], out["refiner_switch_at"] = None, None
    return out


def _same(value: Any, *same: str) -> str | None:
    return None if value in (None, "", *same) else str(value)


def build_request(app: App, values: dict[str, Any]) -> GenerationRequest:
    """The request the txt2img form describes (see :func:`form_values`)."""
    return request_from_values(GenerationRequest, form_values(app, values))


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


def results_state(res: ImagesResult, took: float) -> dict[str, Any]:
    """What the tab keeps of a result (for the gallery's infotext, ♻️ and send-to)."""
    return {"infotexts": res.infotexts, "seeds": [i.seed for i in res.images],
            "subseeds": [i.subseed for i in res.images], "grid": res.grid is not None, "selected": 0,
            "footer": f"Time taken: {took:.1f} s"}


def image_index(results: dict[str, Any] | None, gallery_index: int | None) -> int | None:
    """The index of the image shown at ``gallery_index`` (the grid, first when shown, counts as the first image)."""
    if not results or not results.get("infotexts"):
        return None
    i = int(gallery_index or 0) - (1 if results.get("grid") else 0)
    return min(max(i, 0), len(results["infotexts"]) - 1)


def selected_infotext(results: dict[str, Any] | None) -> str | None:
    """The infotext of the image selected in the gallery (the first one when none is)."""
    i = image_index(results, (results or {}).get("selected", 0))
    return None if results is None or i is None else str(results["infotexts"][i])


def select_image(results: dict[str, Any] | None, gallery_index: int | None) -> tuple[str, dict[str, Any] | None]:
    """(infotext HTML, updated results state) when the user picks an image in the gallery."""
    i = image_index(results, gallery_index)
    if results is None or i is None:
        return "", results
    results = {**results, "selected": int(gallery_index or 0)}
    return infotext_html(results["infotexts"][i], results.get("footer", "")), results


def reuse_seed(results: dict[str, Any] | None, key: str = "seeds") -> Any:
    """♻️: the seed (or ``subseeds``) of the image selected in the gallery; unchanged when there is none."""
    i = image_index(results, (results or {}).get("selected", 0))
    if results is None or i is None or not results.get(key):
        return gr.skip()
    return int(results[key][min(i, len(results[key]) - 1)])


class Txt2ImgHandlers:
    fields: tuple[str, ...] = FIELDS  # the Generate event's inputs, in order

    def __init__(self, app: App) -> None:
        self.app = app

    # -- generate
    def generate(self, *args: Any) -> Iterator[GenerateUpdate]:
        """``args`` are the form values in the order of :attr:`fields` (the job has no owner)."""
        yield from self.generate_values(dict(zip(self.fields, args, strict=True)))

    def generate_as(self, request: gr.Request | None, *args: Any) -> Iterator[GenerateUpdate]:
        """The Generate event: gradio passes the ``request`` (its logged-in user owns the job), then the form."""
        yield from self.generate_values(dict(zip(self.fields, args, strict=True)), request_user(request))

    def submit(self, values: dict[str, Any], owner: str | None = None) -> Job:
        """Queue the job the form describes for ``owner`` (checked first: nothing is queued on bad input)."""
        from webui.ui.scripts_ui import script_call

        request = build_request(self.app, values)
        script = script_call(self.app, values, "txt2img")
        return self.app.submit(self.app.generation_job(request, True, script=script), owner)

    def generate_values(self, values: dict[str, Any], owner: str | None = None) -> Iterator[GenerateUpdate]:
        skip, hidden = gr.skip(), gr.update(visible=False, value=None)
        started = time.monotonic()
        try:
            job = self.submit(values, owner)
        except WebUIError as exc:
            toast(user_message(exc), "Not generated")
            yield GenerateUpdate(skip, skip, "", hidden, error_html(user_message(exc)), None, skip)
            return
        except Exception as exc:  # noqa: BLE001 - the UI shows a message; the traceback goes to the log
            log.exception("%s: submission failed", type(self).__name__)
            toast(user_message(exc), "Not generated")
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
        res = job.result
        if job.state is JobState.FAILED or not isinstance(res, ImagesResult):
            message = job.error if job.state is JobState.FAILED else "Interrupted before generation started"
            prefix = "Generation failed: " if job.state is JobState.FAILED else ""
            if job.state is JobState.FAILED:
                toast(message or "unknown error", "Generation failed")
            return GenerateUpdate(skip, skip, "", hidden, error_html(prefix + (message or "unknown error")),
                                  None, skip)
        state = results_state(res, took)
        images = ([res.grid.to_pil()] if res.grid is not None else []) + [i.to_pil() for i in res.images]
        notes = list(dict.fromkeys([*res.warnings, *job.control.warnings]))
        if res.interrupted or job.state is JobState.CANCELLED:
            notes.insert(0, f"Interrupted: {len(res.images)} of {res.request.image_count} images generated")
        info = infotext_html(res.images[0].infotext, state["footer"]) if res.images else ""
        return GenerateUpdate(images, info, "", hidden, warning_html(notes), None, state)

    # -- interrupt / skip: only this session's job, and only the logged-in user's
    def interrupt(self, job_id: str | None, request: gr.Request | None = None) -> None:
        """Stop this session's job after the current step; images finished so far are kept and shown."""
        if job_id:
            self.app.queue.cancel(job_id, request_user(request))

    def skip(self, job_id: str | None, request: gr.Request | None = None) -> None:
        """Skip the current batch of this session's job (the next batch, if any, still runs)."""
        job = self.app.queue.get(job_id) if job_id else None
        if job is not None and job.state is JobState.RUNNING and owns(request_user(request), job):
            job.control.skip()

    # -- ↙️ read generation parameters
    def read_parameters(self, text: str, results: dict[str, Any] | None = None, model_note: bool = True
                        ) -> tuple[dict[str, Any], str]:
        """(field values to set, message HTML) from the infotext in the prompt box, or the last image's.

        Other tools' pasted metadata (ComfyUI/SwarmUI/InvokeAI/Fooocus JSON, InvokeAI ``Dream``) is converted first;
        ``model_note=False`` leaves out the note about the checkpoint (for callers that switch it themselves)."""
        text = text_to_infotext(text or "")
        if not (text or "").strip():
            shown = selected_infotext(results)
            if shown is None:
                return {}, warning_html(["Paste generation parameters into the prompt box first"])
            text = shown
        values, ignored = read_infotext(text, "txt2img")
        values = self.app.networks.pasted(values, text)
        values = infer_styles(self.app.styles, values, self.app.settings["infotext_styles"])
        if not set(values) - {"prompt", "negative_prompt", "scheduler"}:
            return {}, warning_html(["No generation parameters found in the prompt"])
        notes = [f"Ignored {note}" for note in ignored]
        out = _paste_values(values, notes, hires_upscalers(self.app))
        for key, label in (("randn_source", "RNG"), ("eta_noise_seed_delta", "ENSD")):
            current = self.app.settings[by_field(key).setting or key]
            if key in values and str(values[key]) != str(current):
                notes.append(f"{label} {values[key]} is a setting (Settings tab); current: {current}")
        model = values.get("_model_name") or values.get("checkpoint")
        if model and model_note:
            notes.append(f"Model: {model} (choose it in the checkpoint list to switch)")
        return out, warning_html(notes)


def refiner_paste(values: dict[str, object]) -> dict[str, Any]:
    """The Refiner accordion's values for a pasted infotext: on with its checkpoint and switch, else off."""
    if values.get("refiner_checkpoint"):
        return {"refiner_enable": True, "refiner_checkpoint": values["refiner_checkpoint"],
                "refiner_switch_at": values.get("refiner_switch_at") or REFINER_DEFAULTS["refiner_switch_at"]}
    return {"refiner_enable": False}


def hires_upscalers(app: App) -> list[str]:
    """The hires fix's upscaler menu: the latent modes, then the pixel upscalers installed."""
    return [*LATENT_UPSCALE_MODES, *app.upscalers.names()]


def _paste_values(values: dict[str, object], notes: list[str], upscalers: list[str]) -> dict[str, Any]:
    """The form values for the pasted request fields: known choices only, A1111's defaults for what the infotext
    leaves out of a section it uses (hires, variation seed), clip skip 1 when not stated."""
    out: dict[str, Any] = {name: value for name, value in values.items() if name in PASTE_FIELDS}
    for name, allowed in (("sampler_name", samplers.sampler_names()), ("scheduler", samplers.schedule_labels()),
                          ("hr_upscaler", upscalers), ("hr_sampler_name", [None, *samplers.sampler_names()]),
                          ("hr_scheduler", [None, *samplers.schedule_labels()])):
        if name in out and out[name] not in allowed:
            notes.append(f"Unknown {name.replace('_', ' ')} {out.pop(name)!r}; kept the current one")
    out["tiling"] = bool(values.get("tiling", False))
    out.update(refiner_paste(values))
    out["enable_hr"] = bool(values.get("enable_hr", False))
    if out["enable_hr"]:
        for name, default in (("hr_second_pass_steps", 0), ("hr_resize_x", 0), ("hr_resize_y", 0),
                              ("hr_sampler_name", None), ("hr_scheduler", None), ("hr_checkpoint_name", None),
                              ("hr_prompt", ""),
                              ("hr_negative_prompt", "")):
            out.setdefault(name, default)
        out["hr_sampler_name"] = out["hr_sampler_name"] or SAME_SAMPLER
        out["hr_scheduler"] = out["hr_scheduler"] or SAME_SCHEDULER
        out["hr_checkpoint_name"] = out["hr_checkpoint_name"] or SAME_CHECKPOINT
    subseed_strength = out.get("subseed_strength", 0)
    if (isinstance(subseed_strength, float) and subseed_strength > 0) or out.get("seed_resize_from_w", 0):
        out["seed_extra"] = True
    else:
        out["subseed_strength"] = 0.0
    out["clip_skip"] = values.get("clip_skip", 1)
    return out

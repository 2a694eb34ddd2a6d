"""The img2img tab's behaviour, free of layout: build the request of each mode, run batches, paste, send-to.

As in ``txt2img_handlers``, handlers take a dict of field values (keys of :data:`FIELDS`) and yield
:class:`~webui.ui.txt2img_handlers.GenerateUpdate` tuples, so tests call them without a browser.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from modules.batch import list_inputs
from modules.errors import ValidationError
from modules.generation.image_prep import MASKED_CONTENT, RESIZE_MODES
from modules.job_types import BatchResult, Img2ImgBatchJob
from modules.jobs import Job, JobState
from modules.param_io import read_infotext, request_from_values
from modules.params import INPAINT_AREAS, MASK_MODES
from modules.requests import Img2ImgRequest
from webui.ui.common import error_html, infotext_html, toast, warning_html
from webui.ui.img2img_inputs import BATCH, gallery_image, mode_index, mode_inputs, scaled_size
from webui.ui.txt2img_handlers import (
    REFINER_DEFAULTS,
    REFINER_FIELDS,
    GenerateUpdate,
    Txt2ImgHandlers,
    form_values,
    model_form_defaults,
    selected_infotext,
)
from webui.ui.txt2img_handlers import default_values as txt2img_defaults

log = logging.getLogger(__name__)
SCALE_TABS = ("Resize to", "Resize by")
BATCH_SOURCES = ("Upload", "From directory")  # A1111 1.10's order; Upload is the default
MAX_BATCH_SHOWN = 32  # batch outputs shown in the gallery (all are written to the output folder)
# what "Send to img2img/inpaint" copies from the txt2img form
SEND_FIELDS = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "seed", "width",
               "height", "clip_skip")


def default_values(app: Any) -> dict[str, Any]:
    """The form's initial values (A1111's UI defaults); the keys, in order, are :data:`FIELDS`."""
    t = txt2img_defaults(app)
    return {
        "prompt": "", "negative_prompt": "", "styles": [], "mode": "img2img",
        "init_img": None, "sketch": None, "init_img_with_mask": None, "inpaint_color_sketch": None,
        "init_img_inpaint": None, "init_mask_inpaint": None, "mask_alpha": 0,
        "batch_source": BATCH_SOURCES[0], "batch_input_dir": "", "batch_output_dir": "",
        "batch_inpaint_mask_dir": "", "batch_use_png_info": False, "batch_png_info_props": [], "batch_files": None,
        "resize_mode": RESIZE_MODES[0], "scale_tab": SCALE_TABS[0], "width": 512, "height": 512, "scale_by": 1.0,
        "sampler_name": t["sampler_name"], "scheduler": t["scheduler"], "steps": 20, "n_iter": 1, "batch_size": 1,
        "cfg_scale": 7.0, "image_cfg_scale": 1.5, "denoising_strength": 0.75, "initial_noise_multiplier": 1.0,
        "seed": -1, "seed_extra": False, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_w": 0,
        "seed_resize_from_h": 0, "clip_skip": t["clip_skip"], "tiling": False,
        "mask_blur": 4, "inpainting_mask_invert": MASK_MODES[0], "inpainting_fill": MASKED_CONTENT[1],
        "inpaint_full_res": INPAINT_AREAS[0], "inpaint_full_res_padding": 32, **REFINER_DEFAULTS,
        **model_form_defaults(app),
    }


FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "styles", "mode", "init_img", "sketch", "init_img_with_mask",
    "inpaint_color_sketch", "init_img_inpaint", "init_mask_inpaint", "mask_alpha", "batch_source",
    "batch_input_dir", "batch_output_dir", "batch_inpaint_mask_dir", "batch_use_png_info", "batch_png_info_props",
    "batch_files", "resize_mode", "scale_tab", "width", "height", "scale_by", "sampler_name", "scheduler", "steps",
    "n_iter", "batch_size", "cfg_scale", "image_cfg_scale", "denoising_strength", "initial_noise_multiplier",
    "seed", "seed_extra", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "clip_skip",
    "tiling", "mask_blur", "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res",
    "inpaint_full_res_padding", *REFINER_FIELDS)
# what the ↙️ button may fill
PASTE_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "styles", "sampler_name", "scheduler", "steps", "width", "height", "cfg_scale",
    "image_cfg_scale", "denoising_strength", "initial_noise_multiplier", "seed", "seed_extra", "subseed",
    "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "clip_skip", "tiling", "mask_blur",
    "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding", *REFINER_FIELDS)
def _choice(value: Any, choices: tuple[str, ...], name: str) -> int:
    """The index of a radio value given as its label or its index."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and 0 <= value < len(choices):
        return value
    if value in choices:
        return choices.index(value)
    raise ValidationError(f"{name}: expected one of {', '.join(choices)} (got {value!r})", field=name)


def _number(value: Any, name: str, kind: type = float) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name}: expected a number, got {value!r}", field=name) from None
    if kind is int and not number.is_integer():
        raise ValidationError(f"{name}: must be a whole number (got {value})", field=name)
    return kind(number)


def _with_size(v: dict[str, Any], image: Image.Image | tuple[int, int] | None) -> dict[str, Any]:
    """``v`` with width/height from "Resize by" when that tab is the selected one."""
    if _choice(v["scale_tab"], SCALE_TABS, "scale_tab") == 1 and image is not None:
        v["width"], v["height"] = scaled_size(image, _number(v["scale_by"], "scale_by"))
    return v


def _img2img_request(app: Any, v: dict[str, Any], image: Image.Image | None,
                     mask: Image.Image | None) -> Img2ImgRequest:
    values = form_values(app, v, "img2img")
    blur = _number(v["mask_blur"], "mask_blur", int)
    values.update(
        init_images=(image,) if image is not None else (), mask=mask,
        resize_mode=_choice(v["resize_mode"], RESIZE_MODES, "resize_mode"), mask_blur_x=blur, mask_blur_y=blur,
        inpainting_fill=_choice(v["inpainting_fill"], MASKED_CONTENT, "inpainting_fill"),
        inpaint_full_res=bool(_choice(v["inpaint_full_res"], INPAINT_AREAS, "inpaint_full_res")),
        inpainting_mask_invert=bool(_choice(v["inpainting_mask_invert"], MASK_MODES, "inpainting_mask_invert")))
    return request_from_values(Img2ImgRequest, values)


def build_img2img_request(app: Any, values: dict[str, Any]) -> Img2ImgRequest:
    """The request of a non-batch mode: the mode's init image and mask (see ``img2img_inputs``) and the form."""
    v = {**default_values(app), **values}
    mode = mode_index(v["mode"])
    if mode == BATCH:
        raise ValidationError("the Batch mode runs through plan_batch", field="mode")
    image, mask = mode_inputs(mode, v)
    return _img2img_request(app, _with_size(v, image), image, mask)


def _folder(app: Any, value: Any) -> Path:
    path = Path(str(value).strip()).expanduser()
    return path if path.is_absolute() else app.paths.data_dir / path


def _upload_paths(files: Any) -> list[Path]:
    out = []
    for f in files or []:
        path = f.get("path") if isinstance(f, dict) else getattr(f, "name", f)
        if path:
            out.append(Path(str(path)))
    return out


def plan_batch(app: Any, values: dict[str, Any]) -> Img2ImgBatchJob:
    """Check the Batch tab's folders or uploads and the form (raising before anything is queued)."""
    v = {**default_values(app), **values}
    exposed = bool(getattr(app.settings, "exposed", False))
    folders = [str(v[k] or "").strip() for k in ("batch_input_dir", "batch_output_dir", "batch_inpaint_mask_dir")]
    if _choice(v["batch_source"], BATCH_SOURCES, "batch_source") == 0:
        inputs = _upload_paths(v["batch_files"])
        if not inputs:
            raise ValidationError("Batch: upload one or more images first", field="batch_files")
        out_dir, mask_dir = app.output_options("img2img").samples_dir, None
    else:
        if exposed:
            raise ValidationError("Batch: server folders cannot be used while the server is reachable from other "
                                  "machines; upload the files instead", field="batch_input_dir")
        if not folders[0]:
            raise ValidationError("Batch: enter an input directory", field="batch_input_dir")
        inputs = list_inputs(_folder(app, folders[0]))
        if not inputs:
            raise ValidationError(f"Batch: no files in {folders[0]}", field="batch_input_dir")
        out_dir = _folder(app, folders[1]) if folders[1] else app.output_options("img2img").samples_dir
        if out_dir.exists() and not out_dir.is_dir():
            raise ValidationError(f"Batch: the output directory {out_dir} is a file", field="batch_output_dir")
        mask_dir = _folder(app, folders[2]) if folders[2] else None
        if mask_dir is not None and not mask_dir.is_dir():
            raise ValidationError(f"Batch: inpaint mask directory not found: {folders[2]}",
                                  field="batch_inpaint_mask_dir")
    scale_by = (_number(v["scale_by"], "scale_by") if _choice(v["scale_tab"], SCALE_TABS, "scale_tab") == 1
                else None)
    base = _img2img_request(app, v, None, None)
    base = base.replace(checkpoint=base.checkpoint or app.settings["sd_model_checkpoint"] or None)
    fields = tuple(v["batch_png_info_props"] or ()) if v["batch_use_png_info"] else ()
    return Img2ImgBatchJob(base, tuple(inputs), out_dir, mask_dir, fields, scale_by, app.limits())


class Img2ImgHandlers(Txt2ImgHandlers):
    """Generate (every mode), interrupt, skip and ↙️ paste for the img2img tab."""

    fields = FIELDS

    def submit(self, values: dict[str, Any], owner: str | None = None) -> Job:
        """Queue the job the form describes for ``owner`` (checked first: nothing is queued on bad input)."""
        if mode_index(values.get("mode", "img2img")) == BATCH:
            return self.app.submit(plan_batch(self.app, values), owner)
        from webui.ui.scripts_ui import script_call

        request = build_img2img_request(self.app, values)
        script = script_call(self.app, values, "img2img")
        return self.app.submit(self.app.generation_job(request, True, script=script), owner)

    def finish(self, job: Job, took: float) -> GenerateUpdate:
        if isinstance(job.spec, Img2ImgBatchJob):
            return self.finish_batch(job, took)
        return super().finish(job, took)

    def finish_batch(self, job: Job, took: float) -> GenerateUpdate:
        """The batch's outputs in the gallery, where they were written, and what was skipped and why."""
        skip, hidden = gr.skip(), gr.update(visible=False, value=None)
        report = job.result
        if job.state is JobState.FAILED or not isinstance(report, BatchResult):
            message = (f"Batch failed: {job.error or 'unknown error'}" if job.state is JobState.FAILED
                       else "Interrupted before the batch started")
            if job.state is JobState.FAILED:
                toast(message, "Batch failed")
            return GenerateUpdate(skip, skip, "", hidden, error_html(message), None, skip)
        seeds = [image.seed for image in report.images]
        footer = (f"{len(report.saved)} image(s) written to {report.output_dir} \u00b7 Time taken: {took:.1f} s")
        state = {"infotexts": list(report.infotexts), "seeds": seeds, "subseeds": seeds, "grid": False,
                 "selected": 0, "footer": footer}
        notes = [f"Skipped {name}: {why}" for name, why in report.skipped]
        if report.interrupted or job.state is JobState.CANCELLED:
            notes.insert(0, f"Interrupted: {len(report.saved)} image(s) written")
        if len(report.images) > MAX_BATCH_SHOWN:
            notes.append(f"Showing the first {MAX_BATCH_SHOWN} of {len(report.images)} images")
        if not report.images and not notes:
            notes.append("No images were generated")
        info = infotext_html(report.infotexts[0], footer) if report.infotexts else ""
        return GenerateUpdate([i.to_pil() for i in report.images[:MAX_BATCH_SHOWN]], info, "", hidden,
                              warning_html(notes), None, state)

    def read_parameters(self, text: str, results: dict[str, Any] | None = None, model_note: bool = True
                        ) -> tuple[dict[str, Any], str]:
        """(field values to set, message HTML) from the infotext in the prompt box, or the shown image's."""
        if not (text or "").strip():
            text = selected_infotext(results) or ""
        values, message = super().read_parameters(text, results, model_note)
        if not values:
            return values, message
        out = {k: v for k, v in values.items() if k in PASTE_FIELDS}
        fields, _ = read_infotext(text, "img2img")
        labels = {"inpainting_mask_invert": MASK_MODES, "inpainting_fill": MASKED_CONTENT,
                  "inpaint_full_res": INPAINT_AREAS}
        for name in ("image_cfg_scale", "initial_noise_multiplier", "inpaint_full_res_padding", *labels):
            value = fields.get(name)
            if isinstance(value, (bool, int)) and name in labels and 0 <= int(value) < len(labels[name]):
                out[name] = labels[name][int(value)]
            elif value is not None and name not in labels:
                out[name] = value
        if "mask_blur_x" in fields:
            out["mask_blur"] = fields["mask_blur_x"]
        return out, message


def send_to(gallery: Any, results: dict[str, Any] | None, values: dict[str, Any]
            ) -> tuple[Image.Image | None, dict[str, Any], str]:
    """"Send to img2img/inpaint" from txt2img: (the image, the img2img fields to set, message HTML)."""
    image = gallery_image(gallery, results)
    if image is None:
        return None, {}, warning_html(["Generate an image first, then send it to img2img"])
    return image, {name: values[name] for name in SEND_FIELDS if name in values}, ""

"""The Extras tab, as A1111's: a single image or a batch of uploads, upscaled by a factor or to a size with
Upscaler 1 (and Upscaler 2 blended in at its visibility); the results are shown with their postprocessing text
and saved to ``outputs/extras-images`` (``outdir_extras_samples``). Runs as a queued job like every generation."""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from modules.app import App
from modules.batch import list_inputs
from modules.errors import ValidationError, WebUIError
from modules.extras import ExtrasRequest, ExtrasResult
from modules.job_types import ExtrasJob
from modules.jobs import JobState
from webui.ui.common import REFRESH, error_html, tool_button, user_message, warning_html
from webui.ui.extras_sections import build_face_sections, build_training_sections, face_values, training_options
from webui.ui.txt2img_handlers import request_user

TAB = "extras"
MAX_BATCH = 64


@dataclass
class ExtrasUI:
    fields: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)


def _open_upload(item: Any) -> tuple[str, Image.Image]:
    path = getattr(item, "name", None) or str(item)
    image = Image.open(path)
    image.load()
    return path.rsplit("/", 1)[-1], image


def _number(values: dict[str, Any], name: str, label: str) -> float:
    """A form number; a cleared field is a message, not an exception."""
    value = values[name]
    if value is None or value == "":
        raise WebUIError(f"{label}: enter a number")
    return float(value)


def _folder(app: App, value: Any) -> Path:
    path = Path(str(value).strip()).expanduser()
    return path if path.is_absolute() else app.paths.data_dir / path


def _directory_inputs(app: App, values: dict[str, Any]) -> tuple[Path, ...]:
    """Batch from Directory's files (refused while the server is reachable from other machines, as A1111's
    ``--hide-ui-dir-config``)."""
    if bool(getattr(app.settings, "exposed", False)):
        raise WebUIError("Batch from Directory: server folders cannot be used while the server is reachable from "
                         "other machines; upload the files instead")
    text = str(values["input_dir"] or "").strip()
    if not text:
        raise WebUIError("Batch from Directory: enter an input directory")
    try:
        return tuple(list_inputs(_folder(app, text)))
    except ValidationError as exc:
        raise WebUIError(f"Batch from Directory: {exc}") from None


def output_folder(app: App, values: dict[str, Any]) -> Path:
    """Where the run's images go: the directory batch's output directory when given, else ``outdir_extras_samples``."""
    text = str(values.get("output_dir") or "").strip()
    if values.get("source") == 2 and text:
        folder = _folder(app, text)
        if folder.exists() and not folder.is_dir():
            raise WebUIError(f"Batch from Directory: the output directory {folder} is a file")
        return folder
    return app.extras_output_dir()


def extras_request(app: App, values: dict[str, Any]) -> ExtrasRequest:
    """The request the form describes (the single image, the uploads or the directory, by the tab shown)."""
    paths: tuple[Path, ...] = ()
    if values["source"] == 1:
        uploads = list(values["batch"] or [])[:MAX_BATCH]
        try:
            images = [_open_upload(u) for u in uploads]
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise WebUIError(f"an uploaded file is not an image ({exc})") from None
    elif values["source"] == 2:
        images, paths = [], _directory_inputs(app, values)
        if not paths:
            raise WebUIError(f"Batch from Directory: no files in {values['input_dir']}")
    else:
        images = [("", values["image"])] if values["image"] is not None else []
    faces = face_values(values) if "gfpgan_enable" in values else {}
    return ExtrasRequest(
        images=tuple(images), input_paths=paths, show_results=bool(values.get("show_results", True)),
        resize_mode=int(values["resize_mode"]),
        upscaling_resize=_number(values, "upscaling_resize", "Resize"),
        upscaling_resize_w=int(_number(values, "upscaling_resize_w", "Width")),
        upscaling_resize_h=int(_number(values, "upscaling_resize_h", "Height")),
        upscaling_crop=bool(values["upscaling_crop"]),
        upscaler_1=str(values["upscaler_1"] or "None"), upscaler_2=str(values["upscaler_2"] or "None"),
        extras_upscaler_2_visibility=_number(values, "upscaler_2_visibility", "Upscaler 2 visibility"),
        gfpgan_visibility=faces.get("gfpgan_visibility", 0.0),
        codeformer_visibility=faces.get("codeformer_visibility", 0.0),
        codeformer_weight=faces.get("codeformer_weight", 0.0),
        training=(training_options(values, app.settings["postprocessing_existing_caption_action"])
                  if "split_enable" in values else None))


def run(app: App, values: dict[str, Any], user: str | None) -> tuple[Any, str, str]:
    """(gallery images, html info, message) for the form's values."""
    try:
        req = extras_request(app, values)
        job = app.submit(ExtrasJob(req, output_folder(app, values), app.settings["samples_format"],
                                   original_names=bool(app.settings["use_original_name_batch"]),
                                   interrogate_options=app.interrogate_options()), user)
    except WebUIError as exc:
        return gr.skip(), "", error_html(user_message(exc))
    job.wait()
    if job.state is JobState.FAILED:
        return gr.skip(), "", error_html(job.error or "failed")
    result = job.result
    if not isinstance(result, ExtrasResult):
        return gr.skip(), "", warning_html(["Interrupted"])
    images = [Image.open(io.BytesIO(i.png)) for i in result.images]
    lines = []
    if result.saved:
        shown = ", ".join(str(p) for p in result.saved[:8]) + (" ..." if len(result.saved) > 8 else "")
        lines.append(f"Saved {len(result.saved)}: {html.escape(shown)}")
    lines += [f"Skipped {html.escape(name)}: {html.escape(why)}" for name, why in result.skipped]
    lines += [html.escape(w) for w in result.warnings]
    if result.interrupted:
        lines.append("Interrupted")
    return images, result.html_info, warning_html(lines) if lines else ""


def build_extras_tab(app: App) -> ExtrasUI:
    ui = ExtrasUI()
    f, p = ui.fields, ui.parts
    names = app.upscalers.names()
    f["source"] = gr.State(0)
    f["resize_mode"] = gr.State(0)
    with gr.Row(equal_height=False, elem_id="extras_row"):
        with gr.Column(elem_id="extras_settings"):
            with gr.Tabs(elem_id="mode_extras") as p["mode_tabs"]:
                with gr.Tab("Single Image", id="single_image", elem_id="extras_single_tab") as single:
                    f["image"] = gr.Image(label="Source", type="pil", image_mode="RGB", elem_id="extras_image")
                with gr.Tab("Batch Process", id="batch_process", elem_id="extras_batch_process_tab") as batch:
                    f["batch"] = gr.File(label="Batch Process", file_count="multiple", elem_id="extras_image_batch")
                with gr.Tab("Batch from Directory", id="batch_from_directory",
                            elem_id="extras_batch_directory_tab") as directory:
                    f["input_dir"] = gr.Textbox(
                        label="Input directory", placeholder="A directory on the same machine where the server is "
                        "running.", elem_id="extras_batch_input_dir")
                    f["output_dir"] = gr.Textbox(
                        label="Output directory", placeholder="Leave blank to save images to the default path.",
                        elem_id="extras_batch_output_dir")
                    f["show_results"] = gr.Checkbox(True, label="Show result images",
                                                    elem_id="extras_show_extras_results")
            p["generate"] = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab("Scale by", id="scale_by", elem_id="extras_scale_by_tab") as scale_by:
                    f["upscaling_resize"] = gr.Slider(1.0, 8.0, value=4.0, step=0.05, label="Resize",
                                                      elem_id="extras_upscaling_resize")
                with gr.Tab("Scale to", id="scale_to", elem_id="extras_scale_to_tab") as scale_to:
                    with gr.Row():
                        f["upscaling_resize_w"] = gr.Number(512, label="Width", precision=0, minimum=1,
                                                            elem_id="extras_upscaling_resize_w")
                        f["upscaling_resize_h"] = gr.Number(512, label="Height", precision=0, minimum=1,
                                                            elem_id="extras_upscaling_resize_h")
                        f["upscaling_crop"] = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                f["upscaler_1"] = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id="extras_upscaler_1")
                p["refresh"] = tool_button(REFRESH, "extras_upscalers_refresh")
            with gr.Row():
                f["upscaler_2"] = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                f["upscaler_2_visibility"] = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                                       elem_id="extras_upscaler_2_visibility")
            build_face_sections(f)
            build_training_sections(f)
        with gr.Column(elem_id="extras_results"):
            p["gallery"] = gr.Gallery(label="Output", elem_id="extras_gallery", columns=2, format="png")
            p["selected"] = gr.State(0)
            with gr.Row(elem_id="extras_send_row"):  # wired by send_to.connect_extras_send
                p["send_img2img"] = gr.Button("Send to img2img", elem_id="extras_send_to_img2img", size="sm")
                p["send_inpaint"] = gr.Button("Send to inpaint", elem_id="extras_send_to_inpaint", size="sm")
            p["html_info"] = gr.HTML(elem_id="html_info_extras")
            p["message"] = gr.HTML(elem_id="extras_message")
    quiet: dict[str, Any] = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}
    single.select(lambda: 0, outputs=[f["source"]], **quiet)
    batch.select(lambda: 1, outputs=[f["source"]], **quiet)
    directory.select(lambda: 2, outputs=[f["source"]], **quiet)
    scale_by.select(lambda: 0, outputs=[f["resize_mode"]], **quiet)
    scale_to.select(lambda: 1, outputs=[f["resize_mode"]], **quiet)

    def refresh() -> tuple[Any, Any]:
        app.upscalers.refresh()
        return gr.update(choices=app.upscalers.names()), gr.update(choices=app.upscalers.names())

    def on_select(evt: gr.SelectData) -> int:
        return evt.index if isinstance(evt.index, int) else 0

    p["gallery"].select(on_select, outputs=[p["selected"]], **quiet)
    p["refresh"].click(refresh, outputs=[f["upscaler_1"], f["upscaler_2"]], **quiet)
    names_order = list(f)

    def generate(*args: Any, request: gr.Request | None = None) -> tuple[Any, str, str]:
        return run(app, dict(zip(names_order, args, strict=True)), request_user(request))

    p["generate"].click(generate, inputs=[f[n] for n in names_order],
                        outputs=[p["gallery"], p["html_info"], p["message"]], api_visibility="private"
                        ).then(lambda: 0, outputs=[p["selected"]], **quiet)
    return ui

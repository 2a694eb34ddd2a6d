"""img2img's "Interrogate CLIP" and "Interrogate DeepBooru" buttons: the current mode's image read into a prompt,
which replaces the prompt box (A1111's behaviour). Runs as a queued job; a missing model is a message naming the
files to install."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from modules.app import App
from modules.errors import WebUIError
from modules.job_types import InterrogateResult
from modules.jobs import JobState
from webui.ui.common import error_html, user_message, warning_html
from webui.ui.img2img_inputs import editor_images, load_image, mode_index

IMAGE_FIELDS = ("init_img", "sketch", "init_img_with_mask", "inpaint_color_sketch", "init_img_inpaint")
BUTTONS = (("interrogate", "Interrogate CLIP", "clip"), ("deepbooru", "Interrogate DeepBooru", "deepdanbooru"))


def mode_image(mode: Any, values: dict[str, Any]) -> Image.Image:
    """The image of the img2img mode shown (the drawing included for the sketch modes)."""
    index = mode_index(mode)
    if index >= len(IMAGE_FIELDS):
        raise WebUIError("Interrogate works on the image of one of the image tabs, not on Batch")
    name = IMAGE_FIELDS[index]
    if index in (0, 4):
        image = load_image(values.get(name), "image")
    else:
        background, _, composite = editor_images(values.get(name), "image")
        image = background if index == 2 else composite or background
    if image is None:
        raise WebUIError("Upload an image first, then interrogate it")
    return image


def interrogate(app: App, model: str, mode: Any, values: dict[str, Any], user: str | None) -> tuple[Any, str]:
    """(the new prompt, message HTML)."""
    try:
        job = app.submit(app.interrogate_job(mode_image(mode, values), model), user)
    except WebUIError as exc:
        return gr.skip(), error_html(user_message(exc))
    job.wait()
    if job.state is JobState.FAILED:
        return gr.skip(), error_html(job.error or "failed")
    if not isinstance(job.result, InterrogateResult):
        return gr.skip(), warning_html(["Interrupted"])
    return job.result.caption, ""


def add_buttons(parts: dict[str, Any]) -> None:
    """The two buttons (inside the prompt row's action column)."""
    with gr.Row(elem_id="interrogate_col"):
        for key, label, _ in BUTTONS:
            parts[key] = gr.Button(label, elem_id=key, size="sm")


def wire(app: App, fields: dict[str, Any], parts: dict[str, Any], request_user: Any) -> None:
    for key, _, model in BUTTONS:
        def run(mode: Any, *images: Any, request: gr.Request | None = None, model: str = model) -> tuple[Any, str]:
            return interrogate(app, model, mode, dict(zip(IMAGE_FIELDS, images, strict=True)), request_user(request))

        parts[key].click(run, inputs=[fields["mode"], *(fields[n] for n in IMAGE_FIELDS)],
                         outputs=[fields["prompt"], parts["log"]], api_visibility="private")

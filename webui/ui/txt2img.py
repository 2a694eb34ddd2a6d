"""The txt2img tab, laid out as A1111's: prompts and buttons on top, parameters left, gallery and infotext right."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules import samplers
from modules.app import App
from modules.params import label
from modules.requests import SAME_CHECKPOINT, SAME_SAMPLER
from webui.ui import generation_rows as rows
from webui.ui import result_buttons
from webui.ui.common import TokenCounter
from webui.ui.generation_rows import FAST, GenerationUI, style_names
from webui.ui.txt2img_handlers import (
    FIELDS,
    PASTE_FIELDS,
    SAME_SCHEDULER,
    Txt2ImgHandlers,
    default_values,
    hires_resolution_html,
    hires_upscalers,
)

__all__ = ["FAST", "Txt2ImgUI", "build_txt2img_tab", "style_names"]
TAB = "txt2img"


@dataclass
class Txt2ImgUI(GenerationUI, tab=TAB, field_names=FIELDS, paste_fields=PASTE_FIELDS):
    """The tab's components (form fields by name, in :data:`FIELDS` order) and its handlers."""

    handlers: Txt2ImgHandlers


def checkpoint_titles(app: App) -> list[str]:
    return [info.title for info in app.registry.list()]


def _hires_accordion(ui: Txt2ImgUI, d: dict[str, Any], checkpoints: list[str], upscalers: list[str]) -> None:
    f, p = ui.fields, ui.parts
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
        with gr.Row():
            f["enable_hr"] = gr.Checkbox(label="Enable", value=d["enable_hr"], elem_id="txt2img_enable_hr")
            p["hr_final_resolution"] = gr.HTML(hires_resolution_html(512, 512, 2.0, 0, 0),
                                               elem_id="txtimg_hr_finalres")
        with gr.Row():
            f["hr_upscaler"] = gr.Dropdown(label=label("hr_upscaler"), choices=upscalers, value=d["hr_upscaler"],
                                           elem_id="txt2img_hr_upscaler")
            f["hr_second_pass_steps"] = gr.Slider(0, 150, value=d["hr_second_pass_steps"], step=1,
                                                  label=label("hr_second_pass_steps"), elem_id="txt2img_hires_steps")
            f["denoising_strength"] = gr.Slider(0.0, 1.0, value=d["denoising_strength"], step=0.01,
                                                label=label("denoising_strength"), elem_id="txt2img_denoising_strength")
        with gr.Row():
            f["hr_scale"] = gr.Slider(1.0, 4.0, value=d["hr_scale"], step=0.05, label=label("hr_scale"),
                                      elem_id="txt2img_hr_scale")
            f["hr_resize_x"] = gr.Slider(0, 2048, value=d["hr_resize_x"], step=8, label=label("hr_resize_x"),
                                         elem_id="txt2img_hr_resize_x")
            f["hr_resize_y"] = gr.Slider(0, 2048, value=d["hr_resize_y"], step=8, label=label("hr_resize_y"),
                                         elem_id="txt2img_hr_resize_y")
        with gr.Row():
            f["hr_sampler_name"] = gr.Dropdown(label=label("hr_sampler_name"),
                                               choices=[SAME_SAMPLER, *samplers.sampler_names()],
                                               value=d["hr_sampler_name"], elem_id="hr_sampler")
            f["hr_scheduler"] = gr.Dropdown(label=label("hr_scheduler"),
                                            choices=[SAME_SCHEDULER, *samplers.schedule_labels()],
                                            value=d["hr_scheduler"], elem_id="hr_scheduler")
            f["hr_checkpoint_name"] = gr.Dropdown(label=label("hr_checkpoint_name"),
                                                  choices=[SAME_CHECKPOINT, *checkpoints], allow_custom_value=True,
                                                  value=d["hr_checkpoint_name"], elem_id="hr_checkpoint")
        with gr.Row():
            f["hr_prompt"] = gr.Textbox(label=label("hr_prompt"), lines=2, elem_id="hires_prompt",
                                        placeholder="Prompt for hires fix pass.\nLeave empty to use the same prompt.")
            f["hr_negative_prompt"] = gr.Textbox(label=label("hr_negative_prompt"), lines=2, elem_id="hires_neg_prompt",
                                                 placeholder="Negative prompt for hires fix pass.\n"
                                                             "Leave empty to use the same negative prompt.")


def _result_row(ui: Txt2ImgUI, app: App) -> None:
    """A1111's buttons under the gallery (📂 💾 🗃️ 🖼️ 🎨️ 📐, see :mod:`webui.ui.result_buttons`); the send buttons
    are wired by img2img.connect_send_to and send_to.connect_extras_send once those tabs exist."""
    result_buttons.build_result_row(ui, app)


def build_txt2img_tab(app: App, counter: TokenCounter) -> Txt2ImgUI:
    """Create the tab's components inside the current ``gr.Tab`` and wire its events."""
    ui = Txt2ImgUI(Txt2ImgHandlers(app))
    d = default_values(app)
    rows.tab_page(ui, app, lambda: _parameters(ui, d, app), below_gallery=lambda: _result_row(ui, app))
    _wire(ui, app, counter)
    result_buttons.wire_result_row(ui, app)
    return ui


def _parameters(ui: Txt2ImgUI, d: dict[str, Any], app: App) -> None:
    rows.sampler_rows(ui, d)
    checkpoints = checkpoint_titles(app)
    _hires_accordion(ui, d, checkpoints, hires_upscalers(app))
    rows.refiner_accordion(ui, d, checkpoints)
    with gr.Row(elem_id="txt2img_dimensions_row"):
        rows.size_column(ui, d)
        rows.batch_column(ui, d)
    rows.cfg_slider(ui, d)
    rows.seed_rows(ui, d)
    ui.add_scripts(app)


def _wire(ui: Txt2ImgUI, app: App, counter: TokenCounter) -> None:
    f, p = ui.fields, ui.parts
    for trigger in (p["generate"].click, f["prompt"].submit):
        trigger(ui.handlers.generate_as, inputs=ui.inputs(), outputs=ui.outputs(), show_progress="hidden",
                concurrency_limit=None, concurrency_id="txt2img_generate", api_visibility="private")
    rows.wire_shared(ui, app, counter)
    res_inputs = [f["width"], f["height"], f["hr_scale"], f["hr_resize_x"], f["hr_resize_y"]]
    for comp in res_inputs:  # raw values: a number box sends "6" on the way to "64" (see rows.wire_shared)
        comp.change(hires_resolution_html, inputs=res_inputs, outputs=[p["hr_final_resolution"]],
                    api_visibility="private", preprocess=False, **FAST)

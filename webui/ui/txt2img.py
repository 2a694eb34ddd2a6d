"""The txt2img tab, laid out as A1111's: prompts and buttons on top, parameters left, gallery and infotext right."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules import samplers
from modules.app import App
from modules.requests import SAME_SAMPLER
from modules.styles import load_styles
from webui.ui import common
from webui.ui.common import PASTE, RANDOM, REUSE, TokenCounter, tool_button
from webui.ui.txt2img_handlers import (
    FIELDS,
    PASTE_FIELDS,
    SAME_SCHEDULER,
    UPSCALERS,
    Txt2ImgHandlers,
    default_values,
    hires_resolution_html,
    reuse_seed,
    select_image,
)

FAST = {"queue": False, "show_progress": "hidden"}  # cheap UI-only events


@dataclass
class Txt2ImgUI:
    """The tab's components (form fields by name, in :data:`FIELDS` order) and its handlers."""

    handlers: Txt2ImgHandlers
    fields: dict[str, gr.components.Component] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)

    def inputs(self) -> list[gr.components.Component]:
        return [self.fields[name] for name in FIELDS]


def style_names(app: App) -> list[str]:
    return list(load_styles(app.paths.styles_file))


def _prompt_row(ui: Txt2ImgUI, app: App, d: dict[str, Any]) -> None:
    f, p = ui.fields, ui.parts
    with gr.Row(elem_id="txt2img_toprow", equal_height=False):
        with gr.Column(scale=6, elem_id="txt2img_prompt_container"):
            f["prompt"] = gr.Textbox(label="Prompt", lines=3, max_lines=20, elem_id="txt2img_prompt",
                                     placeholder="Prompt (read generation parameters: paste an infotext and press "
                                                 f"{PASTE})")
            p["token_counter"] = gr.HTML(common.token_html(0, 75), elem_id="txt2img_token_counter")
            f["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, max_lines=20,
                                              elem_id="txt2img_neg_prompt", placeholder="Negative prompt")
            p["neg_token_counter"] = gr.HTML(common.token_html(0, 75), elem_id="txt2img_negative_token_counter")
        with gr.Column(scale=2, min_width=220, elem_id="txt2img_actions_column"):
            p["generate"] = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            with gr.Row(elem_id="txt2img_interrupt_skip"):
                p["interrupt"] = gr.Button("Interrupt", variant="stop", elem_id="txt2img_interrupt", size="sm")
                p["skip"] = gr.Button("Skip", elem_id="txt2img_skip", size="sm")
            with gr.Row(elem_id="txt2img_tools"):
                p["paste"] = tool_button(PASTE, "paste")
                p["clear"] = tool_button(common.CLEAR, "txt2img_clear_prompt")
                p["styles_refresh"] = tool_button(common.REFRESH, "txt2img_styles_refresh")
            f["styles"] = gr.Dropdown(label="Styles", choices=style_names(app), value=[], multiselect=True,
                                      elem_id="txt2img_styles")


def _sampler_rows(ui: Txt2ImgUI, d: dict[str, Any]) -> None:
    f = ui.fields
    with gr.Row(elem_id="txt2img_sampler_row"):
        f["sampler_name"] = gr.Dropdown(label="Sampling method", choices=samplers.sampler_names(),
                                        value=d["sampler_name"], elem_id="txt2img_sampling")
        f["scheduler"] = gr.Dropdown(label="Schedule type", choices=samplers.schedule_labels(),
                                     value=d["scheduler"], elem_id="txt2img_scheduler")
    f["steps"] = gr.Slider(1, 150, value=d["steps"], step=1, label="Sampling steps", elem_id="txt2img_steps")


def _hires_accordion(ui: Txt2ImgUI, d: dict[str, Any]) -> None:
    f, p = ui.fields, ui.parts
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
        with gr.Row():
            f["enable_hr"] = gr.Checkbox(label="Enable", value=d["enable_hr"], elem_id="txt2img_enable_hr")
            p["hr_final_resolution"] = gr.HTML(hires_resolution_html(512, 512, 2.0, 0, 0),
                                               elem_id="txtimg_hr_finalres")
        with gr.Row():
            f["hr_upscaler"] = gr.Dropdown(label="Upscaler", choices=list(UPSCALERS), value=d["hr_upscaler"],
                                           elem_id="txt2img_hr_upscaler")
            f["hr_second_pass_steps"] = gr.Slider(0, 150, value=d["hr_second_pass_steps"], step=1,
                                                  label="Hires steps", elem_id="txt2img_hires_steps")
            f["denoising_strength"] = gr.Slider(0.0, 1.0, value=d["denoising_strength"], step=0.01,
                                                label="Denoising strength", elem_id="txt2img_denoising_strength")
        with gr.Row():
            f["hr_scale"] = gr.Slider(1.0, 4.0, value=d["hr_scale"], step=0.05, label="Upscale by",
                                      elem_id="txt2img_hr_scale")
            f["hr_resize_x"] = gr.Slider(0, 2048, value=d["hr_resize_x"], step=8, label="Resize width to",
                                         elem_id="txt2img_hr_resize_x")
            f["hr_resize_y"] = gr.Slider(0, 2048, value=d["hr_resize_y"], step=8, label="Resize height to",
                                         elem_id="txt2img_hr_resize_y")
        with gr.Row():
            f["hr_sampler_name"] = gr.Dropdown(label="Hires sampling method",
                                               choices=[SAME_SAMPLER, *samplers.sampler_names()],
                                               value=d["hr_sampler_name"], elem_id="hr_sampler")
            f["hr_scheduler"] = gr.Dropdown(label="Hires schedule type",
                                            choices=[SAME_SCHEDULER, *samplers.schedule_labels()],
                                            value=d["hr_scheduler"], elem_id="hr_scheduler")
        with gr.Row():
            f["hr_prompt"] = gr.Textbox(label="Hires prompt", lines=2, elem_id="hires_prompt",
                                        placeholder="Prompt for hires fix pass.\nLeave empty to use the same prompt.")
            f["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt", lines=2, elem_id="hires_neg_prompt",
                                                 placeholder="Negative prompt for hires fix pass.\n"
                                                             "Leave empty to use the same negative prompt.")


def _size_and_seed(ui: Txt2ImgUI, d: dict[str, Any]) -> None:
    f, p = ui.fields, ui.parts
    with gr.Row(elem_id="txt2img_dimensions_row"):
        with gr.Column(scale=4):
            f["width"] = gr.Slider(64, 2048, value=d["width"], step=8, label="Width", elem_id="txt2img_width")
            f["height"] = gr.Slider(64, 2048, value=d["height"], step=8, label="Height", elem_id="txt2img_height")
        p["swap"] = tool_button("\u21c5", "txt2img_res_switch_btn")
        with gr.Column(scale=2):
            f["n_iter"] = gr.Slider(1, 100, value=d["n_iter"], step=1, label="Batch count",
                                    elem_id="txt2img_batch_count")
            f["batch_size"] = gr.Slider(1, 8, value=d["batch_size"], step=1, label="Batch size",
                                        elem_id="txt2img_batch_size")
    f["cfg_scale"] = gr.Slider(1.0, 30.0, value=d["cfg_scale"], step=0.5, label="CFG Scale",
                               elem_id="txt2img_cfg_scale")
    with gr.Row(elem_id="txt2img_seed_row"):
        f["seed"] = gr.Number(label="Seed", value=d["seed"], precision=0, elem_id="txt2img_seed", scale=4)
        p["random_seed"] = tool_button(RANDOM, "txt2img_random_seed")
        p["reuse_seed"] = tool_button(REUSE, "txt2img_reuse_seed")
        f["seed_extra"] = gr.Checkbox(label="Extra", value=d["seed_extra"], elem_id="txt2img_subseed_show",
                                      scale=1, min_width=80)
    with gr.Column(visible=False, elem_id="txt2img_seed_extras") as p["seed_extras"]:
        with gr.Row():
            f["subseed"] = gr.Number(label="Variation seed", value=d["subseed"], precision=0,
                                     elem_id="txt2img_subseed", scale=4)
            p["random_subseed"] = tool_button(RANDOM, "txt2img_random_subseed")
            p["reuse_subseed"] = tool_button(REUSE, "txt2img_reuse_subseed")
            f["subseed_strength"] = gr.Slider(0.0, 1.0, value=d["subseed_strength"], step=0.01,
                                              label="Variation strength", elem_id="txt2img_subseed_strength",
                                              scale=4)
        with gr.Row():
            f["seed_resize_from_w"] = gr.Slider(0, 2048, value=d["seed_resize_from_w"], step=8,
                                                label="Resize seed from width", elem_id="txt2img_seed_resize_from_w")
            f["seed_resize_from_h"] = gr.Slider(0, 2048, value=d["seed_resize_from_h"], step=8,
                                                label="Resize seed from height",
                                                elem_id="txt2img_seed_resize_from_h")
    with gr.Row(elem_id="txt2img_extra_options"):
        f["clip_skip"] = gr.Slider(1, 12, value=d["clip_skip"], step=1, label="Clip skip",
                                   elem_id="txt2img_clip_skip")
        f["tiling"] = gr.Checkbox(label="Tiling", value=d["tiling"], elem_id="txt2img_tiling")


def _output_column(ui: Txt2ImgUI) -> None:
    p = ui.parts
    with gr.Column(scale=1, elem_id="txt2img_results"):
        p["progress"] = gr.HTML("", elem_id="txt2img_progress")
        p["preview"] = gr.Image(label="Preview", type="pil", interactive=False, visible=False, show_label=False,
                                elem_id="txt2img_preview", height=256)
        p["gallery"] = gr.Gallery(label="Output", show_label=False, columns=4, height=560, format="png",
                                  object_fit="contain", preview=True, interactive=False, elem_id="txt2img_gallery")
        with gr.Row(elem_id="txt2img_send_row"):  # wired by img2img.connect_send_to once that tab exists
            p["send_to_img2img"] = gr.Button("Send to img2img", elem_id="txt2img_send_to_img2img", size="sm")
            p["send_to_inpaint"] = gr.Button("Send to inpaint", elem_id="txt2img_send_to_inpaint", size="sm")
        p["infotext"] = gr.HTML("", elem_id="html_info_txt2img", elem_classes=["infotext"])
        p["log"] = gr.HTML("", elem_id="html_log_txt2img")
        p["job_id"] = gr.State(None)
        p["results"] = gr.State(None)


def build_txt2img_tab(app: App, counter: TokenCounter) -> Txt2ImgUI:
    """Create the tab's components inside the current ``gr.Tab`` and wire its events."""
    ui = Txt2ImgUI(Txt2ImgHandlers(app))
    d = default_values(app)
    _prompt_row(ui, app, d)
    with gr.Row(elem_id="txt2img_main_row", equal_height=False):
        with gr.Column(scale=1, elem_id="txt2img_settings"):
            _sampler_rows(ui, d)
            _hires_accordion(ui, d)
            _size_and_seed(ui, d)
        _output_column(ui)
    _wire(ui, app, counter)
    return ui


def _wire(ui: Txt2ImgUI, app: App, counter: TokenCounter) -> None:
    f, p, h = ui.fields, ui.parts, ui.handlers
    outputs = [p["gallery"], p["infotext"], p["progress"], p["preview"], p["log"], p["job_id"], p["results"]]
    generate = dict(fn=h.generate, inputs=ui.inputs(), outputs=outputs, show_progress="hidden",
                    concurrency_limit=None, concurrency_id="txt2img_generate")
    p["generate"].click(api_visibility="private", **generate)
    f["prompt"].submit(api_visibility="private", **generate)
    p["interrupt"].click(h.interrupt, inputs=[p["job_id"]], outputs=None, queue=False, show_progress="hidden",
                         api_visibility="private")
    p["skip"].click(h.skip, inputs=[p["job_id"]], outputs=None, queue=False, show_progress="hidden",
                    api_visibility="private")

    for box, html, positive in ((f["prompt"], p["token_counter"], True),
                                (f["negative_prompt"], p["neg_token_counter"], False)):
        box.change(lambda text, steps, pos=positive: counter.html(text, steps, pos), inputs=[box, f["steps"]],
                   outputs=[html], trigger_mode="always_last", concurrency_limit=None, show_progress="hidden",
                   api_visibility="private")

    paste_outputs = [f[name] for name in PASTE_FIELDS] + [p["log"]]

    def paste(text: str, results: dict[str, Any] | None) -> list[Any]:
        values, message = h.read_parameters(text, results)
        return [values.get(name, gr.skip()) for name in PASTE_FIELDS] + [message]

    p["paste"].click(paste, inputs=[f["prompt"], p["results"]], outputs=paste_outputs, api_visibility="private",
                     **FAST)
    p["clear"].click(lambda: ("", ""), outputs=[f["prompt"], f["negative_prompt"]], api_visibility="private", **FAST)
    p["styles_refresh"].click(lambda: gr.update(choices=style_names(app)), outputs=[f["styles"]],
                              api_visibility="private", **FAST)
    p["random_seed"].click(lambda: -1, outputs=[f["seed"]], api_visibility="private", **FAST)
    p["random_subseed"].click(lambda: -1, outputs=[f["subseed"]], api_visibility="private", **FAST)
    p["reuse_seed"].click(lambda r: reuse_seed(r, "seeds"), inputs=[p["results"]], outputs=[f["seed"]],
                          api_visibility="private", **FAST)
    p["reuse_subseed"].click(lambda r: reuse_seed(r, "subseeds"), inputs=[p["results"]], outputs=[f["subseed"]],
                             api_visibility="private", **FAST)
    f["seed_extra"].change(lambda on: gr.update(visible=bool(on)), inputs=[f["seed_extra"]],
                           outputs=[p["seed_extras"]], api_visibility="private", **FAST)
    p["swap"].click(lambda w, h_: (h_, w), inputs=[f["width"], f["height"]], outputs=[f["width"], f["height"]],
                    api_visibility="private", **FAST)
    res_inputs = [f["width"], f["height"], f["hr_scale"], f["hr_resize_x"], f["hr_resize_y"]]
    for comp in res_inputs:
        comp.change(hires_resolution_html, inputs=res_inputs, outputs=[p["hr_final_resolution"]],
                    api_visibility="private", **FAST)

    def on_select(results: dict[str, Any] | None, evt: gr.SelectData) -> tuple[str, Any]:
        return select_image(results, evt.index if isinstance(evt.index, int) else 0)

    p["gallery"].select(on_select, inputs=[p["results"]], outputs=[p["infotext"], p["results"]],
                        api_visibility="private", **FAST)

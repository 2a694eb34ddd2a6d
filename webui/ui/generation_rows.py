"""The rows the txt2img and img2img tabs share, built and wired once for both.

Each builder reads the tab's name (``ui.tab``: "txt2img" or "img2img") to make A1111's element ids, which browser
tests and users' CSS and JS rely on: ``txt2img_prompt`` / ``img2img_prompt``, ``html_info_txt2img``, and the one
exception, txt2img's read-parameters button ``paste`` (img2img's is ``img2img_paste``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gradio as gr

from modules import samplers
from modules.app import App
from modules.params import label
from webui.ui import common, extra_networks, interrogate, styles_editor
from webui.ui.common import PASTE, RANDOM, REUSE, TokenCounter, tool_button
from webui.ui.txt2img_handlers import reuse_seed, select_image

FAST = {"queue": False, "show_progress": "hidden"}  # cheap UI-only events
QUIET = {"api_visibility": "private", **FAST}
PASTE_IDS = {"txt2img": "paste", "img2img": "img2img_paste"}


@dataclass
class GenerationUI:
    """A generation tab's components (form fields by name, in ``field_names`` order), other parts and handlers.
    A tab's subclass names the tab and its field lists: ``class Txt2ImgUI(GenerationUI, tab="txt2img", ...)``."""

    tab: ClassVar[str] = ""
    field_names: ClassVar[tuple[str, ...]] = ()
    paste_fields: ClassVar[tuple[str, ...]] = ()

    handlers: Any
    fields: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)

    def __init_subclass__(cls, *, tab: str, field_names: Iterable[str], paste_fields: Iterable[str],
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.tab, cls.field_names, cls.paste_fields = tab, tuple(field_names), tuple(paste_fields)

    script_fields: list[str] = field(default_factory=list)  # the Script dropdown and its scripts' controls

    def inputs(self) -> list[Any]:
        return [self.fields[name] for name in (*self.field_names, *self.script_fields)]

    def add_scripts(self, app: App) -> None:
        """A1111's "Script" dropdown (with the tab's selectable scripts) at the end of the parameters."""
        from webui.ui.scripts_ui import build_scripts

        self.script_fields = build_scripts(self.fields, app.scripts.selectable(self.tab), self.tab)
        self.handlers.fields = (*type(self.handlers).fields, *self.script_fields)

    def outputs(self) -> list[Any]:
        """What a generation updates: gallery, infotext, progress, preview, log, job id, results."""
        p = self.parts
        return [p["gallery"], p["infotext"], p["progress"], p["preview"], p["log"], p["job_id"], p["results"]]


def style_names(app: App) -> list[str]:
    return app.styles.names()


def tab_page(ui: GenerationUI, app: App, settings: Callable[[], None],
             below_gallery: Callable[[], None] | None = None) -> None:
    """The tab's layout: the prompt row on top, then the extra-networks panel (hidden); below them the parameters
    column (``settings`` fills it) on the left and the output column on the right."""
    prompt_row(ui, app)
    ui.parts["styles_editor"] = styles_editor.build_dialog(app, ui.tab, ui.parts["styles_edit"])
    extra_networks.build_panel(ui, app)  # hidden until the prompt row's extra networks button shows it
    with gr.Row(elem_id=f"{ui.tab}_main_row", equal_height=False):
        with gr.Column(scale=1, elem_id=f"{ui.tab}_settings"):
            settings()
        output_column(ui, below_gallery)


def prompt_row(ui: GenerationUI, app: App) -> None:
    """Prompt and negative prompt with their token counters; Generate, Interrupt, Skip, the tools and Styles."""
    f, p, tab = ui.fields, ui.parts, ui.tab
    with gr.Row(elem_id=f"{tab}_toprow", equal_height=False):
        with gr.Column(scale=6, elem_id=f"{tab}_prompt_container"):
            f["prompt"] = gr.Textbox(label=label("prompt"), lines=3, max_lines=20, elem_id=f"{tab}_prompt",
                                     placeholder="Prompt (read generation parameters: paste an infotext and press "
                                                 f"{PASTE})")
            p["token_counter"] = gr.HTML(common.token_html(0, 75), elem_id=f"{tab}_token_counter")
            f["negative_prompt"] = gr.Textbox(label=label("negative_prompt"), lines=2, max_lines=20,
                                              elem_id=f"{tab}_neg_prompt", placeholder="Negative prompt")
            p["neg_token_counter"] = gr.HTML(common.token_html(0, 75), elem_id=f"{tab}_negative_token_counter")
        with gr.Column(scale=2, min_width=220, elem_id=f"{tab}_actions_column"):
            p["generate"] = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate")
            with gr.Row(elem_id=f"{tab}_interrupt_skip"):
                p["interrupt"] = gr.Button("Interrupt", variant="stop", elem_id=f"{tab}_interrupt", size="sm")
                p["skip"] = gr.Button("Skip", elem_id=f"{tab}_skip", size="sm")
            with gr.Row(elem_id=f"{tab}_tools"):
                p["paste"] = tool_button(PASTE, PASTE_IDS[tab])
                p["clear"] = tool_button(common.CLEAR, f"{tab}_clear_prompt")
                p["extra_networks"] = tool_button(extra_networks.SYMBOL, f"{tab}_extra_networks")
                p["styles_refresh"] = tool_button(common.REFRESH, f"{tab}_styles_refresh")
                p["styles_edit"] = styles_editor.edit_button(tab)
            if tab == "img2img":
                interrogate.add_buttons(p)
            f["styles"] = gr.Dropdown(label=label("styles"), choices=style_names(app), value=[], multiselect=True,
                                      elem_id=f"{tab}_styles")


def sampler_rows(ui: GenerationUI, d: dict[str, Any]) -> None:
    """Sampling method and schedule type in a row, then Sampling steps."""
    f, tab = ui.fields, ui.tab
    with gr.Row(elem_id=f"{tab}_sampler_row"):
        f["sampler_name"] = gr.Dropdown(label=label("sampler_name"), choices=samplers.sampler_names(),
                                        value=d["sampler_name"], elem_id=f"{tab}_sampling")
        f["scheduler"] = gr.Dropdown(label=label("scheduler"), choices=samplers.schedule_labels(),
                                     value=d["scheduler"], elem_id=f"{tab}_scheduler")
    f["steps"] = gr.Slider(1, 150, value=d["steps"], step=1, label=label("steps"), elem_id=f"{tab}_steps")


def size_column(ui: GenerationUI, d: dict[str, Any]) -> None:
    """Width and height, stacked, and the swap button beside them (inside the caller's row)."""
    f, tab = ui.fields, ui.tab
    with gr.Column(scale=4):
        f["width"] = gr.Slider(64, 2048, value=d["width"], step=8, label=label("width"), elem_id=f"{tab}_width")
        f["height"] = gr.Slider(64, 2048, value=d["height"], step=8, label=label("height"), elem_id=f"{tab}_height")
    ui.parts["swap"] = tool_button("\u21c5", f"{tab}_res_switch_btn")


def batch_column(ui: GenerationUI, d: dict[str, Any], min_width: int = 320) -> None:
    """Batch count above batch size."""
    f, tab = ui.fields, ui.tab
    with gr.Column(scale=2, min_width=min_width):
        f["n_iter"] = gr.Slider(1, 100, value=d["n_iter"], step=1, label=label("n_iter"), elem_id=f"{tab}_batch_count")
        f["batch_size"] = gr.Slider(1, 8, value=d["batch_size"], step=1, label=label("batch_size"),
                                    elem_id=f"{tab}_batch_size")


def cfg_slider(ui: GenerationUI, d: dict[str, Any]) -> None:
    ui.fields["cfg_scale"] = gr.Slider(1.0, 30.0, value=d["cfg_scale"], step=0.5, label=label("cfg_scale"),
                                       elem_id=f"{ui.tab}_cfg_scale")


def seed_rows(ui: GenerationUI, d: dict[str, Any]) -> None:
    """Seed with its random/reuse buttons and the Extra box; the variation seed rows it shows; Clip skip, Tiling."""
    f, p, tab = ui.fields, ui.parts, ui.tab
    with gr.Row(elem_id=f"{tab}_seed_row"):
        _seed_field(ui, "seed", "Seed", d)
        f["seed_extra"] = gr.Checkbox(label="Extra", value=d["seed_extra"], elem_id=f"{tab}_subseed_show",
                                      scale=1, min_width=80)
    with gr.Column(visible=False, elem_id=f"{tab}_seed_extras") as p["seed_extras"]:
        with gr.Row():
            _seed_field(ui, "subseed", "Variation seed", d)
            f["subseed_strength"] = gr.Slider(0.0, 1.0, value=d["subseed_strength"], step=0.01,
                                              label=label("subseed_strength"), elem_id=f"{tab}_subseed_strength",
                                              scale=4)
        with gr.Row():
            for side, word in (("w", "width"), ("h", "height")):
                name = f"seed_resize_from_{side}"
                f[name] = gr.Slider(0, 2048, value=d[name], step=8, label=f"Resize seed from {word}",
                                    elem_id=f"{tab}_{name}")
    with gr.Row(elem_id=f"{tab}_extra_options"):
        f["clip_skip"] = gr.Slider(1, 12, value=d["clip_skip"], step=1, label=label("clip_skip"),
                                   elem_id=f"{tab}_clip_skip")
        f["tiling"] = gr.Checkbox(label=label("tiling"), value=d["tiling"], elem_id=f"{tab}_tiling")


def refiner_accordion(ui: GenerationUI, d: dict[str, Any], checkpoints: list[str]) -> None:
    """A1111's Refiner: another checkpoint takes over once "Switch at" of the sampling is done."""
    f, tab = ui.fields, ui.tab
    with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner"):
        f["refiner_enable"] = gr.Checkbox(label="Enable", value=d["refiner_enable"], elem_id=f"{tab}_refiner_enable")
        with gr.Row():
            f["refiner_checkpoint"] = gr.Dropdown(label="Checkpoint", choices=checkpoints,
                                                  value=d["refiner_checkpoint"], allow_custom_value=True,
                                                  elem_id=f"{tab}_checkpoint")
            f["refiner_switch_at"] = gr.Slider(0.01, 1.0, value=d["refiner_switch_at"], step=0.01,
                                               label=label("refiner_switch_at"), elem_id=f"{tab}_switch_at")


def _seed_field(ui: GenerationUI, name: str, label: str, d: dict[str, Any]) -> None:
    """A seed number box ("seed" or "subseed") and its random (-1) and reuse (last generation's) buttons."""
    tab = ui.tab
    ui.fields[name] = gr.Number(label=label, value=d[name], precision=0, elem_id=f"{tab}_{name}", scale=4)
    ui.parts[f"random_{name}"] = tool_button(RANDOM, f"{tab}_random_{name}")
    ui.parts[f"reuse_{name}"] = tool_button(REUSE, f"{tab}_reuse_{name}")


def output_column(ui: GenerationUI, below_gallery: Callable[[], None] | None = None) -> None:
    """Progress, live preview and gallery (then ``below_gallery``'s rows), infotext, log, and the job's states."""
    p, tab = ui.parts, ui.tab
    with gr.Column(scale=1, elem_id=f"{tab}_results"):
        p["progress"] = gr.HTML("", elem_id=f"{tab}_progress")
        p["preview"] = gr.Image(label="Preview", type="pil", interactive=False, visible=False, show_label=False,
                                elem_id=f"{tab}_preview", height=256)
        p["gallery"] = gr.Gallery(label="Output", show_label=False, columns=4, height=560, format="png",
                                  object_fit="contain", preview=True, interactive=False, elem_id=f"{tab}_gallery")
        if below_gallery is not None:
            below_gallery()
        p["infotext"] = gr.HTML("", elem_id=f"html_info_{tab}", elem_classes=["infotext"])
        p["log"] = gr.HTML("", elem_id=f"html_log_{tab}")
        p["job_id"] = gr.State(None)
        p["results"] = gr.State(None)


def wire_shared(ui: GenerationUI, app: App, counter: TokenCounter) -> None:
    """The events both tabs have: interrupt, skip, token counters, the prompt tools, seeds, swap, gallery select.
    Events that only redraw a line take the raw values (``preprocess=False``): a slider's number box sends each
    keystroke ("6" on the way to "64"), and gradio's bounds check would reject it."""
    f, p, h = ui.fields, ui.parts, ui.handlers
    for button, fn in ((p["interrupt"], h.interrupt), (p["skip"], h.skip)):
        button.click(fn, inputs=[p["job_id"]], outputs=None, queue=False, show_progress="hidden",
                     api_visibility="private")
    for box, html, positive in ((f["prompt"], p["token_counter"], True),
                                (f["negative_prompt"], p["neg_token_counter"], False)):
        box.change(lambda text, steps, pos=positive: counter.html(text, steps, pos), inputs=[box, f["steps"]],
                   outputs=[html], trigger_mode="always_last", concurrency_limit=None, show_progress="hidden",
                   api_visibility="private", preprocess=False)
    _wire_prompt_tools(ui, app)
    for name in ("seed", "subseed"):
        p[f"random_{name}"].click(lambda: -1, outputs=[f[name]], **QUIET)
    for name in ("seed", "subseed"):
        p[f"reuse_{name}"].click(lambda r, key=f"{name}s": reuse_seed(r, key), inputs=[p["results"]],
                                 outputs=[f[name]], **QUIET)
    f["seed_extra"].change(lambda on: gr.update(visible=bool(on)), inputs=[f["seed_extra"]],
                           outputs=[p["seed_extras"]], **QUIET)
    p["swap"].click(lambda w, h_: (h_, w), inputs=[f["width"], f["height"]], outputs=[f["width"], f["height"]],
                    **QUIET)

    def on_select(results: dict[str, Any] | None, evt: gr.SelectData) -> tuple[str, Any]:
        return select_image(results, evt.index if isinstance(evt.index, int) else 0)

    p["gallery"].select(on_select, inputs=[p["results"]], outputs=[p["infotext"], p["results"]], **QUIET)


def _wire_prompt_tools(ui: GenerationUI, app: App) -> None:
    """Read parameters (from the prompt box or the last generation), clear the prompts, refresh the styles."""
    f, p, h = ui.fields, ui.parts, ui.handlers
    names = ui.paste_fields

    def paste(text: str, results: dict[str, Any] | None) -> list[Any]:
        values, message = h.read_parameters(text, results)
        return [values.get(name, gr.skip()) for name in names] + [message]

    p["paste"].click(paste, inputs=[f["prompt"], p["results"]], outputs=[*(f[name] for name in names), p["log"]],
                     **QUIET)
    p["clear"].click(lambda: ("", ""), outputs=[f["prompt"], f["negative_prompt"]], **QUIET)
    p["styles_refresh"].click(lambda: gr.update(choices=style_names(app)), outputs=[f["styles"]], **QUIET)
    styles_editor.wire(app, p["styles_editor"], f["prompt"], f["negative_prompt"], f["styles"])


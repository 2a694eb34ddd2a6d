"""The img2img tab, laid out as A1111's: prompts and buttons on top; the mode sub-tabs (img2img, Sketch, Inpaint,
Inpaint sketch, Inpaint upload, Batch) and the parameters left; gallery and infotext right."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.app import App
from modules.batch import PNG_INFO_FIELDS
from modules.generation.image_prep import MASKED_CONTENT, RESIZE_MODES
from modules.params import label
from webui.ui import generation_rows as rows
from webui.ui import interrogate, result_buttons
from webui.ui.common import TokenCounter, toast, tool_button
from webui.ui.generation_rows import FAST, GenerationUI
from webui.ui.img2img_handlers import (
    BATCH_SOURCES,
    FIELDS,
    INPAINT_AREAS,
    MASK_MODES,
    PASTE_FIELDS,
    SCALE_TABS,
    Img2ImgHandlers,
    default_values,
)
from webui.ui.img2img_inputs import (
    IMAGE_FIELDS,
    INPAINT_MODES,
    MODE_TAB_IDS,
    MODES,
    UnreadableImage,
    mode_index,
    remember_size,
    scale_html,
    size_for_mode,
)
from webui.ui.txt2img import Txt2ImgUI, checkpoint_titles
from webui.ui.txt2img_handlers import request_user

TAB = "img2img"
SKETCH_COLORS: list[str | tuple[str, float]] = ["#000000", "#ffffff", "#e03131", "#f08c00", "#ffd43b", "#2f9e44",
                                                 "#1971c2", "#9c36b5"]
IMAGE_HEIGHT = 420
PRIVATE = {"api_visibility": "private"}
# the image fields each mode reads (the others stay in the browser when it generates)
MODE_INPUTS = (("init_img",), ("sketch",), ("init_img_with_mask",), ("inpaint_color_sketch",),
               ("init_img_inpaint", "init_mask_inpaint"), ("batch_files",))
_MODE_ELEM_IDS = ("img2img_img2img_tab", "img2img_img2img_sketch_tab", "img2img_inpaint_tab",
                  "img2img_inpaint_sketch_tab", "img2img_inpaint_upload_tab", "img2img_batch_tab")


def tolerant(component: Any) -> Any:
    """Make an undecodable upload reach the handler as :class:`UnreadableImage` (a message in the tab) instead of
    a gradio error toast. Done on the instance: subclassing a gradio component makes gradio write a ``.pyi`` file
    next to this module at import time."""
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except Exception as exc:  # noqa: BLE001 - any decoding failure becomes a message for the user
            return UnreadableImage(type(exc).__name__)

    component.preprocess = preprocess
    return component


def _image(label: str, elem_id: str) -> gr.Image:
    return tolerant(gr.Image(label=label, elem_id=elem_id, type="pil", image_mode="RGBA", format="png",
                             sources=["upload", "clipboard"], height=IMAGE_HEIGHT))


@dataclass
class Img2ImgUI(GenerationUI, tab=TAB, field_names=FIELDS, paste_fields=PASTE_FIELDS):
    """The tab's components (form fields by name, in :data:`FIELDS` order) and its handlers."""

    handlers: Img2ImgHandlers


def _editor(label: str, elem_id: str, brush: gr.Brush) -> gr.ImageEditor:
    return tolerant(gr.ImageEditor(label=label, elem_id=elem_id, type="pil", image_mode="RGBA", format="png",
                                   sources=("upload", "clipboard"), brush=brush, layers=False, height=IMAGE_HEIGHT,
                                   transforms=("crop",)))


def _mode_tabs(ui: Img2ImgUI, d: dict[str, Any]) -> None:
    f, p = ui.fields, ui.parts
    f["mode"] = gr.State(d["mode"])
    tabs: list[gr.Tab] = []
    with gr.Tabs(elem_id="mode_img2img", selected=MODE_TAB_IDS[0]) as p["mode_tabs"]:
        with gr.Tab(MODES[0], id=MODE_TAB_IDS[0], elem_id=_MODE_ELEM_IDS[0]) as tab:
            f["init_img"] = _image("Image for img2img", "img2img_image")
        tabs.append(tab)
        with gr.Tab(MODES[1], id=MODE_TAB_IDS[1], elem_id=_MODE_ELEM_IDS[1]) as tab:
            f["sketch"] = _editor("Image for img2img", "img2img_sketch",
                                  gr.Brush(colors=SKETCH_COLORS, default_color="#000000", color_mode="defaults"))
        tabs.append(tab)
        with gr.Tab(MODES[2], id=MODE_TAB_IDS[2], elem_id=_MODE_ELEM_IDS[2]) as tab:
            f["init_img_with_mask"] = _editor("Image for inpainting with mask", "img2maskimg",
                                              gr.Brush(colors=["#ffffff"], default_color="#ffffff",
                                                       color_mode="fixed"))
        tabs.append(tab)
        with gr.Tab(MODES[3], id=MODE_TAB_IDS[3], elem_id=_MODE_ELEM_IDS[3]) as tab:
            f["inpaint_color_sketch"] = _editor("Color sketch inpainting", "inpaint_sketch",
                                                gr.Brush(colors=SKETCH_COLORS, default_color="#e03131",
                                                         color_mode="defaults"))
        tabs.append(tab)
        with gr.Tab(MODES[4], id=MODE_TAB_IDS[4], elem_id=_MODE_ELEM_IDS[4]) as tab:
            f["init_img_inpaint"] = _image("Image for img2img", "img_inpaint_base")
            f["init_mask_inpaint"] = _image("Mask", "img_inpaint_mask")
        tabs.append(tab)
        with gr.Tab(MODES[5], id=MODE_TAB_IDS[5], elem_id=_MODE_ELEM_IDS[5]) as tab:
            _batch_tab(ui, d)
        tabs.append(tab)
    p["mode_tab_items"] = tabs


def _batch_tab(ui: Img2ImgUI, d: dict[str, Any]) -> None:
    f, p = ui.fields, ui.parts
    f["batch_source"] = gr.State(d["batch_source"])
    with gr.Tabs(elem_id="img2img_batch_source") as p["batch_source_tabs"]:
        with gr.Tab(BATCH_SOURCES[0], id="batch_upload", elem_id="img2img_batch_upload_tab") as p["batch_upload_tab"]:
            f["batch_files"] = gr.Files(label="Files", file_types=["image"], elem_id="img2img_batch_upload")
            gr.HTML('<p class="sd-info">Each file is processed on its own; the results are written to the img2img '
                    'output folder.</p>')
        with gr.Tab(BATCH_SOURCES[1], id="batch_from_dir", elem_id="img2img_batch_from_dir_tab") as p["batch_dir_tab"]:
            gr.HTML('<p class="sd-info">Process images in a directory on the same machine where the server is '
                    'running.<br>Use an empty output directory to save pictures to the img2img output folder.'
                    '<br>Add an inpaint batch mask directory to enable inpaint batch processing (masks are matched '
                    'to images by file name).</p>')
            f["batch_input_dir"] = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
            f["batch_output_dir"] = gr.Textbox(label="Output directory", elem_id="img2img_batch_output_dir")
            f["batch_inpaint_mask_dir"] = gr.Textbox(
                label="Inpaint batch mask directory (required for inpaint batch processing only)",
                elem_id="img2img_batch_inpaint_mask_dir")
    with gr.Accordion("PNG info", open=False, elem_id="img2img_batch_png_info"):
        f["batch_use_png_info"] = gr.Checkbox(label="Append png info to prompts", value=d["batch_use_png_info"],
                                              elem_id="img2img_batch_use_png_info")
        f["batch_png_info_props"] = gr.CheckboxGroup(list(PNG_INFO_FIELDS), value=d["batch_png_info_props"],
                                                     label="Parameters to take from png info",
                                                     info="Prompts from png info will be appended to prompts set "
                                                          "in ui.", elem_id="img2img_batch_png_info_props")


def _parameters(ui: Img2ImgUI, d: dict[str, Any], checkpoints: list[str]) -> None:
    f, p = ui.fields, ui.parts
    f["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=d["resize_mode"], label=label("resize_mode"),
                                elem_id="img2img_resize_mode")
    rows.sampler_rows(ui, d)
    f["scale_tab"] = gr.State(d["scale_tab"])
    with gr.Row(elem_id="img2img_dimensions_row"):
        with gr.Column(scale=4, min_width=240):
            with gr.Tabs(elem_id="img2img_tabs_resize") as p["scale_tabs"]:
                with gr.Tab(SCALE_TABS[0], id="resize_to", elem_id="img2img_tab_resize_to") as p["resize_to_tab"]:
                    with gr.Row():
                        rows.size_column(ui, d)
                        p["detect_size"] = tool_button("\U0001f4d0", "img2img_detect_image_size_btn",
                                                       "Auto detect size from img2img")
                with gr.Tab(SCALE_TABS[1], id="resize_by", elem_id="img2img_tab_resize_by") as p["resize_by_tab"]:
                    f["scale_by"] = gr.Slider(0.05, 4.0, value=d["scale_by"], step=0.05, label="Scale",
                                              elem_id="img2img_scale")
                    p["scale_html"] = gr.HTML(scale_html(None, d["scale_by"]),
                                              elem_id="img2img_scale_resolution_preview")
        rows.batch_column(ui, d, min_width=140)
    with gr.Row(elem_id="img2img_cfg_row"):
        rows.cfg_slider(ui, d)
        f["image_cfg_scale"] = gr.Slider(0.0, 3.0, value=d["image_cfg_scale"], step=0.05,
                                         label="Image CFG Scale (instruct-pix2pix models only)",
                                         elem_id="img2img_image_cfg_scale")
    with gr.Row():
        f["denoising_strength"] = gr.Slider(0.0, 1.0, value=d["denoising_strength"], step=0.01,
                                            label=label("denoising_strength"), elem_id="img2img_denoising_strength")
        f["initial_noise_multiplier"] = gr.Slider(0.5, 1.5, value=d["initial_noise_multiplier"], step=0.01,
                                                  label=label("initial_noise_multiplier"),
                                                  elem_id="img2img_initial_noise_multiplier")
    rows.seed_rows(ui, d)
    rows.refiner_accordion(ui, d, checkpoints)
    with gr.Group(visible=False, elem_id="inpaint_controls") as p["inpaint_controls"]:
        with gr.Row():
            f["mask_blur"] = gr.Slider(0, 64, value=d["mask_blur"], step=1, label="Mask blur",
                                       elem_id="img2img_mask_blur")
            f["mask_alpha"] = gr.Slider(0, 100, value=d["mask_alpha"], step=1, label="Mask transparency",
                                        visible=False, elem_id="img2img_mask_alpha")
        f["inpainting_mask_invert"] = gr.Radio(list(MASK_MODES), value=d["inpainting_mask_invert"],
                                               label=label("inpainting_mask_invert"), elem_id="img2img_mask_mode")
        f["inpainting_fill"] = gr.Radio(list(MASKED_CONTENT), value=d["inpainting_fill"],
                                        label=label("inpainting_fill"),
                                        elem_id="img2img_inpainting_fill")
        with gr.Row():
            f["inpaint_full_res"] = gr.Radio(list(INPAINT_AREAS), value=d["inpaint_full_res"],
                                             label=label("inpaint_full_res"),
                                             elem_id="img2img_inpaint_full_res")
            f["inpaint_full_res_padding"] = gr.Slider(0, 256, value=d["inpaint_full_res_padding"], step=4,
                                                      label=label("inpaint_full_res_padding"),
                                                      elem_id="img2img_inpaint_full_res_padding")


def build_img2img_tab(app: App, counter: TokenCounter) -> Img2ImgUI:
    """Create the tab's components inside the current ``gr.Tab`` and wire its events."""
    ui = Img2ImgUI(Img2ImgHandlers(app))
    d = default_values(app)
    rows.tab_page(ui, app, lambda: _settings(ui, d, checkpoint_titles(app)),
                  below_gallery=lambda: result_buttons.build_result_row(ui, app))
    _wire_generate(ui)
    result_buttons.wire_result_row(ui, app)
    rows.wire_shared(ui, app, counter)
    _wire_tabs(ui)
    interrogate.wire(app, ui.fields, ui.parts, request_user)
    return ui


def _settings(ui: Img2ImgUI, d: dict[str, Any], checkpoints: list[str]) -> None:
    """The left column: the mode sub-tabs, then the parameters."""
    _mode_tabs(ui, d)
    _parameters(ui, d, checkpoints)
    ui.add_scripts(ui.handlers.app)


def _wire_generate(ui: Img2ImgUI) -> None:
    """Generate runs in two steps so that only the current mode's images travel: the click bumps that mode's
    counter, and the counter's change event sends the form with that mode's images only (an ImageEditor with
    content takes seconds to export, and the other modes' images are not needed)."""
    f, p, h = ui.fields, ui.parts, ui.handlers
    counters = [gr.State(0) for _ in MODES]

    def bump(mode: Any, *values: int) -> list[Any]:
        index = mode_index(mode)
        return [v + 1 if i == index else gr.skip() for i, v in enumerate(values)]

    start = dict(fn=bump, inputs=[f["mode"], *counters], outputs=counters, show_progress="hidden",
                 concurrency_limit=None, **PRIVATE)  # queued: a state's change event follows only queued updates
    p["generate"].click(**start)
    f["prompt"].submit(**start)
    images = {name for names in MODE_INPUTS for name in names}
    common = [name for name in FIELDS if name not in images] + ui.script_fields
    for counter, own in zip(counters, MODE_INPUTS, strict=True):
        names = common + list(own)

        def run(request: gr.Request, *args: Any, names: list[str] = names) -> Any:
            yield from h.generate_values(dict(zip(names, args, strict=True)), request_user(request))

        counter.change(run, inputs=[f[name] for name in names], outputs=ui.outputs(), show_progress="hidden",
                       concurrency_limit=None, concurrency_id="img2img_generate", api_visibility="private")


def _wire_tabs(ui: Img2ImgUI) -> None:
    """Sub-tab selection: the mode, the inpaint controls' visibility, the "Resize by" line, the batch source."""
    f, p = ui.fields, ui.parts
    p["resize_to_tab"].select(lambda: SCALE_TABS[0], outputs=[f["scale_tab"]], **PRIVATE, **FAST)
    p["resize_by_tab"].select(lambda: SCALE_TABS[1], outputs=[f["scale_tab"]], **PRIVATE, **FAST)
    p["batch_upload_tab"].select(lambda: BATCH_SOURCES[0], outputs=[f["batch_source"]], **PRIVATE, **FAST)
    p["batch_dir_tab"].select(lambda: BATCH_SOURCES[1], outputs=[f["batch_source"]], **PRIVATE, **FAST)

    p["sizes"] = gr.State({})  # image field -> [w, h] of its image, for the "Resize by" line
    common = dict(trigger_mode="always_last", **PRIVATE, **FAST)

    def show(sizes: dict[str, Any], mode: Any, scale: Any) -> str:
        return scale_html(size_for_mode(sizes, mode), scale)

    for key in IMAGE_FIELDS:
        def remember(value: Any, sizes: dict[str, Any], mode: Any, scale: Any, key: str = key) -> tuple[Any, str]:
            sizes = remember_size(sizes, key, value)
            return sizes, show(sizes, mode, scale)

        def forget(sizes: dict[str, Any], mode: Any, scale: Any, key: str = key) -> tuple[Any, str]:
            return remember(None, sizes, mode, scale, key)

        state = [p["sizes"], f["mode"], f["scale_by"]]
        outputs = [p["sizes"], p["scale_html"]]
        if isinstance(f[key], gr.ImageEditor):  # an editor's change fires at every stroke: only on upload/clear
            f[key].upload(remember, inputs=[f[key], *state], outputs=outputs, **common)
            f[key].clear(forget, inputs=state, outputs=outputs, **common)
        else:
            f[key].change(remember, inputs=[f[key], *state], outputs=outputs, **common)
    # raw values: the Scale box sends "0" on the way to "0.5" (see generation_rows.wire_shared)
    preview = dict(fn=show, inputs=[p["sizes"], f["mode"], f["scale_by"]], outputs=[p["scale_html"]],
                   preprocess=False, **common)
    f["scale_by"].change(**preview)
    p["resize_by_tab"].select(**preview)
    p["detect_size"].click(size_from_image, inputs=[p["sizes"], f["mode"]], outputs=[f["width"], f["height"]],
                           **PRIVATE, **FAST)
    for i, tab in enumerate(p["mode_tab_items"]):
        tab.select(lambda i=i: mode_updates(i), outputs=[f["mode"], p["inpaint_controls"], f["mask_alpha"]],
                   **PRIVATE, **FAST).then(**preview)


def size_from_image(sizes: dict[str, Any], mode: Any) -> tuple[Any, Any]:
    """📐: width and height from the current mode's image (to a multiple of 8, within the sliders), as A1111's
    "Auto detect size from img2img"; without an image nothing changes and a toast says so."""
    size = size_for_mode(sizes, mode)
    if size is None:
        toast("Put an image in first", "Size from image")
        return gr.skip(), gr.skip()
    return tuple(min(2048, max(64, int(round(v / 8)) * 8)) for v in size)  # type: ignore[return-value]


def mode_updates(index: int) -> tuple[str, Any, Any]:
    """(mode, inpaint controls, mask transparency) for the selected mode sub-tab (A1111's visibility rules)."""
    return MODES[index], gr.update(visible=index in INPAINT_MODES), gr.update(visible=index == 3)


def connect_send_to(t2i: Txt2ImgUI, i2i: Img2ImgUI, main_tabs: gr.Tabs) -> None:
    """Wire the 🖼️ / 🎨️ buttons under the txt2img and img2img galleries (see :mod:`webui.ui.send_to`); their 📐 is
    wired with the Extras tab (:func:`webui.ui.send_to.connect_extras_send`)."""
    from webui.ui.send_to import connect_gallery_sends

    connect_gallery_sends(t2i, i2i, main_tabs)

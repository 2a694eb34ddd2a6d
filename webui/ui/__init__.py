"""The Gradio UI: A1111's quicksettings bar and tabs (txt2img, img2img, Extras, PNG Info, Checkpoint Merger, Train,
the extensions' tabs, Settings, Extensions)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.app import App
from webui.ui.common import CSS, TokenCounter, style_tag
from webui.ui.extensions_tab import build_extension_tabs, build_extensions_tab
from webui.ui.extras import build_extras_tab
from webui.ui.img2img import build_img2img_tab, connect_send_to
from webui.ui.merger import build_merger_tab
from webui.ui.page_script import PAGE_CSS, PAGE_JS, page_style_tag
from webui.ui.pnginfo import build_pnginfo_tab
from webui.ui.quicksettings import build_quicksettings, checkpoint_choices, checkpoint_titles
from webui.ui.send_to import connect_extras_send, connect_pnginfo_send
from webui.ui.settings_tab import build_settings_tab
from webui.ui.train import build_train_tab, connect_train_send
from webui.ui.txt2img import build_txt2img_tab, style_names
from webui.ui.txt2img_handlers import model_form_defaults

__all__ = ["CSS", "build_ui"]
MODEL_DEFAULT_FIELDS = ("width", "height", "steps", "sampler_name", "scheduler", "cfg_scale")


def connect_model_defaults(app: App, checkpoint: gr.Dropdown, forms: list[dict[str, Any]]) -> None:
    """Choosing a checkpoint that carries generation defaults (the demo model's 128x128) puts them in the forms."""
    outputs = [form[name] for form in forms for name in MODEL_DEFAULT_FIELDS]

    def apply(title: str | None) -> list[Any]:
        found = model_form_defaults(app, title or None)
        return [gr.update(value=found[name]) if name in found else gr.skip()
                for _form in forms for name in MODEL_DEFAULT_FIELDS]

    checkpoint.input(apply, inputs=[checkpoint], outputs=outputs, show_progress="hidden", api_visibility="private")


def build_ui(app: App) -> gr.Blocks:
    """The whole page for ``app``. Page CSS is also on ``blocks.webui_css`` for ``mount_gradio_app(css=...)``."""
    counter = TokenCounter()
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        # the page's CSS, and its script (keys, tooltips, icon fallbacks), run once when the page is built
        gr.HTML(style_tag() + page_style_tag(), elem_id="webui_style", padding=False, container=False,
                js_on_load=PAGE_JS)
        quick = build_quicksettings(app)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = build_txt2img_tab(app, counter)
            # A1111's order: txt2img, img2img, Extras, PNG Info, Checkpoint Merger, Train, then Settings.
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = build_img2img_tab(app, counter)
                connect_send_to(txt2img, img2img, tabs)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = build_extras_tab(app)
                connect_extras_send(extras, img2img, tabs)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                pnginfo = build_pnginfo_tab(app, txt2img, tabs, quick.checkpoint)
                connect_pnginfo_send(pnginfo, img2img, tabs)
            with gr.Tab("Checkpoint Merger", id="modelmerger", elem_id="tab_modelmerger"):
                build_merger_tab(app, quick.checkpoint)
            with gr.Tab("Train", id="train", elem_id="tab_train"):
                train = build_train_tab(app)
                connect_train_send(train, txt2img, tabs)
            build_extension_tabs(app)  # the loaded extensions' own tabs
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings = build_settings_tab(app)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                build_extensions_tab(app, demo)

        connect_model_defaults(app, quick.checkpoint, [txt2img.fields, img2img.fields])

        def on_load() -> list[Any]:
            """Fresh values for a new page: settings, checkpoint list, styles, the settings-derived defaults."""
            counter.warm_up()
            current = app.selected_checkpoint()
            titles = checkpoint_titles(app)
            if current is not None and current not in titles:
                titles = [current, *titles]
            return [gr.update(choices=checkpoint_choices(app, titles), value=current),
                    gr.update(choices=style_names(app)),
                    app.settings["CLIP_stop_at_last_layers"], gr.update(choices=style_names(app)),
                    app.settings["CLIP_stop_at_last_layers"], *settings.handlers.component_values()]

        demo.load(on_load, outputs=[quick.checkpoint, txt2img.fields["styles"], txt2img.fields["clip_skip"],
                                    img2img.fields["styles"], img2img.fields["clip_skip"], *settings.outputs()],
                  show_progress="hidden", api_visibility="private")
    demo.webui_css = CSS + PAGE_CSS  # type: ignore[attr-defined]
    demo.webui_parts = {"quicksettings": quick, "txt2img": txt2img, "img2img": img2img,  # type: ignore[attr-defined]
                        "pnginfo": pnginfo, "train": train, "settings": settings}
    return demo

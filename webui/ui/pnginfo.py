"""The PNG Info tab: drop an image from any tool, see how it was made, send it to txt2img.

The upload is a file component so the bytes arrive untouched (an image component would re-encode them and lose
the metadata). "Send to img2img"/"Send to inpaint" are not wired here: the img2img tab can take the file read last
and its infotext from ``parts["path"]`` and ``parts["infotext"]``.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules import infotext
from modules.app import App
from modules.errors import WebUIError
from modules.metadata import ImageMetadata, read_metadata
from modules.param_io import read_infotext
from webui.ui.common import error_html, user_message, warning_html
from webui.ui.quicksettings import select_checkpoint
from webui.ui.txt2img import Txt2ImgUI
from webui.ui.txt2img_handlers import PASTE_FIELDS, Txt2ImgHandlers

MAX_FILE_BYTES = 50 * 1024 * 1024
SHOWN_ITEM_CHARS = 20_000
PREVIEW_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF"})
PREVIEW_PIXELS = 8192 * 8192
CSS = """
.sd-pnginfo-table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
.sd-pnginfo-table th, .sd-pnginfo-table td { border-bottom: 1px solid rgba(127,127,127,0.25); padding: 0.25em 0.5em;
    text-align: left; vertical-align: top; }
.sd-pnginfo-table th { white-space: nowrap; font-weight: 600; width: 1%; }
.sd-pnginfo-table td { white-space: pre-wrap; word-break: break-word; }
.sd-pnginfo-tool { font-size: 0.95em; padding: 0.2em 0; }
"""


def _row(key: str, value: str) -> str:
    return f"<tr><th>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>"


def parameters_html(md: ImageMetadata) -> str:
    """The generation parameters as written (prompt, negative prompt, then each ``Key: value``), escaped."""
    if not md.infotext:
        return ""
    rows = [_row("Prompt", str(md.parameters.get("Prompt", "")))]
    if md.parameters.get("Negative prompt"):
        rows.append(_row("Negative prompt", str(md.parameters["Negative prompt"])))
    last = md.infotext.strip().rpartition("\n")[2]
    pairs = infotext.RE_PARAM.findall(last) if len(infotext.RE_PARAM.findall(last)) >= 3 else []
    for key, value in pairs:
        rows.append(_row(key.strip(), infotext.unquote(value.strip())))
    return f'<table class="sd-pnginfo-table">{"".join(rows)}</table>'


def items_html(items: dict[str, str]) -> str:
    """Every raw text item, the one the parameters were read from included (an A1111 image's ``parameters``, to
    copy as written), each cut for display at :data:`SHOWN_ITEM_CHARS` characters."""
    if not items:
        return ""
    rows = []
    for key, value in items.items():
        shown = value if len(value) <= SHOWN_ITEM_CHARS else \
            f"{value[:SHOWN_ITEM_CHARS]}\u2026 ({len(value) - SHOWN_ITEM_CHARS} more characters)"
        rows.append(_row(key, shown))
    return f'<table class="sd-pnginfo-table">{"".join(rows)}</table>'


def tool_html(md: ImageMetadata) -> str:
    size = f", {md.width}x{md.height}" if md.width and md.height else ""
    who = html.escape(md.tool) if md.tool else "no generation parameters found"
    fmt = html.escape(md.format or "")
    return f'<div class="sd-pnginfo-tool"><b>Written by:</b> {who} <span class="sd-info">({fmt}{size})</span></div>'


@dataclass
class PngInfoView:
    """What the tab shows for one file, in the order of the read event's outputs."""

    preview: Any
    tool: str
    parameters: str
    items: str
    log: str
    infotext: str


class PngInfoHandlers:
    def __init__(self, app: App, txt2img: Txt2ImgHandlers | None = None) -> None:
        self.app = app
        self.txt2img = txt2img or Txt2ImgHandlers(app)

    def read_file(self, path: str | None) -> PngInfoView:
        """Read an uploaded file: the table, the raw items, the writing tool; a message for bad files."""
        if not path:
            return PngInfoView(None, "", "", "", "", "")
        try:
            size = os.path.getsize(path)
            if size > MAX_FILE_BYTES:
                return PngInfoView(None, "", "", "", error_html(f"File too large: {size} bytes"), "")
            with open(path, "rb") as f:
                data = f.read()
            md = read_metadata(data)
        except WebUIError as exc:
            return PngInfoView(None, "", "", "", error_html(user_message(exc)), "")
        except OSError as exc:
            return PngInfoView(None, "", "", "", error_html(f"Cannot read the file: {exc.strerror or exc}"), "")
        notes = [*md.errors, *md.warnings]
        previewable = md.format in PREVIEW_FORMATS and md.width and md.height \
            and md.width * md.height <= PREVIEW_PIXELS and not md.errors
        return PngInfoView(path if previewable else None, tool_html(md), parameters_html(md),
                           items_html(md.items), warning_html(notes),
                           md.infotext)

    def send_to_txt2img(self, text: str) -> tuple[dict[str, Any], str, Any]:
        """(txt2img field values, message HTML, checkpoint dropdown update) for the infotext read last.

        The checkpoint is switched when the infotext names one (by hash or name) that is installed."""
        if not (text or "").strip():
            return {}, warning_html(["Drop an image with generation parameters on PNG Info first"]), gr.skip()
        values, message = self.txt2img.read_parameters(text, None, model_note=False)
        checkpoint, note = self._checkpoint(text)
        return values, note + message, checkpoint

    def _checkpoint(self, text: str) -> tuple[Any, str]:
        values, _ = read_infotext(text, "txt2img")
        wanted = values.get("checkpoint")
        name = values.get("_model_name")
        if not wanted:
            return gr.skip(), ""
        by_hash = self.app.registry.find(str(wanted))
        by_name = self.app.registry.find(str(name)) if name else None
        # the name decides between copies with the same hash; a different file under that name loses to the hash
        same = by_name is not None and (by_hash is None or by_name.shorthash == by_hash.shorthash)
        info = by_name if same else by_hash or by_name
        if info is None:
            return gr.skip(), warning_html([f"Checkpoint {name or wanted} is not installed; kept the current one"])
        if info.title == self.app.settings["sd_model_checkpoint"]:
            return gr.skip(), ""
        status = select_checkpoint(self.app, info.title)
        if "sd-error" in status:
            return gr.skip(), status
        return gr.update(value=info.title), ""


@dataclass
class PngInfoUI:
    handlers: PngInfoHandlers
    parts: dict[str, Any]


def build_pnginfo_tab(app: App, txt2img: Txt2ImgUI, tabs: gr.Tabs, checkpoint: gr.Dropdown) -> PngInfoUI:
    """The tab's components (inside the current ``gr.Tab``) and its events; the send button fills ``txt2img``."""
    h = PngInfoHandlers(app, txt2img.handlers)
    p: dict[str, Any] = {}
    gr.HTML(f"<style>{CSS}</style>", padding=False, container=False)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            p["file"] = gr.File(label="Source image", file_types=["image"], type="filepath",
                                elem_id="pnginfo_image")
            p["preview"] = gr.Image(label="Image", type="filepath", interactive=False, height=320,
                                    elem_id="pnginfo_preview", visible=True)
        with gr.Column(scale=1):
            p["tool"] = gr.HTML("", elem_id="pnginfo_tool")
            p["parameters"] = gr.HTML("", elem_id="pnginfo_parameters")
            p["raw"] = gr.Textbox("", label="Parameters as text (A1111's infotext, to copy)", lines=4, max_lines=12,
                                  interactive=False, buttons=["copy"], elem_id="pnginfo_raw")
            with gr.Row():
                p["send_txt2img"] = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")
                p["send_img2img"] = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img")
                p["send_inpaint"] = gr.Button("Send to inpaint", elem_id="pnginfo_send_inpaint")
            p["log"] = gr.HTML("", elem_id="pnginfo_log")
            with gr.Accordion("Raw text items", open=True, elem_id="pnginfo_items_accordion"):
                p["items"] = gr.HTML("", elem_id="pnginfo_items")
            p["infotext"] = gr.State("")
            p["path"] = gr.State(None)  # the file read last: what "Send to img2img/inpaint" carries
    quiet = {"show_progress": "hidden", "api_visibility": "private"}

    def on_file(path: str | None) -> list[Any]:
        """Show what the file holds, and empty the drop area so the next image can be dropped at once."""
        view = h.read_file(path)
        return [view.preview, view.tool, view.parameters, view.items, view.log, view.infotext, None,
                path if view.preview else None, view.infotext]

    p["file"].upload(on_file, inputs=[p["file"]], outputs=[p["preview"], p["tool"], p["parameters"], p["items"],
                                                            p["log"], p["infotext"], p["file"], p["path"],
                                                            p["raw"]], **quiet)
    fields = [txt2img.fields[name] for name in PASTE_FIELDS]

    def on_send(text: str) -> list[Any]:
        values, message, model = h.send_to_txt2img(text)
        if not values:  # nothing sent: the message stays on this tab
            return [gr.skip()] * len(PASTE_FIELDS) + [gr.skip(), message, model, gr.skip()]
        return [values.get(name, gr.skip()) for name in PASTE_FIELDS] + [message, "", model,
                                                                         gr.Tabs(selected="txt2img")]

    p["send_txt2img"].click(on_send, inputs=[p["infotext"]],
                            outputs=[*fields, txt2img.parts["log"], p["log"], checkpoint, tabs], **quiet)
    return PngInfoUI(h, p)

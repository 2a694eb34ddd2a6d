"""PNG Info's "Send to img2img" and "Send to inpaint": the dropped image and its parameters into the img2img tab."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from webui.ui.common import warning_html
from webui.ui.img2img import Img2ImgUI, mode_updates
from webui.ui.img2img_handlers import PASTE_FIELDS, SCALE_TABS
from webui.ui.img2img_inputs import MODE_TAB_IDS, gallery_image, remember_size

PRIVATE = {"show_progress": "hidden", "api_visibility": "private"}


def load_sent_image(path: str | None) -> Image.Image | None:
    """The image PNG Info read last, decoded; None when there is none or it cannot be decoded."""
    if not path:
        return None
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def _send_outputs(i2i: Img2ImgUI, main_tabs: gr.Tabs, target: str, fields: tuple[str, ...], log: Any) -> list[Any]:
    f, p = i2i.fields, i2i.parts
    return [main_tabs, p["mode_tabs"], f["mode"], p["inpaint_controls"], f["mask_alpha"], f[target],
            p["scale_tabs"], f["scale_tab"], *[f[name] for name in fields], p["sizes"], log]


def _sent(image: Image.Image, mode: int, target: str, sizes: dict[str, Any], values: list[Any]) -> list[Any]:
    """The updates that put ``image`` into the img2img (mode 0) or inpaint (mode 2) input and switch to it."""
    value = image if mode == 0 else {"background": image, "layers": [], "composite": image}
    return [gr.Tabs(selected="img2img"), gr.Tabs(selected=MODE_TAB_IDS[mode]), *mode_updates(mode), value,
            gr.Tabs(selected="resize_to"), SCALE_TABS[0], *values, remember_size(sizes, target, image)]


def connect_extras_send(extras: Any, i2i: Img2ImgUI, main_tabs: gr.Tabs) -> None:
    """Extras' "Send to img2img" / "Send to inpaint": the selected result image (its parameters stay behind, as
    in A1111)."""
    ep = extras.parts
    for button, mode, target in (("send_img2img", 0, "init_img"), ("send_inpaint", 2, "init_img_with_mask")):
        outputs = _send_outputs(i2i, main_tabs, target, (), ep["message"])

        def send(gallery: Any, selected: int, sizes: dict[str, Any], mode: int = mode, target: str = target,
                 n: int = len(outputs)) -> list[Any]:
            image = gallery_image(gallery, {"selected": selected})
            if image is None:
                return [gr.skip()] * (n - 1) + [warning_html(["Run Extras first, then send a result"])]
            return [*_sent(image, mode, target, sizes, []), ""]

        ep[button].click(send, inputs=[ep["gallery"], ep["selected"], i2i.parts["sizes"]], outputs=outputs,
                         **PRIVATE)


def connect_pnginfo_send(pnginfo: Any, i2i: Img2ImgUI, main_tabs: gr.Tabs) -> None:
    """Wire PNG Info's two send buttons to the img2img tab (modes 0 and 2), as A1111's paste fields do."""
    pp = pnginfo.parts
    for button, mode, target in (("send_img2img", 0, "init_img"), ("send_inpaint", 2, "init_img_with_mask")):
        outputs = _send_outputs(i2i, main_tabs, target, PASTE_FIELDS, pp["log"])

        def send(path: str | None, text: str, sizes: dict[str, Any], mode: int = mode, target: str = target,
                 n: int = len(outputs)) -> list[Any]:
            image = load_sent_image(path)
            if image is None:
                return [gr.skip()] * (n - 1) + [warning_html(["Drop an image on PNG Info first"])]
            values, message = i2i.handlers.read_parameters(text) if (text or "").strip() else ({}, "")
            return [*_sent(image, mode, target, sizes, [values.get(name, gr.skip()) for name in PASTE_FIELDS]),
                    message]

        pp[button].click(send, inputs=[pp["path"], pp["infotext"], i2i.parts["sizes"]], outputs=outputs, **PRIVATE)

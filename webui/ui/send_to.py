"""The send-to buttons: PNG Info's and Extras' "Send to img2img" / "Send to inpaint", and the 🖼️ / 🎨️ / 📐 under the
txt2img and img2img galleries (A1111's output panel, see :mod:`webui.ui.result_buttons`): the selected image (and,
from txt2img, its parameters) into the img2img tab's img2img or inpaint input, or into Extras' single image."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from webui.ui.common import warning_html
from webui.ui.img2img import Img2ImgUI, mode_updates
from webui.ui.img2img_handlers import PASTE_FIELDS, SCALE_TABS, SEND_FIELDS, send_to
from webui.ui.img2img_inputs import MODE_TAB_IDS, gallery_image, remember_size
from webui.ui.result_buttons import option, send_results

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


SEND_MODES = (("send_to_img2img", 0, "init_img"), ("send_to_inpaint", 2, "init_img_with_mask"))
NO_IMAGE = "Generate an image first, then send it"


def send_from_txt2img(gallery: Any, results: dict[str, Any] | None, closed: bool, sizes: dict[str, Any],
                      values: dict[str, Any], mode: int, target: str) -> tuple[list[Any], str]:
    """🖼️ / 🎨️ under txt2img's gallery: (the img2img tab's updates, message HTML); the selected image (the first
    real one, not the grid, when none is) with the txt2img form's parameters (:data:`SEND_FIELDS`)."""
    image, fields, message = send_to(gallery, send_results(results, closed), values)
    if image is None:
        return [], message
    return _sent(image, mode, target, sizes, [fields.get(name, gr.skip()) for name in SEND_FIELDS]), ""


def send_from_img2img(app: Any, gallery: Any, results: dict[str, Any] | None, closed: bool, sizes: dict[str, Any],
                      mode: int, target: str) -> tuple[list[Any], str]:
    """🖼️ / 🎨️ under img2img's gallery: the selected image back into an input of the tab (its parameters are
    already in the form); to img2img with its size as width and height (A1111's ``send_size``)."""
    image = gallery_image(gallery, send_results(results, closed))
    if image is None:
        return [], warning_html([NO_IMAGE])
    size = (image.width, image.height) if mode == 0 and option(app, "send_size") else (gr.skip(), gr.skip())
    return _sent(image, mode, target, sizes, list(size)), ""


def connect_gallery_sends(t2i: Any, i2i: Img2ImgUI, main_tabs: gr.Tabs) -> None:
    """Wire 🖼️ / 🎨️ under the txt2img and img2img galleries; remember both tabs for their 📐, which is wired with
    the Extras tab (:func:`connect_extras_send`)."""
    p = i2i.parts
    sources = [t2i.fields[name] for name in SEND_FIELDS]
    p["send_sources"] = (t2i, i2i)
    for button, mode, target in SEND_MODES:
        outputs = _send_outputs(i2i, main_tabs, target, SEND_FIELDS, t2i.parts["log"])

        def from_txt2img(gallery: Any, results: Any, closed: bool, sizes: dict[str, Any], *values: Any,
                         mode: int = mode, target: str = target, n: int = len(outputs)) -> list[Any]:
            updates, message = send_from_txt2img(gallery, results, closed, sizes,
                                                 dict(zip(SEND_FIELDS, values, strict=True)), mode, target)
            return [*updates, message] if updates else [gr.skip()] * (n - 1) + [message]

        t2i.parts[button].click(from_txt2img, inputs=[t2i.parts["gallery"], t2i.parts["results"],
                                                      t2i.parts["gallery_closed"], p["sizes"], *sources],
                                outputs=outputs, **PRIVATE)
        outputs = _send_outputs(i2i, main_tabs, target, ("width", "height"), p["log"])

        def from_img2img(gallery: Any, results: Any, closed: bool, sizes: dict[str, Any], mode: int = mode,
                         target: str = target, n: int = len(outputs)) -> list[Any]:
            updates, message = send_from_img2img(i2i.handlers.app, gallery, results, closed, sizes, mode, target)
            return [*updates, message] if updates else [gr.skip()] * (n - 1) + [message]

        p[button].click(from_img2img, inputs=[p["gallery"], p["results"], p["gallery_closed"], p["sizes"]],
                        outputs=outputs, **PRIVATE)


def _enclosing_tabs(component: Any, elem_id: str) -> Any:
    """The ``gr.Tabs`` with ``elem_id`` around ``component`` (None when there is none)."""
    block = getattr(component, "parent", None)
    while block is not None and not (isinstance(block, gr.Tabs) and block.elem_id == elem_id):
        block = getattr(block, "parent", None)
    return block


def send_to_extras(gallery: Any, results: dict[str, Any] | None, closed: bool) -> tuple[Any, str]:
    """📐: (the selected image for Extras' single image input, or None; message HTML)."""
    image = gallery_image(gallery, send_results(results, closed))
    return (image, "") if image is not None else (None, warning_html([NO_IMAGE]))


def connect_gallery_extras_sends(sources: tuple[Any, ...], extras: Any, main_tabs: gr.Tabs) -> None:
    """📐 under each gallery of ``sources`` (the txt2img and img2img tabs): the selected image into Extras' single
    image input (its parameters stay behind, as in A1111), and the switch to that tab."""
    ef = extras.fields
    mode_tabs = extras.parts.get("mode_tabs") or _enclosing_tabs(ef["image"], "mode_extras")
    for ui in sources:
        up = ui.parts
        outputs = [main_tabs, *([mode_tabs] if mode_tabs is not None else []), ef["source"], ef["image"], up["log"]]

        def send(gallery: Any, results: Any, closed: bool, n: int = len(outputs),
                 has_mode_tabs: bool = mode_tabs is not None) -> list[Any]:
            image, message = send_to_extras(gallery, results, closed)
            if image is None:
                return [gr.skip()] * (n - 1) + [message]
            sub = [gr.Tabs(selected="single_image")] if has_mode_tabs else []
            return [gr.Tabs(selected="extras"), *sub, 0, image, ""]

        up["send_to_extras"].click(send, inputs=[up["gallery"], up["results"], up["gallery_closed"]], outputs=outputs,
                                   **PRIVATE)


def connect_extras_send(extras: Any, i2i: Img2ImgUI, main_tabs: gr.Tabs) -> None:
    """Extras' "Send to img2img" / "Send to inpaint": the selected result image (its parameters stay behind, as
    in A1111). Also the 📐 under the txt2img and img2img galleries, into Extras (once
    :func:`connect_gallery_sends` has run)."""
    if i2i.parts.get("send_sources"):
        connect_gallery_extras_sends(i2i.parts["send_sources"], extras, main_tabs)
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

"""Browser steps shared by the browser tests (one server and one browser for several tabs' checks): the styles
editor, the Extras tab."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image
from safetensors.torch import save_file

from tests.browser_support import css, tab, value_of, wait


def _rows(path):
    if not path.is_file():
        return []
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [(r["name"], r["prompt"], r["negative_prompt"]) for r in csv.DictReader(f)]


def check_styles_editor(drv, url: str, data_dir) -> None:
    """A style made in the editor is saved to styles.csv and written into the prompts by 📋."""
    from selenium.webdriver.common.keys import Keys

    drv.get(url)
    wait(drv, lambda d: d.find_elements("css selector", "#txt2img_prompt textarea"), 30, "the page")
    css(drv, "#txt2img_prompt textarea").send_keys("a cat")
    css(drv, "#txt2img_neg_prompt textarea").send_keys("blurry")
    css(drv, "#txt2img_styles_edit_button").click()
    wait(drv, lambda d: css(d, "#txt2img_edit_style_prompt textarea").is_displayed(), 10, "the editor")
    name = css(drv, "#txt2img_styles_edit_select input")
    name.send_keys("Oil", Keys.ENTER)
    wait(drv, lambda d: css(d, "#txt2img_edit_style_save").is_displayed(), 10, "the Save button")
    css(drv, "#txt2img_edit_style_prompt textarea").send_keys("{prompt}, oil painting")
    css(drv, "#txt2img_edit_style_neg_prompt textarea").send_keys("photo")
    css(drv, "#txt2img_edit_style_save").click()
    styles_file = data_dir / "styles.csv"
    wait(drv, lambda d: _rows(styles_file) == [("Oil", "{prompt}, oil painting", "photo")], 10, "styles.csv")
    wait(drv, lambda d: css(d, "#txt2img_edit_style_delete").is_displayed(), 10, "the Delete button")

    menu = css(drv, "#txt2img_styles input")
    menu.click()
    menu.send_keys("Oil", Keys.ENTER)
    wait(drv, lambda d: "Oil" in css(d, "#txt2img_styles").text, 10, "the style selected in the menu")
    css(drv, "#txt2img_style_apply_dialog").click()
    wait(drv, lambda d: value_of(d, "#txt2img_prompt textarea") == "a cat, oil painting", 10, "the styled prompt")
    assert value_of(drv, "#txt2img_neg_prompt textarea") == "blurry, photo"


def add_upscaler_model(data_dir) -> None:
    """A tiny x2 Real-ESRGAN Compact model in models/RealESRGAN (before the server starts)."""
    from modules.upscalers.spandrel_loader import spandrel

    spandrel()
    from spandrel.architectures.Compact import Compact

    folder = data_dir / "models" / "RealESRGAN"
    folder.mkdir(parents=True)
    save_file(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict(),
              str(folder / "tiny2x.safetensors"))


def check_extras(drv, url: str, data_dir, tmp_path) -> None:
    """The Extras tab upscales an upload with the model, shows the postprocessing text and saves the result; "Send to
    img2img" puts the result into img2img."""
    source = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(source)
    drv.get(url)
    wait(drv, lambda d: d.find_elements("css selector", "#tab_extras-button, button[role=tab]"), 30, "the page")
    tab(drv, "Extras")
    wait(drv, lambda d: css(d, "#extras_image input[type=file]"), 10, "the Extras tab")
    css(drv, "#extras_image input[type=file]").send_keys(str(source))
    wait(drv, lambda d: d.find_elements("css selector", "#extras_image img"), 20, "the uploaded image")
    upscaler = css(drv, "#extras_upscaler_1 input")
    upscaler.click()
    options = drv.find_elements("css selector", "ul[role=listbox] li")
    next(o for o in options if o.text.strip() == "tiny2x").click()
    css(drv, "#extras_generate").click()
    wait(drv, lambda d: "Postprocess upscaler: tiny2x" in css(d, "#html_info_extras").text, 60, "the result")
    assert "Postprocess upscale by: 4.0" in css(drv, "#html_info_extras").text
    saved = list((data_dir / "outputs" / "extras-images").glob("*.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        assert image.size == (192, 160) and "Postprocess upscaler: tiny2x" in image.info["postprocessing"]
    # Send to img2img: the result becomes img2img's init image
    css(drv, "#extras_send_to_img2img").click()
    wait(drv, lambda d: css(d, "#img2img_image").is_displayed(), 10, "the switch to img2img")
    wait(drv, lambda d: [img for img in d.find_elements("css selector", "#img2img_image img")
                         if img.get_attribute("src")], 10, "the sent image")
    sent = [img for img in drv.find_elements("css selector", "#img2img_image img") if img.get_attribute("src")]
    assert drv.execute_script("return arguments[0].naturalWidth", sent[0]) == 192

"""The result buttons under the txt2img and img2img galleries in a real headless Chromium (one server): 💾 offers
the saved image for download, 📐 sends it to Extras, 🖼️ to img2img, and img2img's own row saves a zip and sends."""

from __future__ import annotations

import io
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.browser_support import css, set_number, tab, wait
from tests.conftest import log_problems

pytest_plugins = ["tests.browser_support"]  # the driver and webui_server fixtures
pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOT = Path("/tmp/ui-result-buttons.png")


@pytest.fixture
def window_size() -> tuple[int, int]:
    return (1400, 1800)


def _images(drv, selector: str) -> list:
    return [img for img in drv.find_elements("css selector", f"{selector} img") if img.get_attribute("src")]


def _src(drv, selector: str) -> str | None:
    found = _images(drv, selector)
    return found[0].get_attribute("src") if found else None


def _download_links(drv, tab_name: str) -> list[str]:
    links = drv.find_elements("css selector", f"#download_files_{tab_name} a")
    return [a.get_attribute("href") for a in links if a.get_attribute("href")]


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def test_result_buttons_in_browser(webui_server, driver):
    url, data_dir = webui_server(models=[("sd1", "tiny")])
    drv = driver
    drv.get(url)
    wait(drv, lambda d: d.find_elements("css selector", "#txt2img_prompt textarea"), 30, "the page")
    wait(drv, lambda d: "Loaded" in css(d, "#sd_model_status").text, 30, "the model to load")
    for elem_id in ("txt2img_open_folder", "save_txt2img", "save_zip_txt2img", "txt2img_send_to_img2img",
                    "txt2img_send_to_inpaint", "txt2img_send_to_extras"):
        assert css(drv, f"#image_buttons_txt2img #{elem_id}").is_displayed(), elem_id

    # nothing generated yet: a plain message
    css(drv, "#save_txt2img").click()
    wait(drv, lambda d: "Generate an image first" in css(d, "#html_log_txt2img").text, 10, "the message")

    # txt2img: generate, 💾: the image is in log/images with its infotext, and offered for download
    css(drv, "#txt2img_prompt textarea").send_keys("a lighthouse")
    for elem_id, value in (("txt2img_steps", 2), ("txt2img_width", 64), ("txt2img_height", 64)):
        set_number(drv, elem_id, value)
    css(drv, "#txt2img_generate").click()
    wait(drv, lambda d: _images(d, "#txt2img_gallery"), 30, "a txt2img result")
    wait(drv, lambda d: "Steps: 2" in css(d, "#html_info_txt2img").text, 10, "the txt2img infotext")
    css(drv, "#save_txt2img").click()
    wait(drv, lambda d: _download_links(d, "txt2img"), 20, "the download link")
    assert "Saved: 00000-" in css(drv, "#html_log_txt2img").text
    drv.execute_script("arguments[0].scrollIntoView()", css(drv, "#txt2img_gallery"))
    drv.save_screenshot(str(SCREENSHOT))
    saved = list((data_dir / "log" / "images").glob("*.png"))
    assert len(saved) == 1 and (data_dir / "log" / "images" / "log.csv").is_file()
    with Image.open(io.BytesIO(_fetch(_download_links(drv, "txt2img")[0]))) as image:
        assert image.size == (64, 64) and "Steps: 2" in image.info["parameters"]
        assert image.info["parameters"] == Image.open(saved[0]).info["parameters"]

    # 📐: the image arrives in Extras' single image input
    css(drv, "#txt2img_send_to_extras").click()
    wait(drv, lambda d: css(d, "#extras_image").is_displayed(), 10, "the switch to Extras")
    wait(drv, lambda d: _images(d, "#extras_image"), 10, "the image in Extras")
    assert drv.execute_script("return arguments[0].naturalWidth", _images(drv, "#extras_image")[0]) == 64
    extras_src = _src(drv, "#extras_image")

    # 🖼️ to img2img, generate there; its own row: 🗃️ zip download, 📐 to Extras
    tab(drv, "txt2img")
    wait(drv, lambda d: css(d, "#txt2img_send_to_img2img").is_displayed(), 10, "the txt2img tab")
    css(drv, "#txt2img_send_to_img2img").click()
    wait(drv, lambda d: css(d, "#img2img_image").is_displayed() and _images(d, "#img2img_image"), 10,
         "the image in img2img")
    css(drv, "#img2img_generate").click()
    wait(drv, lambda d: _images(d, "#img2img_gallery"), 30, "an img2img result")
    wait(drv, lambda d: "Denoising strength" in css(d, "#html_info_img2img").text, 10, "the img2img infotext")
    assert not log_problems(css(drv, "#html_log_img2img").text)
    for elem_id in ("img2img_open_folder", "save_img2img", "save_zip_img2img", "img2img_send_to_img2img",
                    "img2img_send_to_inpaint", "img2img_send_to_extras"):
        assert css(drv, f"#image_buttons_img2img #{elem_id}").is_displayed(), elem_id
    css(drv, "#save_zip_img2img").click()
    wait(drv, lambda d: any(h.endswith(".zip") for h in _download_links(d, "img2img")), 20, "the zip download")
    link = next(h for h in _download_links(drv, "img2img") if h.endswith(".zip"))
    with zipfile.ZipFile(io.BytesIO(_fetch(link))) as archive:
        names = archive.namelist()
        assert len(names) == 1
        with archive.open(names[0]) as f, Image.open(f) as image:
            assert "Denoising strength" in image.info["parameters"]
    css(drv, "#img2img_send_to_extras").click()
    wait(drv, lambda d: css(d, "#extras_image").is_displayed(), 10, "the switch to Extras")
    wait(drv, lambda d: _src(d, "#extras_image") not in (None, extras_src), 10, "the img2img image in Extras")
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

"""The img2img tab in a real headless Chromium: upload and generate; txt2img's "Send to img2img"."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from tests.browser_support import css, set_number, tab, wait
from tests.conftest import TESTDATA, log_problems

pytest_plugins = ["tests.browser_support"]  # the driver and webui_server fixtures
pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOT = Path("/tmp/ui-img2img.png")
PHOTO = TESTDATA / "photos" / "chelsea.png"


@pytest.fixture
def window_size() -> tuple[int, int]:
    return (1400, 1800)


@pytest.fixture
def server(webui_server):
    if not PHOTO.exists():
        pytest.skip(f"needs the test photos ({PHOTO})")
    return webui_server(models=[("sd1", "tiny")])


def _sub_tab(drv, label: str) -> None:
    """Click a visible sub-tab (the last visible tab button with that label)."""
    [b for b in drv.find_elements("css selector", "button[role=tab]") if b.text.strip() == label
     and b.is_displayed()][-1].click()


def _images(drv, selector: str) -> list:
    return [img for img in drv.find_elements("css selector", f"{selector} img") if img.get_attribute("src")]


def test_img2img_upload_generate_and_send_from_txt2img(server, driver):  # server torn down last
    from selenium.webdriver.common.action_chains import ActionChains

    url, data_dir = server
    drv = driver
    drv.get(url)
    wait(drv, lambda d: d.find_elements("css selector", "#txt2img_prompt textarea"), 30, "the page")
    wait(drv, lambda d: "Loaded" in css(d, "#sd_model_status").text, 30, "the model to load")
    tabs = [b.text.strip() for b in drv.find_elements("css selector", "button[role=tab]")]
    assert tabs[:2] == ["txt2img", "img2img"]

    # img2img: upload a photo, 64x64, 2 steps, Generate
    tab(drv, "img2img")
    wait(drv, lambda d: css(d, "#img2img_prompt textarea").is_displayed(), 10, "the img2img tab")
    css(drv, "#img2img_image input[type=file]").send_keys(str(PHOTO))
    wait(drv, lambda d: _images(d, "#img2img_image"), 20, "the uploaded image")
    css(drv, "#img2img_prompt textarea").send_keys("a cat on a sofa")
    for elem_id, value in (("img2img_steps", 2), ("img2img_width", 64), ("img2img_height", 64)):
        set_number(drv, elem_id, value)
    css(drv, "#img2img_generate").click()
    wait(drv, lambda d: _images(d, "#img2img_gallery"), 30, "a result in the img2img gallery")
    wait(drv, lambda d: "Denoising strength" in css(d, "#html_info_img2img").text, 10, "the infotext")
    info = css(drv, "#html_info_img2img").text
    assert "Steps: 2" in info and "Size: 64x64" in info and "a cat on a sofa" in info
    assert not log_problems(css(drv, "#html_log_img2img").text)
    drv.execute_script("window.scrollTo(0, 0)")
    drv.save_screenshot(str(SCREENSHOT))

    # txt2img: generate, then "Send to img2img": the image and the parameters arrive, the tab switches
    tab(drv, "txt2img")
    prompt = wait(drv, lambda d: d.find_element("css selector", "#txt2img_prompt textarea"), 10, "txt2img")
    prompt.send_keys("a lighthouse")
    for elem_id, value in (("txt2img_steps", 3), ("txt2img_width", 96), ("txt2img_height", 64)):
        set_number(drv, elem_id, value)
    css(drv, "#txt2img_generate").click()
    wait(drv, lambda d: _images(d, "#txt2img_gallery"), 30, "a txt2img result")
    wait(drv, lambda d: "Steps: 3" in css(d, "#html_info_txt2img").text, 10, "the txt2img infotext")
    before = _images(drv, "#img2img_image")[0].get_attribute("src") if _images(drv, "#img2img_image") else None
    css(drv, "#txt2img_send_to_img2img").click()
    wait(drv, lambda d: css(d, "#img2img_prompt textarea").is_displayed(), 10, "the switch to img2img")
    wait(drv, lambda d: css(d, "#img2img_image").is_displayed(), 10, "the img2img sub-tab")
    wait(drv, lambda d: _images(d, "#img2img_image")
         and _images(d, "#img2img_image")[0].get_attribute("src") != before, 10, "the sent image")
    wait(drv, lambda d: css(d, "#img2img_prompt textarea").get_attribute("value") == "a lighthouse", 10,
         "the sent prompt")
    assert css(drv, "#img2img_steps input[type=number]").get_attribute("value") == "3"
    assert css(drv, "#img2img_width input[type=number]").get_attribute("value") == "96"
    sent = _images(drv, "#img2img_image")[0]
    assert drv.execute_script("return arguments[0].naturalWidth", sent) == 96

    # Inpaint (last: an editor holding an image slows headless Chromium down): upload into the editor, paint a
    # stroke (the mask), Generate: the inpaint fields are in the infotext
    small_photo = data_dir / "small.png"
    with Image.open(PHOTO) as im:
        im.convert("RGB").resize((96, 64)).save(small_photo)
    _sub_tab(drv, "Inpaint")
    wait(drv, lambda d: d.find_elements("css selector", "#img2maskimg input[type=file]"), 10, "the inpaint editor")
    css(drv, "#img2maskimg input[type=file]").send_keys(str(small_photo))
    wait(drv, lambda d: d.find_elements("css selector", "#img2maskimg canvas"), 10, "the editor canvas")
    time.sleep(1)
    canvas = drv.find_elements("css selector", "#img2maskimg canvas")[-1]
    ActionChains(drv).move_to_element_with_offset(canvas, -30, -15).click_and_hold().move_by_offset(30, 10) \
        .move_by_offset(20, 15).release().perform()
    css(drv, "#img2img_generate").click()
    wait(drv, lambda d: "Mask blur: 4" in css(d, "#html_info_img2img").text
         or log_problems(css(d, "#html_log_img2img").text), 30, "the inpainting result")
    assert not log_problems(css(drv, "#html_log_img2img").text)
    assert "Mask blur: 4" in css(drv, "#html_info_img2img").text
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

"""The img2img tab in a real headless Chromium: upload and generate; txt2img's "Send to img2img"."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import TESTDATA, install_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = Path("/tmp/ui-img2img.png")
PHOTO = TESTDATA / "photos" / "chelsea.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ping(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/internal/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("the server did not answer /internal/ping")


@pytest.fixture
def server(data_dir, model_store):
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1"}
    log_path = data_dir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "webui", "--data-dir", str(data_dir), "--port", str(port)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ping(url, proc)
        yield url, data_dir
    except BaseException:
        print(log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def driver(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}); "
                    "apt-get install chromium chromium-driver")
    if not PHOTO.exists():
        pytest.skip(f"needs the test photos ({PHOTO})")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _wait(drv, predicate, timeout: float = 20, what: str = "condition"):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d):
        try:
            return predicate(d)
        except StaleElementReferenceException:
            return False

    return WebDriverWait(drv, timeout, poll_frequency=0.1).until(check, message=f"timed out waiting for {what}")


def _css(drv, selector: str):
    return drv.find_element("css selector", selector)


def _set_number(drv, elem_id: str, value: int) -> None:
    from selenium.webdriver.common.keys import Keys

    box = _css(drv, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)
    _wait(drv, lambda d: _css(d, f"#{elem_id} input[type=number]").get_attribute("value") == str(value),
          what=f"{elem_id} = {value}")


def _top_tab(drv, label: str) -> None:
    """Click a top-level tab (the first tab button with that label: sub-tabs come later in the page)."""
    next(b for b in drv.find_elements("css selector", "button[role=tab]") if b.text.strip() == label).click()


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
    _wait(drv, lambda d: d.find_elements("css selector", "#txt2img_prompt textarea"), 30, "the page")
    _wait(drv, lambda d: "Loaded" in _css(d, "#sd_model_status").text, 30, "the model to load")
    tabs = [b.text.strip() for b in drv.find_elements("css selector", "button[role=tab]")]
    assert tabs[:2] == ["txt2img", "img2img"]

    # img2img: upload a photo, 64x64, 2 steps, Generate
    _top_tab(drv, "img2img")
    _wait(drv, lambda d: _css(d, "#img2img_prompt textarea").is_displayed(), 10, "the img2img tab")
    _css(drv, "#img2img_image input[type=file]").send_keys(str(PHOTO))
    _wait(drv, lambda d: _images(d, "#img2img_image"), 20, "the uploaded image")
    _css(drv, "#img2img_prompt textarea").send_keys("a cat on a sofa")
    for elem_id, value in (("img2img_steps", 2), ("img2img_width", 64), ("img2img_height", 64)):
        _set_number(drv, elem_id, value)
    _css(drv, "#img2img_generate").click()
    _wait(drv, lambda d: _images(d, "#img2img_gallery"), 30, "a result in the img2img gallery")
    _wait(drv, lambda d: "Denoising strength" in _css(d, "#html_info_img2img").text, 10, "the infotext")
    info = _css(drv, "#html_info_img2img").text
    assert "Steps: 2" in info and "Size: 64x64" in info and "a cat on a sofa" in info
    assert not _css(drv, "#html_log_img2img").text.strip()
    drv.execute_script("window.scrollTo(0, 0)")
    drv.save_screenshot(str(SCREENSHOT))

    # txt2img: generate, then "Send to img2img": the image and the parameters arrive, the tab switches
    _top_tab(drv, "txt2img")
    prompt = _wait(drv, lambda d: d.find_element("css selector", "#txt2img_prompt textarea"), 10, "txt2img")
    prompt.send_keys("a lighthouse")
    for elem_id, value in (("txt2img_steps", 3), ("txt2img_width", 96), ("txt2img_height", 64)):
        _set_number(drv, elem_id, value)
    _css(drv, "#txt2img_generate").click()
    _wait(drv, lambda d: _images(d, "#txt2img_gallery"), 30, "a txt2img result")
    _wait(drv, lambda d: "Steps: 3" in _css(d, "#html_info_txt2img").text, 10, "the txt2img infotext")
    before = _images(drv, "#img2img_image")[0].get_attribute("src") if _images(drv, "#img2img_image") else None
    _css(drv, "#txt2img_send_to_img2img").click()
    _wait(drv, lambda d: _css(d, "#img2img_prompt textarea").is_displayed(), 10, "the switch to img2img")
    _wait(drv, lambda d: _css(d, "#img2img_image").is_displayed(), 10, "the img2img sub-tab")
    _wait(drv, lambda d: _images(d, "#img2img_image")
          and _images(d, "#img2img_image")[0].get_attribute("src") != before, 10, "the sent image")
    _wait(drv, lambda d: _css(d, "#img2img_prompt textarea").get_attribute("value") == "a lighthouse", 10,
          "the sent prompt")
    assert _css(drv, "#img2img_steps input[type=number]").get_attribute("value") == "3"
    assert _css(drv, "#img2img_width input[type=number]").get_attribute("value") == "96"
    sent = _images(drv, "#img2img_image")[0]
    assert drv.execute_script("return arguments[0].naturalWidth", sent) == 96

    # Inpaint (last: an editor holding an image slows headless Chromium down): upload into the editor, paint a
    # stroke (the mask), Generate: the inpaint fields are in the infotext
    small_photo = data_dir / "small.png"
    with Image.open(PHOTO) as im:
        im.convert("RGB").resize((96, 64)).save(small_photo)
    _sub_tab(drv, "Inpaint")
    _wait(drv, lambda d: d.find_elements("css selector", "#img2maskimg input[type=file]"), 10, "the inpaint editor")
    _css(drv, "#img2maskimg input[type=file]").send_keys(str(small_photo))
    _wait(drv, lambda d: d.find_elements("css selector", "#img2maskimg canvas"), 10, "the editor canvas")
    time.sleep(1)
    canvas = drv.find_elements("css selector", "#img2maskimg canvas")[-1]
    ActionChains(drv).move_to_element_with_offset(canvas, -30, -15).click_and_hold().move_by_offset(30, 10) \
        .move_by_offset(20, 15).release().perform()
    _css(drv, "#img2img_generate").click()
    _wait(drv, lambda d: "Mask blur: 4" in _css(d, "#html_info_img2img").text
          or _css(d, "#html_log_img2img").text.strip(), 30, "the inpainting result")
    assert not _css(drv, "#html_log_img2img").text.strip()
    assert "Masked content: original" in _css(drv, "#html_info_img2img").text
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

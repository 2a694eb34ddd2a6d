"""The UI in a real headless Chromium: generate on the txt2img tab, interrupt a long job, apply a setting."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import install_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = Path("/tmp/ui-txt2img.png")


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
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1400", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
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
    """Type into the number box of a slider or number component, then leave it (as a user does)."""
    from selenium.webdriver.common.keys import Keys

    box = _css(drv, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)
    _wait(drv, lambda d: _css(d, f"#{elem_id} input[type=number]").get_attribute("value") == str(value),
          what=f"{elem_id} = {value}")


def _gallery_count(drv) -> int:
    return len(drv.find_elements("css selector", "#txt2img_gallery img"))


def test_txt2img_and_settings_in_browser(server, driver):
    url, data_dir = server
    drv = driver
    drv.get(url)
    _wait(drv, lambda d: d.find_elements("css selector", "#txt2img_prompt textarea"), 30, "the txt2img tab")
    tabs = [b.text.strip() for b in drv.find_elements("css selector", "button[role=tab]")]
    assert tabs[0] == "txt2img" and "Settings" in tabs
    _wait(drv, lambda d: "Loaded" in _css(d, "#sd_model_status").text, 30, "the model to load")
    assert "tiny" in _css(drv, "#sd_model_checkpoint_dropdown input").get_attribute("value")

    prompt = _css(drv, "#txt2img_prompt textarea")
    prompt.click()
    prompt.send_keys("a lighthouse on a cliff, <b>bold</b>")
    _wait(drv, lambda d: _css(d, "#txt2img_token_counter").text.strip() not in ("", "0/75"), what="token counter")
    for elem_id, value in (("txt2img_steps", 2), ("txt2img_width", 64), ("txt2img_height", 64)):
        _set_number(drv, elem_id, value)

    _css(drv, "#txt2img_generate").click()
    _wait(drv, lambda d: _gallery_count(d) > 0, 30, "an image in the gallery")
    _wait(drv, lambda d: "Steps: 2" in _css(d, "#html_info_txt2img").text, 10, "the infotext")
    info = _css(drv, "#html_info_txt2img")
    assert "Size: 64x64" in info.text
    assert "<b>bold</b>" in info.text  # user text is escaped, not rendered
    assert not info.find_elements("css selector", "b")
    assert not _css(drv, "#html_log_txt2img").text.strip()
    drv.save_screenshot(str(SCREENSHOT))

    # a long job, interrupted from this page: fewer images come back, with a note
    _set_number(drv, "txt2img_batch_count", 100)
    _css(drv, "#txt2img_generate").click()
    _wait(drv, lambda d: "%" in _css(d, "#txt2img_progress").text, 20, "progress")
    time.sleep(0.5)
    _css(drv, "#txt2img_interrupt").click()
    _wait(drv, lambda d: "Interrupted" in _css(d, "#html_log_txt2img").text, 30, "the interrupt note")
    note = _css(drv, "#html_log_txt2img").text
    done = int(note.split("Interrupted:")[1].split(" of ")[0])
    assert 0 < done < 100, note

    # Settings: change Clip skip and apply; config.json holds it
    next(b for b in drv.find_elements("css selector", "button[role=tab]") if b.text.strip() == "Settings").click()
    _wait(drv, lambda d: _css(d, "#setting_CLIP_stop_at_last_layers").is_displayed(), 10, "the Settings tab")
    _set_number(drv, "setting_CLIP_stop_at_last_layers", 3)
    _css(drv, "#settings_submit").click()
    _wait(drv, lambda d: "settings changed" in _css(d, "#settings_result").text, 10, "the apply message")
    assert "CLIP_stop_at_last_layers" in _css(drv, "#settings_result").text
    config = json.loads((data_dir / "config.json").read_text())
    assert config["CLIP_stop_at_last_layers"] == 3

    # back on txt2img: paste an infotext into the prompt and press the read-parameters button
    next(b for b in drv.find_elements("css selector", "button[role=tab]") if b.text.strip() == "txt2img").click()
    prompt = _wait(drv, lambda d: d.find_element("css selector", "#txt2img_prompt textarea"), 10, "the prompt")
    prompt.clear()
    prompt.send_keys("a cat\nNegative prompt: blurry\nSteps: 7, Sampler: Euler, Schedule type: Karras, "
                     "CFG scale: 5.5, Seed: 1234, Size: 128x96, Clip skip: 2")
    _css(drv, "#paste").click()
    _wait(drv, lambda d: _css(d, "#txt2img_steps input[type=number]").get_attribute("value") == "7", 10,
          "the pasted steps")
    assert _css(drv, "#txt2img_prompt textarea").get_attribute("value") == "a cat"
    assert _css(drv, "#txt2img_neg_prompt textarea").get_attribute("value") == "blurry"
    assert _css(drv, "#txt2img_sampling input").get_attribute("value") == "Euler"
    assert _css(drv, "#txt2img_scheduler input").get_attribute("value") == "Karras"
    assert _css(drv, "#txt2img_width input[type=number]").get_attribute("value") == "128"
    assert _css(drv, "#txt2img_height input[type=number]").get_attribute("value") == "96"
    assert _css(drv, "#txt2img_seed input").get_attribute("value") == "1234"
    assert _css(drv, "#txt2img_clip_skip input[type=number]").get_attribute("value") == "2"
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

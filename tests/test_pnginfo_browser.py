"""PNG Info in a real headless Chromium: drop an image made with another checkpoint, read it, send it to txt2img."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from tests.conftest import install_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[1]


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
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER})")
    pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    install_model(data_dir, model_store("sd1", "safetensors"), "other")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1"}
    log_path = data_dir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "webui", "--data-dir", str(data_dir), "--port", str(port),
                                 "--ckpt", str(data_dir / "models" / "Stable-diffusion" / "tiny.safetensors")],
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
    from selenium import webdriver
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


def _tab(drv, name: str) -> None:
    next(b for b in drv.find_elements("css selector", "button[role=tab]") if b.text.strip() == name).click()


def _drop(drv, path: Path) -> None:
    _css(drv, "#pnginfo_image input[type=file]").send_keys(str(path))


def _value(drv, selector: str) -> str:
    return _css(drv, selector).get_attribute("value")


def test_drop_image_and_send_to_txt2img(server, driver, tmp_path):
    url, data_dir = server
    with httpx.Client(base_url=url, timeout=120) as client:
        r = client.post("/sdapi/v1/txt2img", json={
            "prompt": "a <b>lighthouse</b>, storm", "negative_prompt": "fog", "seed": 4242, "steps": 3,
            "width": 64, "height": 96, "sampler_name": "Euler", "scheduler": "Karras", "cfg_scale": 5.5,
            "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2, "denoising_strength": 0.4,
            "override_settings": {"sd_model_checkpoint": "other"}})
        assert r.status_code == 200, r.text
    image = tmp_path / "made-with-other.png"
    image.write_bytes(base64.b64decode(r.json()["images"][0]))
    not_image = tmp_path / "broken.png"
    not_image.write_bytes(b"this is not a picture")

    drv = driver
    drv.get(url)
    _wait(drv, lambda d: d.find_elements("css selector", "#txt2img_prompt textarea"), 30, "the page")
    tabs = [b.text.strip() for b in drv.find_elements("css selector", "button[role=tab]")]
    assert tabs.index("txt2img") < tabs.index("PNG Info") < tabs.index("Settings")
    _wait(drv, lambda d: "tiny" in _value(d, "#sd_model_checkpoint_dropdown input"), 30, "the tiny checkpoint")

    _tab(drv, "PNG Info")
    _wait(drv, lambda d: d.find_elements("css selector", "#pnginfo_image input[type=file]"), 10, "the drop area")
    _drop(drv, not_image)
    _wait(drv, lambda d: "not an image" in _css(d, "#pnginfo_log").text, 20, "the bad-file message")

    _drop(drv, image)
    _wait(drv, lambda d: "Seed" in _css(d, "#pnginfo_parameters").text, 20, "the parameters table")
    table = _css(drv, "#pnginfo_parameters")
    assert "4242" in table.text and "a <b>lighthouse</b>, storm" in table.text and not table.find_elements(
        "css selector", "td b")
    assert "sdwebui" in _css(drv, "#pnginfo_tool").text
    assert not _css(drv, "#pnginfo_log").text.strip()

    _css(drv, "#pnginfo_send_txt2img").click()
    _wait(drv, lambda d: _css(d, "#txt2img_prompt textarea").is_displayed(), 10, "the txt2img tab")
    _wait(drv, lambda d: _value(d, "#txt2img_seed input") == "4242", 10, "the sent seed")
    assert _value(drv, "#txt2img_prompt textarea") == "a <b>lighthouse</b>, storm"
    assert _value(drv, "#txt2img_neg_prompt textarea") == "fog"
    assert _value(drv, "#txt2img_steps input[type=number]") == "3"
    assert _value(drv, "#txt2img_width input[type=number]") == "64"
    assert _value(drv, "#txt2img_height input[type=number]") == "96"
    assert _value(drv, "#txt2img_cfg_scale input[type=number]") == "5.5"
    assert _value(drv, "#txt2img_sampling input") == "Euler"
    assert _value(drv, "#txt2img_scheduler input") == "Karras"
    _css(drv, "#txt2img_hr .label-wrap").click()  # the Hires. fix accordion is closed by default
    _wait(drv, lambda d: d.find_elements("css selector", "#txt2img_enable_hr input"), 10, "the hires fields")
    assert _css(drv, "#txt2img_enable_hr input").is_selected()
    assert _value(drv, "#txt2img_hr_scale input[type=number]") == "1.5"
    assert _value(drv, "#txt2img_denoising_strength input[type=number]") == "0.4"
    _wait(drv, lambda d: "other" in _value(d, "#sd_model_checkpoint_dropdown input"), 20, "the checkpoint switch")
    config = json.loads((data_dir / "config.json").read_text())
    assert config["sd_model_checkpoint"].startswith("other.safetensors")

    _tab(drv, "PNG Info")  # the same image and parameters into img2img, then into the Inpaint sub-tab
    _css(drv, "#pnginfo_send_img2img").click()
    _wait(drv, lambda d: _css(d, "#img2img_prompt textarea").is_displayed(), 10, "the img2img tab")
    _wait(drv, lambda d: _value(d, "#img2img_prompt textarea") == "a <b>lighthouse</b>, storm", 10, "the prompt")
    _wait(drv, lambda d: d.find_elements("css selector", "#img2img_image img"), 10, "the sent image")
    assert _value(drv, "#img2img_seed input") == "4242"
    _tab(drv, "PNG Info")
    _css(drv, "#pnginfo_send_inpaint").click()
    _wait(drv, lambda d: _css(d, "#img2maskimg").is_displayed(), 10, "the Inpaint sub-tab")
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

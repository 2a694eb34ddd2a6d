"""PNG Info in a real headless Chromium: drop an image made with another checkpoint, read it, send it to txt2img."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from tests.browser_support import css, tab, value_of, wait

pytest_plugins = ["tests.browser_support"]  # the driver and webui_server fixtures
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def server(webui_server, data_dir):
    return webui_server(models=[("sd1", "tiny"), ("sd1", "other")],
                        args=["--ckpt", data_dir / "models" / "Stable-diffusion" / "tiny.safetensors"])


def _drop(drv, path: Path) -> None:
    css(drv, "#pnginfo_image input[type=file]").send_keys(str(path))


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
    wait(drv, lambda d: d.find_elements("css selector", "#txt2img_prompt textarea"), 30, "the page")
    tabs = [b.text.strip() for b in drv.find_elements("css selector", "button[role=tab]")]
    assert tabs.index("txt2img") < tabs.index("PNG Info") < tabs.index("Settings")
    wait(drv, lambda d: "tiny" in value_of(d, "#sd_model_checkpoint_dropdown input"), 30, "the tiny checkpoint")

    tab(drv, "PNG Info")
    wait(drv, lambda d: d.find_elements("css selector", "#pnginfo_image input[type=file]"), 10, "the drop area")
    _drop(drv, not_image)
    wait(drv, lambda d: "not an image" in css(d, "#pnginfo_log").text, 20, "the bad-file message")

    _drop(drv, image)
    wait(drv, lambda d: "Seed" in css(d, "#pnginfo_parameters").text, 20, "the parameters table")
    table = css(drv, "#pnginfo_parameters")
    assert "4242" in table.text and "a <b>lighthouse</b>, storm" in table.text and not table.find_elements(
        "css selector", "td b")
    assert "sdwebui" in css(drv, "#pnginfo_tool").text
    raw = value_of(drv, "#pnginfo_raw textarea")  # the infotext as written, to copy
    assert raw.startswith("a <b>lighthouse</b>, storm\nNegative prompt: fog\n") and "Seed: 4242" in raw
    assert css(drv, "#pnginfo_raw").find_elements("css selector", "button")  # its copy button
    assert not css(drv, "#pnginfo_log").text.strip()

    css(drv, "#pnginfo_send_txt2img").click()
    wait(drv, lambda d: css(d, "#txt2img_prompt textarea").is_displayed(), 10, "the txt2img tab")
    wait(drv, lambda d: value_of(d, "#txt2img_seed input") == "4242", 10, "the sent seed")
    assert value_of(drv, "#txt2img_prompt textarea") == "a <b>lighthouse</b>, storm"
    assert value_of(drv, "#txt2img_neg_prompt textarea") == "fog"
    assert value_of(drv, "#txt2img_steps input[type=number]") == "3"
    assert value_of(drv, "#txt2img_width input[type=number]") == "64"
    assert value_of(drv, "#txt2img_height input[type=number]") == "96"
    assert value_of(drv, "#txt2img_cfg_scale input[type=number]") == "5.5"
    assert value_of(drv, "#txt2img_sampling input") == "Euler"
    assert value_of(drv, "#txt2img_scheduler input") == "Karras"
    css(drv, "#txt2img_hr .label-wrap").click()  # the Hires. fix accordion is closed by default
    wait(drv, lambda d: d.find_elements("css selector", "#txt2img_enable_hr input"), 10, "the hires fields")
    assert css(drv, "#txt2img_enable_hr input").is_selected()
    assert value_of(drv, "#txt2img_hr_scale input[type=number]") == "1.5"
    assert value_of(drv, "#txt2img_denoising_strength input[type=number]") == "0.4"
    wait(drv, lambda d: "other" in value_of(d, "#sd_model_checkpoint_dropdown input"), 20, "the checkpoint switch")
    config = json.loads((data_dir / "config.json").read_text())
    assert config["sd_model_checkpoint"].startswith("other.safetensors")

    tab(drv, "PNG Info")  # the same image and parameters into img2img, then into the Inpaint sub-tab
    css(drv, "#pnginfo_send_img2img").click()
    wait(drv, lambda d: css(d, "#img2img_prompt textarea").is_displayed(), 10, "the img2img tab")
    wait(drv, lambda d: value_of(d, "#img2img_prompt textarea") == "a <b>lighthouse</b>, storm", 10, "the prompt")
    wait(drv, lambda d: d.find_elements("css selector", "#img2img_image img"), 10, "the sent image")
    assert value_of(drv, "#img2img_seed input") == "4242"
    tab(drv, "PNG Info")
    css(drv, "#pnginfo_send_inpaint").click()
    wait(drv, lambda d: css(d, "#img2maskimg").is_displayed(), 10, "the Inpaint sub-tab")
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

"""The UI in a real headless Chromium: generate on the txt2img tab, interrupt a long job, apply a setting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.browser_support import css, set_number, tab, wait
from tests.conftest import log_problems

pytest_plugins = ["tests.browser_support"]  # the driver and webui_server fixtures
pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOT = Path("/tmp/ui-txt2img.png")


@pytest.fixture
def server(webui_server):
    return webui_server(models=[("sd1", "tiny")])


def _gallery_count(drv) -> int:
    return len(drv.find_elements("css selector", "#txt2img_gallery img"))


def test_txt2img_and_settings_in_browser(server, driver):
    url, data_dir = server
    drv = driver
    drv.get(url)
    wait(drv, lambda d: d.find_elements("css selector", "#txt2img_prompt textarea"), 30, "the txt2img tab")
    tabs = [b.text.strip() for b in drv.find_elements("css selector", "button[role=tab]")]
    assert tabs[0] == "txt2img" and "Settings" in tabs
    wait(drv, lambda d: "Loaded" in css(d, "#sd_model_status").text, 30, "the model to load")
    assert "tiny" in css(drv, "#sd_model_checkpoint_dropdown input").get_attribute("value")

    prompt = css(drv, "#txt2img_prompt textarea")
    prompt.click()
    prompt.send_keys("a lighthouse on a cliff, <b>bold</b>")
    wait(drv, lambda d: css(d, "#txt2img_token_counter").text.strip() not in ("", "0/75"), what="token counter")
    for elem_id, value in (("txt2img_steps", 2), ("txt2img_width", 64), ("txt2img_height", 64)):
        set_number(drv, elem_id, value)

    css(drv, "#txt2img_generate").click()
    wait(drv, lambda d: _gallery_count(d) > 0, 30, "an image in the gallery")
    wait(drv, lambda d: "Steps: 2" in css(d, "#html_info_txt2img").text, 10, "the infotext")
    info = css(drv, "#html_info_txt2img")
    assert "Size: 64x64" in info.text
    assert "<b>bold</b>" in info.text  # user text is escaped, not rendered
    assert not info.find_elements("css selector", "b")
    assert not log_problems(css(drv, "#html_log_txt2img").text)
    drv.save_screenshot(str(SCREENSHOT))

    # a long job, interrupted from this page: fewer images come back, with a note
    set_number(drv, "txt2img_batch_count", 100)
    css(drv, "#txt2img_generate").click()
    wait(drv, lambda d: "%" in css(d, "#txt2img_progress").text, 20, "progress")
    time.sleep(0.5)
    css(drv, "#txt2img_interrupt").click()
    wait(drv, lambda d: "Interrupted" in css(d, "#html_log_txt2img").text, 90, "the interrupt note")  # a loaded CI
    note = css(drv, "#html_log_txt2img").text
    done = int(note.split("Interrupted:")[1].split(" of ")[0])
    assert 0 < done < 100, note

    # Settings: change Clip skip and apply; config.json holds it
    tab(drv, "Settings")
    wait(drv, lambda d: css(d, "#setting_CLIP_stop_at_last_layers").is_displayed(), 10, "the Settings tab")
    set_number(drv, "setting_CLIP_stop_at_last_layers", 3)
    css(drv, "#settings_submit").click()
    wait(drv, lambda d: "settings changed" in css(d, "#settings_result").text, 10, "the apply message")
    assert "CLIP_stop_at_last_layers" in css(drv, "#settings_result").text
    config = json.loads((data_dir / "config.json").read_text())
    assert config["CLIP_stop_at_last_layers"] == 3

    # back on txt2img: paste an infotext into the prompt and press the read-parameters button
    tab(drv, "txt2img")
    prompt = wait(drv, lambda d: d.find_element("css selector", "#txt2img_prompt textarea"), 10, "the prompt")
    prompt.clear()
    prompt.send_keys("a cat\nNegative prompt: blurry\nSteps: 7, Sampler: Euler, Schedule type: Karras, "
                     "CFG scale: 5.5, Seed: 1234, Size: 128x96, Clip skip: 2")
    css(drv, "#paste").click()
    wait(drv, lambda d: css(d, "#txt2img_steps input[type=number]").get_attribute("value") == "7", 10,
         "the pasted steps")
    assert css(drv, "#txt2img_prompt textarea").get_attribute("value") == "a cat"
    assert css(drv, "#txt2img_neg_prompt textarea").get_attribute("value") == "blurry"
    assert css(drv, "#txt2img_sampling input").get_attribute("value") == "Euler"
    assert css(drv, "#txt2img_scheduler input").get_attribute("value") == "Karras"
    assert css(drv, "#txt2img_width input[type=number]").get_attribute("value") == "128"
    assert css(drv, "#txt2img_height input[type=number]").get_attribute("value") == "96"
    assert css(drv, "#txt2img_seed input").get_attribute("value") == "1234"
    assert css(drv, "#txt2img_clip_skip input[type=number]").get_attribute("value") == "2"
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

"""Feedback in a real headless Chromium: with no model Generate says so in a toast, a half-typed width is clamped
to the slider's range, a bad settings value is refused by name, and none of it leaves a traceback in the server
log."""

from __future__ import annotations

import pytest

from tests.browser_support import css, tab, wait

pytest_plugins = ["tests.browser_support"]  # the driver and webui_server fixtures
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _toasts(drv) -> str:
    return " ".join(t.text for t in drv.find_elements("css selector", ".toast-body"))


def _type_number(drv, elem_id: str, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = css(drv, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text)


def _close_toasts(drv) -> None:
    for button in drv.find_elements("css selector", ".toast-close"):
        try:
            button.click()
        except Exception:  # noqa: BLE001 - a toast that left on its own
            pass


def test_failures_show_where_the_user_looks(webui_server, driver):
    url, data_dir = webui_server()  # no model at all
    drv = driver
    drv.get(url)
    wait(drv, lambda d: d.find_elements("css selector", "#txt2img_prompt textarea"), 30, "the page")
    assert "No model: put a checkpoint" in css(drv, "#sd_model_status").text

    css(drv, "#txt2img_prompt textarea").send_keys("a red house")
    css(drv, "#txt2img_generate").click()
    wait(drv, lambda d: "no checkpoints found" in _toasts(d).lower(), 30, "the no-model toast")
    _close_toasts(drv)

    _type_number(drv, "txt2img_width", "5")  # half-typed "512", then Generate: clamped to the slider's range
    css(drv, "#txt2img_generate").click()
    wait(drv, lambda d: css(d, "#txt2img_width input[type=number]").get_attribute("value") == "64", 30,
         "the width clamped to its minimum")
    wait(drv, lambda d: "no checkpoints found" in _toasts(d).lower(), 30, "the job's answer (no model, again)")
    _close_toasts(drv)

    tab(drv, "Settings")
    wait(drv, lambda d: css(d, "#setting_queue_max_size").is_displayed(), 10, "the Settings tab")
    _type_number(drv, "setting_queue_max_size", "0")
    css(drv, "#settings_submit").click()
    wait(drv, lambda d: "Most jobs waiting in the queue: Value 0 is less than minimum value 1" in _toasts(d), 30,
         "the settings toast naming the setting")
    assert not (data_dir / "config.json").exists() or '"queue_max_size": 0' not in (
        data_dir / "config.json").read_text()
    log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]

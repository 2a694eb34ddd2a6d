"""The styles editor in a real headless Chromium: a new style saved to styles.csv, written into the prompts."""

from __future__ import annotations

import csv

import pytest

from tests.browser_support import css, value_of, wait

pytest_plugins = ["tests.browser_support"]  # the driver and webui_server fixtures
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _rows(path):
    if not path.is_file():
        return []
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [(r["name"], r["prompt"], r["negative_prompt"]) for r in csv.DictReader(f)]


def test_a_style_made_in_the_editor_is_saved_and_applied(webui_server, data_dir, driver):
    from selenium.webdriver.common.keys import Keys

    url, _ = webui_server()
    drv = driver
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
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

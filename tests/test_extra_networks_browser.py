"""The extra-networks panel in a real headless Chromium: open it, find a LoRA card, search, insert its tag, edit its
metadata; an embedding goes to the negative prompt when that box had the focus last."""

from __future__ import annotations

import json

import pytest

from tests.browser_steps import add_upscaler_model, check_extras, check_styles_editor
from tests.browser_support import css, tab, value_of, wait

pytest_plugins = ["tests.browser_support"]  # the driver and webui_server fixtures
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _networks(data_dir) -> None:
    """Two LoRA files (one in a sub-folder, with a preview and an alias) and one embedding, before the server starts."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.numpy import save_file

    sub = data_dir / "models" / "Lora" / "sub"
    sub.mkdir(parents=True)
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(sub / "mylora.safetensors"),
              metadata={"ss_output_name": "shiny_style"})
    Image.new("RGB", (300, 200), "red").save(sub / "mylora.preview.png")
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(sub.parent / "other.safetensors"))
    embeddings = data_dir / "embeddings"
    embeddings.mkdir()
    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}, "step": 5}, embeddings / "badhands.pt")


def _card(drv, tab: str, page: str, name: str):
    return css(drv, f'#{tab}_{page}_cards .card[data-name="{name}"]')


def _open_page(drv, tab: str, title: str) -> None:
    buttons = drv.find_elements("css selector", f"#{tab}_extra_tabs button[role=tab]")
    next(b for b in buttons if b.text.strip() == title).click()


def test_lora_card_search_insert_and_edit(webui_server, data_dir, driver, tmp_path):
    """Then, on the same server (one start for three tabs' checks): the styles editor and the Extras tab."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    _networks(data_dir)
    add_upscaler_model(data_dir)
    url, _ = webui_server()
    drv = driver
    drv.get(url)
    wait(drv, lambda d: d.find_elements("css selector", "#txt2img_prompt textarea"), 30, "the page")
    assert not drv.find_elements("css selector", "#txt2img_extra_tabs")  # hidden until the button shows it

    css(drv, "#txt2img_extra_networks").click()
    wait(drv, lambda d: d.find_elements("css selector", "#txt2img_extra_tabs"), 10, "the panel")
    _open_page(drv, "txt2img", "Lora")
    wait(drv, lambda d: _card(d, "txt2img", "lora", "mylora").is_displayed(), 10, "the LoRA card")
    card, other = _card(drv, "txt2img", "lora", "mylora"), _card(drv, "txt2img", "lora", "other")
    assert card.find_element("css selector", "img.preview").get_attribute("src").startswith("data:image/webp")
    assert other.find_elements("css selector", ".placeholder") and other.is_displayed()

    css(drv, '#txt2img_lora_dirs .sd-en-dir[data-dir="sub/"]').click()  # a folder button searches its path
    wait(drv, lambda d: not _card(d, "txt2img", "lora", "other").is_displayed(), 5, "the folder filter")
    assert value_of(drv, "#txt2img_lora_extra_search") == "sub/"
    css(drv, '#txt2img_lora_dirs .sd-en-dir[data-dir=""]').click()
    wait(drv, lambda d: _card(d, "txt2img", "lora", "other").is_displayed(), 5, "all folders")
    css(drv, "#txt2img_lora_extra_search").click()
    css(drv, "#txt2img_lora_extra_search").send_keys("MYLO")
    wait(drv, lambda d: not _card(d, "txt2img", "lora", "other").is_displayed(), 5, "the search")
    assert _card(drv, "txt2img", "lora", "mylora").is_displayed()
    assert not css(drv, "#txt2img_extra_networks_status").text.strip()  # clicks beside the cards send nothing

    _card(drv, "txt2img", "lora", "mylora").find_element("css selector", ".name").click()
    wait(drv, lambda d: value_of(d, "#txt2img_prompt textarea") == " <lora:shiny_style:1>", 10, "the tag")

    ActionChains(drv).move_to_element(_card(drv, "txt2img", "lora", "mylora")).perform()
    _card(drv, "txt2img", "lora", "mylora").find_element("css selector", ".edit-button").click()
    wait(drv, lambda d: css(d, "#txt2img_edit_user_metadata_activation_text textarea").is_displayed(), 10, "editor")
    css(drv, "#txt2img_edit_user_metadata_desc textarea").send_keys("Red things")
    css(drv, "#txt2img_edit_user_metadata_activation_text textarea").send_keys("glossy")
    weight = css(drv, "#txt2img_edit_user_metadata_weight input[type=number]")
    weight.send_keys(Keys.CONTROL, "a")
    weight.send_keys("0.8", Keys.TAB)
    css(drv, "#txt2img_edit_user_metadata_save").click()
    saved = data_dir / "models" / "Lora" / "sub" / "mylora.json"
    wait(drv, lambda d: saved.is_file(), 10, "the metadata file")
    meta = json.loads(saved.read_text(encoding="utf-8"))
    assert meta["description"] == "Red things" and meta["activation text"] == "glossy"
    assert meta["preferred weight"] == 0.8 and meta["sd version"] == "SD1" and meta["notes"] == ""
    wait(drv, lambda d: "Red things" in _card(d, "txt2img", "lora", "mylora").text, 10, "the new description")
    wait(drv, lambda d: not any(e.is_displayed() for e in d.find_elements("css selector",
                                                                         "#txt2img_edit_user_metadata_save")),
         5, "the editor to close once saved")

    _card(drv, "txt2img", "lora", "mylora").find_element("css selector", ".name").click()  # takes the tag out
    wait(drv, lambda d: value_of(d, "#txt2img_prompt textarea") == "", 10, "the tag removed")
    _card(drv, "txt2img", "lora", "mylora").find_element("css selector", ".name").click()
    wait(drv, lambda d: value_of(d, "#txt2img_prompt textarea") == " <lora:shiny_style:0.8> glossy", 10,
         "the tag with the preferred weight and the activation text")

    css(drv, "#txt2img_neg_prompt textarea").click()  # an embedding goes to the box that had the focus last
    _open_page(drv, "txt2img", "Textual Inversion")
    wait(drv, lambda d: _card(d, "txt2img", "textual_inversion", "badhands").is_displayed(), 10, "the embedding")
    _card(drv, "txt2img", "textual_inversion", "badhands").find_element("css selector", ".name").click()
    wait(drv, lambda d: value_of(d, "#txt2img_neg_prompt textarea") == " badhands", 10, "the negative prompt")
    assert value_of(drv, "#txt2img_prompt textarea") == " <lora:shiny_style:0.8> glossy"
    assert not css(drv, "#txt2img_extra_networks_status").text.strip()

    tab(drv, "img2img")  # the other tab has its own panel; the focus counts from before it is shown
    wait(drv, lambda d: d.find_elements("css selector", "#img2img_neg_prompt textarea"), 10, "img2img's prompts")
    css(drv, "#img2img_neg_prompt textarea").click()
    css(drv, "#img2img_extra_networks").click()
    wait(drv, lambda d: _card(d, "img2img", "textual_inversion", "badhands").is_displayed(), 10, "img2img's card")
    _card(drv, "img2img", "textual_inversion", "badhands").find_element("css selector", ".name").click()
    wait(drv, lambda d: value_of(d, "#img2img_neg_prompt textarea") == " badhands", 10, "img2img's negative prompt")
    assert value_of(drv, "#img2img_prompt textarea") == ""
    check_styles_editor(drv, url, data_dir)
    check_extras(drv, url, data_dir, tmp_path)
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

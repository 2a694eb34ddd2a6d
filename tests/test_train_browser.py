"""The Train tab in a real headless Chromium: create an embedding, train a small LoRA (loss plot, files saved,
the result line), and send it to txt2img."""

from __future__ import annotations

import pytest

from tests.browser_support import css, set_number, tab, wait
from tests.test_training import _dataset

pytest_plugins = ["tests.browser_support"]  # the driver and webui_server fixtures
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _type(drv, elem_id: str, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = css(drv, f"#{elem_id} textarea, #{elem_id} input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text, Keys.TAB)


def _sub_tab(drv, label: str) -> None:
    next(b for b in drv.find_elements("css selector", "#train_tabs button[role=tab]")
         if b.text.strip() == label).click()


def test_train_tab_in_browser(webui_server, driver, data_dir):
    _dataset(data_dir / "data")
    url, _ = webui_server(models=[("sd1", "tiny")])
    drv = driver
    drv.get(url)
    wait(drv, lambda d: d.find_elements("css selector", "#txt2img_prompt textarea"), 30, "the page")
    tab(drv, "Train")
    _type(drv, "train_new_embedding_name", "browser emb")
    css(drv, "#train_create_embedding").click()
    wait(drv, lambda d: "create embedding filename:" in css(d, "#train_create_embedding_info").text, 60,
         "the embedding to be created")
    assert (data_dir / "models" / "embeddings" / "browser emb.pt").is_file()

    _sub_tab(drv, "Train")
    css(drv, "#train_kind input[value='LoRA']").click()
    wait(drv, lambda d: css(d, "#train_lora_name").is_displayed(), 10, "the LoRA fields")
    _type(drv, "train_lora_name", "browser_lora")
    _type(drv, "train_dataset_directory", str(data_dir / "data"))
    for elem_id, value in (("train_training_width", 64), ("train_training_height", 64), ("train_steps", 4),
                           ("train_create_image_every", 0), ("train_save_embedding_every", 2)):
        set_number(drv, elem_id, value)
    css(drv, "#train_train").click()
    wait(drv, lambda d: "train lora complete" in css(d, "#train_info").text, 120, "the training to finish")
    lora = data_dir / "models" / "Lora" / "browser_lora.safetensors"
    assert lora.is_file() and str(lora) in css(drv, "#train_info").text
    saved = css(drv, "#train_saved textarea").get_attribute("value")
    assert "browser_lora-2.safetensors" in saved and "browser_lora-4.safetensors" in saved
    assert css(drv, "#train_loss_plot").find_elements("css selector", "canvas, svg")  # the plot was drawn

    css(drv, "#train_use_in_txt2img").click()
    wait(drv, lambda d: "<lora:browser_lora:1>" in css(d, "#txt2img_prompt textarea").get_attribute("value"), 20,
         "the LoRA tag in the txt2img prompt")
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

"""The Extras tab in a real headless Chromium: upload, upscale with a model upscaler, see the result and its file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.browser_support import css, tab, wait

pytest_plugins = ["tests.browser_support"]  # the driver and webui_server fixtures
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _model(data_dir) -> None:
    from modules.upscalers.spandrel_loader import spandrel

    spandrel()
    from spandrel.architectures.Compact import Compact

    folder = data_dir / "models" / "RealESRGAN"
    folder.mkdir(parents=True)
    save_file(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict(),
              str(folder / "tiny2x.safetensors"))


def test_extras_upscales_an_upload_and_saves_it(webui_server, data_dir, driver, tmp_path):
    _model(data_dir)
    source = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(source)
    url, _ = webui_server()
    drv = driver
    drv.get(url)
    wait(drv, lambda d: d.find_elements("css selector", "#tab_extras-button, button[role=tab]"), 30, "the page")
    tab(drv, "Extras")
    wait(drv, lambda d: css(d, "#extras_image input[type=file]"), 10, "the Extras tab")
    css(drv, "#extras_image input[type=file]").send_keys(str(source))
    wait(drv, lambda d: d.find_elements("css selector", "#extras_image img"), 20, "the uploaded image")
    upscaler = css(drv, "#extras_upscaler_1 input")
    upscaler.click()
    options = drv.find_elements("css selector", "ul[role=listbox] li")
    next(o for o in options if o.text.strip() == "tiny2x").click()
    css(drv, "#extras_generate").click()
    wait(drv, lambda d: "Postprocess upscaler: tiny2x" in css(d, "#html_info_extras").text, 60, "the result")
    assert "Postprocess upscale by: 4.0" in css(drv, "#html_info_extras").text
    saved = list((data_dir / "outputs" / "extras-images").glob("*.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        assert image.size == (192, 160) and "Postprocess upscaler: tiny2x" in image.info["postprocessing"]
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

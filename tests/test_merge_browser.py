"""The Checkpoint Merger tab in a real headless Chromium: pick A and B, Weighted sum, Merge, see the path and hash,
and find the new model in the quicksettings checkpoint list."""

from __future__ import annotations

import hashlib

import pytest

from tests.browser_support import css, wait
from tests.test_merge import synth

pytest_plugins = ["tests.browser_support"]  # the driver and webui_server fixtures
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def server(webui_server, data_dir):
    folder = data_dir / "models" / "Stable-diffusion"
    synth(folder / "a.safetensors", 1)
    synth(folder / "b.safetensors", 2)
    return webui_server(args=["--skip-load-model-at-start"])


def _options(drv, elem_id: str) -> list[str]:
    """Open a gradio dropdown and return its options' labels."""
    css(drv, f"#{elem_id} input").click()
    items = wait(drv, lambda d: d.find_elements("css selector", f"#{elem_id} li[role=option]"), 10,
                 f"the options of {elem_id}")
    return [li.get_attribute("aria-label") for li in items]


def _pick(drv, elem_id: str, label: str) -> None:
    assert label in _options(drv, elem_id)
    css(drv, f'#{elem_id} li[role=option][aria-label="{label}"]').click()
    wait(drv, lambda d: css(d, f"#{elem_id} input").get_attribute("value") == label, 10, f"{elem_id} = {label}")


def test_merge_tab_in_browser(server, driver):
    url, data_dir = server
    drv = driver
    drv.get(url)
    tab = wait(drv, lambda d: next((b for b in d.find_elements("css selector", "button[role=tab]")
                                    if b.text.strip() == "Checkpoint Merger"), None), 30, "the merger tab")
    tab.click()
    wait(drv, lambda d: css(d, "#modelmerger_merge").is_displayed(), 10, "the merger form")
    _pick(drv, "modelmerger_primary_model_name", "a.safetensors")
    _pick(drv, "modelmerger_secondary_model_name", "b.safetensors")
    method = css(drv, "#modelmerger_interp_method input[value='Weighted sum']")
    assert method.is_selected()
    css(drv, "#modelmerger_merge").click()
    wait(drv, lambda d: "Checkpoint saved to" in css(d, "#modelmerger_result").text, 30, "the merge result")

    path = data_dir / "models" / "Stable-diffusion" / "0.7(a) + 0.3(b).safetensors"
    assert path.is_file()
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    result = css(drv, "#modelmerger_result").text
    assert str(path) in result and sha in result and f"0.7(a) + 0.3(b).safetensors [{sha[:10]}]" in result

    new_title = f"0.7(a) + 0.3(b).safetensors [{sha[:10]}]"
    assert new_title in _options(drv, "sd_model_checkpoint_dropdown")
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

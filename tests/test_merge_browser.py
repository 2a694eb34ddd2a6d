"""The Checkpoint Merger tab in a real headless Chromium: pick A and B, Weighted sum, Merge, see the path and hash,
and find the new model in the quicksettings checkpoint list."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_merge import synth

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
def server(data_dir):
    folder = data_dir / "models" / "Stable-diffusion"
    synth(folder / "a.safetensors", 1)
    synth(folder / "b.safetensors", 2)
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1"}
    log_path = data_dir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "webui", "--data-dir", str(data_dir), "--port", str(port),
                                 "--skip-load-model-at-start"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
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
        pytest.skip(f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER})")
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


def _options(drv, elem_id: str) -> list[str]:
    """Open a gradio dropdown and return its options' labels."""
    _css(drv, f"#{elem_id} input").click()
    items = _wait(drv, lambda d: d.find_elements("css selector", f"#{elem_id} li[role=option]"), 10,
                  f"the options of {elem_id}")
    return [li.get_attribute("aria-label") for li in items]


def _pick(drv, elem_id: str, label: str) -> None:
    assert label in _options(drv, elem_id)
    _css(drv, f'#{elem_id} li[role=option][aria-label="{label}"]').click()
    _wait(drv, lambda d: _css(d, f"#{elem_id} input").get_attribute("value") == label, 10, f"{elem_id} = {label}")


def test_merge_tab_in_browser(server, driver):
    url, data_dir = server
    drv = driver
    drv.get(url)
    tab = _wait(drv, lambda d: next((b for b in d.find_elements("css selector", "button[role=tab]")
                                     if b.text.strip() == "Checkpoint Merger"), None), 30, "the merger tab")
    tab.click()
    _wait(drv, lambda d: _css(d, "#modelmerger_merge").is_displayed(), 10, "the merger form")
    _pick(drv, "modelmerger_primary_model_name", "a.safetensors")
    _pick(drv, "modelmerger_secondary_model_name", "b.safetensors")
    method = _css(drv, "#modelmerger_interp_method input[value='Weighted sum']")
    assert method.is_selected()
    _css(drv, "#modelmerger_merge").click()
    _wait(drv, lambda d: "Checkpoint saved to" in _css(d, "#modelmerger_result").text, 30, "the merge result")

    path = data_dir / "models" / "Stable-diffusion" / "0.7(a) + 0.3(b).safetensors"
    assert path.is_file()
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    result = _css(drv, "#modelmerger_result").text
    assert str(path) in result and sha in result and f"0.7(a) + 0.3(b).safetensors [{sha[:10]}]" in result

    new_title = f"0.7(a) + 0.3(b).safetensors [{sha[:10]}]"
    assert new_title in _options(drv, "sd_model_checkpoint_dropdown")
    server_log = (data_dir / "server.log").read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-3000:]

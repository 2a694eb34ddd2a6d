"""Support for the real-browser tests: a ``python -m webui`` server in a subprocess and headless Debian Chromium.

Fixtures (a test module registers them with ``pytest_plugins = ["tests.browser_support"]``; they use the
``data_dir`` and ``model_store`` fixtures of ``tests/conftest.py``):

- ``webui_server(models=[("sd1", "tiny"), ...], args=[...])`` -> ``(url, data_dir)``: installs the tiny models
  (``(family, name)`` pairs) into the test's ``data_dir``, starts ``python -m webui --data-dir DATA_DIR --port PORT
  *args`` with its output in ``data_dir / "server.log"`` and waits for ``/internal/ping``. If the server does not
  come up, the log's tail is printed. Servers stop when the test ends. Skips when Chromium or selenium is missing,
  before anything starts.
- ``driver``: a headless Chromium (selenium) with a throwaway profile. It depends on ``webui_server``, so the browser
  always quits before any server stops, whatever the order of a test's arguments.
- ``window_size``: the browser window, ``(1400, 1400)``; override it in a test module for another size.

Helpers: ``wait``, ``css``, ``tab``, ``set_number``, ``value_of`` (page actions), ``require_browser``,
``free_port``, ``wait_ping``, ``stop_server``.

PYTEST_DONT_REWRITE: test modules import the helpers before pytest registers this module as a plugin, too late for
assertion rewriting (and a warning); it has no asserts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.conftest import install_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[1]
LOG_TAIL = 4000


def require_browser():
    """Skip the test unless Debian's chromium and chromedriver and selenium are installed; -> ``selenium.webdriver``."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}); "
                    "apt-get install chromium chromium-driver")
    return pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ping(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
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


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def webui_server(request, data_dir):
    """``webui_server(models=[(family, name), ...], args=[...])`` -> ``(url, data_dir)``; see the module docstring."""
    require_browser()
    procs: list[subprocess.Popen] = []

    def start(models: Iterable[tuple[str, str]] = (), args: Iterable[str | os.PathLike] = ()) -> tuple[str, Path]:
        models = list(models)
        if models:
            model_store = request.getfixturevalue("model_store")
            for family, name in models:
                install_model(data_dir, model_store(family, "safetensors"), name)
        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "PYTHONUNBUFFERED": "1"}
        log_path = data_dir / "server.log"
        command = [sys.executable, "-m", "webui", "--data-dir", str(data_dir), "--port", str(port),
                   *(str(a) for a in args)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ping(url, proc)
        except BaseException:
            print(log_path.read_text(errors="replace")[-LOG_TAIL:])
            raise
        return url, data_dir

    try:
        yield start
    finally:
        for proc in reversed(procs):
            stop_server(proc)


@pytest.fixture
def window_size() -> tuple[int, int]:
    return (1400, 1400)


@pytest.fixture
def driver(tmp_path, window_size, webui_server):  # depends on webui_server: the browser quits before the server stops
    webdriver = require_browser()
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path / "chromium-profile"
    width, height = window_size
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(drv, predicate, timeout: float = 20, what: str = "condition"):
    """Poll ``predicate(drv)`` until it is truthy (stale elements count as not yet); -> its value."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d):
        try:
            return predicate(d)
        except StaleElementReferenceException:
            return False

    return WebDriverWait(drv, timeout, poll_frequency=0.1).until(check, message=f"timed out waiting for {what}")


def css(drv, selector: str):
    return drv.find_element("css selector", selector)


def value_of(drv, selector: str) -> str:
    return css(drv, selector).get_attribute("value")


def tab(drv, label: str) -> None:
    """Click a top-level tab (the first tab button with that label: sub-tabs come later in the page)."""
    next(b for b in drv.find_elements("css selector", "button[role=tab]") if b.text.strip() == label).click()


def set_number(drv, elem_id: str, value: int) -> None:
    """Type into the number box of a slider or number component, then leave it (as a user does)."""
    from selenium.webdriver.common.keys import Keys

    box = css(drv, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)
    wait(drv, lambda d: value_of(d, f"#{elem_id} input[type=number]") == str(value), what=f"{elem_id} = {value}")


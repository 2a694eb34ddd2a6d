"""Shared fixtures: no network, tiny random-weight models of every family, a data dir per test."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one test process per core (``-n 2``): one compute thread each, set before torch is imported
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
TESTDATA = SHARED / "testdata"
FAMILIES = ["sd1", "sd2", "sd2-v", "sdxl", "sd1-inpaint", "sd2-inpaint", "sdxl-inpaint"]

_real_connect = socket.socket.connect
NETWORK_ATTEMPTS: list[object] = []


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_local(address):
        NETWORK_ATTEMPTS.append(address)
        raise RuntimeError(f"network access attempted during tests: {address!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Any connection to a non-loopback address fails the test that made it."""
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _real_connect


@pytest.fixture(autouse=True)
def no_network_attempts():
    """Fails a test during which anything (even a library's background thread) tried to reach the network."""
    NETWORK_ATTEMPTS.clear()
    yield
    assert not NETWORK_ATTEMPTS, f"network access attempted: {NETWORK_ATTEMPTS}"


@pytest.fixture(scope="module")
def frozen_gc():
    """Opt-in for a test module (``pytestmark = pytest.mark.usefixtures("frozen_gc")``): while it runs, the objects
    that already exist (the imported libraries, the session's fixtures, what earlier modules left) are kept out of the
    garbage collector's full passes (``gc.freeze``). The app runs a full ``gc.collect()`` on every model switch and
    every failed job; late in a session each one would scan millions of objects, now only what this module made. At
    the end they are handed back (``gc.unfreeze``) and collected as usual: nothing is kept for good."""
    import gc

    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """Builds tiny models on demand, once per session: ``model_store(family, fmt)`` -> path."""
    from modules.app import quiet_libraries
    from modules.models.tiny import write_tiny_model

    quiet_libraries()
    root = tmp_path_factory.mktemp("models")
    built: dict[tuple[str, str], Path] = {}

    def get(family: str = "sd1", fmt: str = "safetensors") -> Path:
        key = (family, fmt)
        if key not in built:
            folder = root / f"{family}-{fmt}"
            built[key] = write_tiny_model(family, folder, fmt=fmt)
        return built[key]

    return get


@pytest.fixture
def data_dir(tmp_path) -> Path:
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    return tmp_path


def install_model(data_dir: Path, source: Path, name: str | None = None) -> Path:
    """Copy a tiny model (and its config folder) into ``data_dir/models/Stable-diffusion``."""
    import shutil

    target_dir = data_dir / "models" / "Stable-diffusion"
    target_dir.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        target = target_dir / (name or source.name)
        shutil.copytree(source, target)
        return target
    stem = name or source.stem
    target = target_dir / f"{stem}{source.suffix}"
    shutil.copy2(source, target)
    config = source.with_suffix("")
    if config.is_dir():
        shutil.copytree(config, target_dir / stem)
    return target


@pytest.fixture
def engine_factory(data_dir):
    """``engine_factory(cache_limit=1)`` -> an Engine over ``data_dir`` on the CPU."""
    from modules.app import build_engine
    from modules.paths import Paths

    def make(cache_limit: int = 1):
        return build_engine(Paths.create(data_dir), device="cpu", precision="fp32", cache_limit=cache_limit)

    return make


class LiveServer:
    """A real uvicorn server on a free loopback port, in a thread of the test process."""

    def __init__(self, app, config) -> None:
        import threading

        import uvicorn

        from webui.server import create_server

        self.app = app
        self.asgi = create_server(app, config)
        self.server = uvicorn.Server(uvicorn.Config(self.asgi, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        import time

        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def live_server(data_dir, model_store):
    """``live_server(nowebui=True, api_auth=None, ui_auth=None, models=("sd1",), load=True)`` -> LiveServer."""
    from modules.app import App, StartOptions
    from webui.launch_options import ServerConfig

    servers = []

    def start(nowebui: bool = True, api_auth: dict | None = None, ui_auth: dict | None = None,
              models: tuple[str, ...] = ("sd1",), load: bool = True, exposed: bool = False) -> LiveServer:
        for i, family in enumerate(models):
            target = data_dir / "models" / "Stable-diffusion" / (f"tiny-{family}" if i else "tiny")
            if not target.with_suffix(".safetensors").exists():
                install_model(data_dir, model_store(family, "safetensors"), target.name)
        app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=not load, exposed=exposed))
        config = ServerConfig("127.0.0.1", 0, nowebui, api_auth or {}, ui_auth or {}, False,
                              {"api_auth": "<redacted>" if api_auth else None})
        app.launch_flags = config.flags
        server = LiveServer(app, config)
        servers.append(server)
        if load:
            app.queue.wait_idle(60)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def api(live_server):
    """An HTTP client of a live server with a tiny SD 1.x model loaded; ``api.server`` is the server."""
    import httpx

    server = live_server()
    with httpx.Client(base_url=server.url, timeout=120) as client:
        client.server = server  # type: ignore[attr-defined]
        yield client


@pytest.fixture(scope="module")
def module_api(tmp_path_factory, model_store):
    """``api`` shared by a test module: the same live server (``live_server()``'s defaults: a tiny SD 1.x model
    loaded, API only, no auth) and client, started once. Only for tests that check their own answers and leave
    nothing behind that another test reads (no settings changed, no models added, no job left running)."""
    import httpx

    from modules.app import App, StartOptions
    from webui.launch_options import ServerConfig

    data = tmp_path_factory.mktemp("module-api")
    install_model(data, model_store("sd1", "safetensors"), "tiny")
    app = App(StartOptions(data_dir=data, device="cpu"))
    config = ServerConfig("127.0.0.1", 0, True, {}, {}, False, {"api_auth": None})
    app.launch_flags = config.flags
    server = LiveServer(app, config)
    try:
        app.queue.wait_idle(60)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            client.server = server  # type: ignore[attr-defined]
            yield client
    finally:
        server.stop()


@contextlib.contextmanager
def running_app(data_dir: Path, model_store, names: tuple[str, ...] = ("tiny",)):
    """An App over ``data_dir`` with tiny SD 1.x models installed under ``names``, its worker running."""
    from modules.app import App, StartOptions

    for name in names:
        install_model(data_dir, model_store("sd1", "safetensors"), name)
    app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
    app.start()
    try:
        yield app
    finally:
        app.stop()


def wait_for_progress(job, predicate, timeout: float = 60.0):
    """Block until a progress event of ``job`` satisfies ``predicate`` (or the job ends); the matching event.

    Waits on the job's event stream, not by polling."""
    import threading

    hit = threading.Event()
    found = []

    def listener(event) -> None:
        if predicate(event):
            found.append(event)
            hit.set()

    unsubscribe = job.control.subscribe(listener)
    try:
        if predicate(job.control.progress):
            return job.control.progress
        job.add_done_callback(lambda _job: hit.set())
        if not hit.wait(timeout):
            raise AssertionError(f"no matching progress within {timeout} s")
        if not found:
            raise AssertionError(f"the job ended ({job.state.value}) before a matching progress event")
        return found[0]
    finally:
        unsubscribe()


def running_job(app, timeout: float = 60.0, min_job_no: int = 0):
    """The job the worker is running, once it samples batch ``min_job_no`` (waits on the queue and the job's
    progress events, no polling)."""
    job = app.queue.wait_running(timeout)
    assert job is not None, "no job started"
    wait_for_progress(job, lambda p: p.sampling_step > 0 and p.job_no >= min_job_no, timeout)
    return job


NV_NOTE = "RNG: GPU noise was made with NV"


def log_problems(log: str) -> str:
    """A generation log (text or the UI's HTML) without the note every job gets on a machine without CUDA (its GPU
    noise is made with NV): what is left is a problem."""
    log = re.sub(r'<div class="sd-warning">' + re.escape(NV_NOTE) + r"[^<]*</div>", "", log)
    return "\n".join(line for line in log.strip().splitlines() if not line.startswith(NV_NOTE)).strip()

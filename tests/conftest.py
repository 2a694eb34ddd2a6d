"""Shared fixtures: no network, tiny random-weight models of every family, a data dir per test."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
TESTDATA = SHARED / "testdata"
FAMILIES = ["sd1", "sd2", "sd2-v", "sdxl", "sd1-inpaint", "sd2-inpaint", "sdxl-inpaint"]

_real_connect = socket.socket.connect


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
        raise RuntimeError(f"network access attempted during tests: {address!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Any connection to a non-loopback address fails the test that made it."""
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _real_connect


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

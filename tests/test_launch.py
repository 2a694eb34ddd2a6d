"""Launching: safe exposure, credentials, start-up with the real command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from webui.launch import build_parser
from webui.launch_options import LaunchError, parse_credentials, server_config


def config(*args):
    return server_config(build_parser().parse_args(list(args)))


def test_loopback_by_default_and_ports():
    c = config()
    assert c.host == "127.0.0.1" and c.port == 7860 and not c.exposed
    assert config("--nowebui").port == 7861
    assert config("--api").host == "127.0.0.1"


@pytest.mark.parametrize("args", [["--listen"], ["--server-name", "0.0.0.0"], ["--server-name", "192.168.1.5"],
                                  ["--server-name", "myhost.example"]])
def test_exposed_without_auth_refuses(args):
    with pytest.raises(LaunchError) as err:
        config(*args)
    assert "--api-auth" in str(err.value) and "--insecure" in str(err.value)


def test_exposed_with_auth_or_insecure_starts():
    assert config("--listen", "--api-auth", "u:p").exposed
    assert config("--listen", "--gradio-auth", "u:p").auth_enabled
    assert config("--listen", "--insecure").exposed
    assert not config("--server-name", "localhost").exposed


def test_credentials_parsing_and_checks(tmp_path):
    assert parse_credentials("a:1,b:2:3", "--api-auth") == {"a": "1", "b": "2:3"}
    with pytest.raises(LaunchError) as err:
        parse_credentials("alice:pw,bob", "--api-auth")
    assert "pw" not in str(err.value)
    c = config("--api-auth", "alice:secret", "--gradio-auth", "ui:other")
    assert c.check_api("alice", "secret") and not c.check_api("ui", "other") and c.check_ui("ui", "other")
    assert c.flags["api_auth"] == "<redacted>" and c.flags["gradio_auth"] == "<redacted>"
    path = tmp_path / "auth.txt"
    path.write_text("carol:pw3\n")
    assert config("--gradio-auth-path", str(path)).check_ui("carol", "pw3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_listen_without_auth_exits_with_a_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", "webui", "--listen", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=os.getcwd(), COMMANDLINE_ARGS=""))
    assert r.returncode != 0
    assert "--api-auth" in r.stderr and "Traceback" not in r.stderr


def test_real_launch_answers_before_model_loads_and_hides_passwords(tmp_path, model_store):
    from conftest import install_model

    install_model(tmp_path, model_store("sd1", "safetensors"), "tiny")
    port = _free_port()
    # a user's A1111 COMMANDLINE_ARGS: flags without effect here, an extension's flag, a port the command line beats
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.getcwd(),
               COMMANDLINE_ARGS="--medvram --theme dark --port 1 --controlnet-dir '/my models' --skip-torch-cuda-test")
    proc = subprocess.Popen([sys.executable, "-m", "webui", "--nowebui", "--port", str(port), "--data-dir",
                             str(tmp_path), "--api-auth", "admin:hunter2-pass"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/internal/ping", auth=("admin", "hunter2-pass"), timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", auth=("admin", "hunter2-pass"), timeout=120,
                       json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
        assert r.status_code == 200
        flags = httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/cmd-flags", auth=("admin", "hunter2-pass")).json()
        assert flags["nowebui"] is True and "hunter2" not in str(flags)
        assert flags["medvram"] is True and flags["theme"] == "dark" and flags["port"] == port
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "started in" in out and "hunter2" not in out
    warnings = [line for line in out.splitlines() if "launch flags" in line or "launch arguments" in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        "ignored launch flags (no effect here): --medvram, --theme; "
        "unknown launch arguments ignored: --controlnet-dir (and 1 other word)")

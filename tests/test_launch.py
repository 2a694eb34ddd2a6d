"""Launching: safe exposure, credentials, start-up with the real command line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from webui.launch import build_parser, password_warning
from webui.launch_options import LaunchError, parse_allowed_hosts, parse_credentials, server_config


def config(*args, env=None):
    return server_config(build_parser().parse_args(list(args)), env)


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


def test_credentials_from_files_and_environment(tmp_path):
    api_file = tmp_path / "api.txt"
    api_file.write_text("alice:from-file\nbob:pw2\n")
    c = config("--api-auth-file", str(api_file), env={"SD_WEBUI_GRADIO_AUTH": "ui:from-env"})
    assert c.check_api("alice", "from-file") and c.check_api("bob", "pw2") and c.check_ui("ui", "from-env")
    assert not c.check_api("ui", "from-env")  # UI users do not become API users when API users exist
    c = config("--listen", env={"SD_WEBUI_API_AUTH": "carol:pw3"})  # counts as auth: starts exposed
    assert c.exposed and c.check_api("carol", "pw3") and "pw3" not in str(c.flags)
    both = config("--api-auth", "dan:cli", env={"SD_WEBUI_API_AUTH": "erin:env"})
    assert both.check_api("dan", "cli") and both.check_api("erin", "env")
    assert not config(env={"OTHER": "x:y"}).auth_enabled


def test_credential_errors_are_one_line_without_the_password(tmp_path):
    with pytest.raises(LaunchError, match="--api-auth-file: cannot read"):
        config("--api-auth-file", str(tmp_path / "missing.txt"))
    with pytest.raises(LaunchError) as err:
        config(env={"SD_WEBUI_API_AUTH": "frank-no-colon-secret"})
    assert "SD_WEBUI_API_AUTH" in str(err.value) and "secret" not in str(err.value)


def test_passwords_on_the_command_line_are_warned_about():
    line = password_warning(["--port", "1", "--api-auth", "u:p", "--gradio-auth=g:q"])
    assert line is not None and "--api-auth and --gradio-auth" in line and "SD_WEBUI_API_AUTH" in line
    assert "u:p" not in line and "g:q" not in line
    assert password_warning(["--api-auth-file", "f", "--gradio-auth-path", "g"]) is None


def test_allowed_hosts_flag():
    assert config("--allowed-hosts", "SD.example.com, proxy.lan:8443,*").allowed_hosts == (
        "sd.example.com", "proxy.lan:8443", "*")
    assert config().allowed_hosts == ()
    for bad in ("http://x.example", "a b", "host:port", "x/y"):
        with pytest.raises(LaunchError, match="--allowed-hosts"):
            parse_allowed_hosts(bad)


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
    # a user's A1111 COMMANDLINE_ARGS: --medvram (the model runs in that memory mode), a flag without effect
    # here, an extension's flag, a port the command line beats
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
        "ignored launch flags (no effect here): --theme; "
        "unknown launch arguments ignored: --controlnet-dir (and 1 other word)")


def _wait_for_ping(port: int, proc: subprocess.Popen, auth: tuple[str, str]) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/internal/ping", auth=auth, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
        time.sleep(0.2)


@pytest.mark.parametrize("ui", [False, True], ids=["api-only", "with-ui"])
def test_sigterm_stops_a_busy_server_within_10_seconds(tmp_path, model_store, ui):
    """Credentials from a file or the environment (never on the command line); a long job running and a client
    waiting on another: SIGTERM interrupts the job, answers the waiting client, and the process is gone in 10 s."""
    from conftest import install_model

    install_model(tmp_path, model_store("sd1", "safetensors"), "tiny")
    (tmp_path / "auth.txt").write_text("admin:file-pass-7\n")
    port, auth = _free_port(), ("admin", "file-pass-7")
    flags = [] if ui else ["--nowebui", "--api-auth-file", str(tmp_path / "auth.txt")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.getcwd(), COMMANDLINE_ARGS="")
    if ui:
        env["SD_WEBUI_API_AUTH"] = "admin:file-pass-7"
    proc = subprocess.Popen([sys.executable, "-m", "webui", "--port", str(port), "--data-dir", str(tmp_path), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    try:
        _wait_for_ping(port, proc, auth)
        assert "file-pass-7" not in Path(f"/proc/{proc.pid}/cmdline").read_text(errors="replace")
        long_job = {"prompt": "x", "steps": 150, "n_iter": 100, "width": 64, "height": 64, "save_images": False}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=auth, timeout=30) as c:
            job = c.post("/sdapi/v2/txt2img", json=long_job).json()["id"]
            deadline = time.monotonic() + 60
            while c.get(f"/sdapi/v2/jobs/{job}").json()["progress"]["step"] < 1:
                assert time.monotonic() < deadline, "the job did not start"
                time.sleep(0.1)
            waiting = subprocess.Popen([sys.executable, "-c", WAITING_CLIENT, str(port)], stdout=subprocess.PIPE,
                                       text=True)
            while c.get("/sdapi/v2/jobs").json()[-1]["id"] == job:  # the waiting client's job is queued
                assert time.monotonic() < deadline, "the second job was not queued"
                time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert time.monotonic() - t0 < 10 and proc.returncode in (0, -signal.SIGTERM)
        answer, _ = waiting.communicate(timeout=10)
        assert answer.strip() not in ("", "200")  # answered (refused or closed), not left hanging nor completed
    finally:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out


# Waits on a blocking A1111 txt2img call and prints its status code, or the error's name when the server goes away.
WAITING_CLIENT = """
import sys, httpx
try:
    r = httpx.post(f"http://127.0.0.1:{sys.argv[1]}/sdapi/v1/txt2img", auth=("admin", "file-pass-7"), timeout=60,
                   json={"prompt": "y", "steps": 2, "width": 64, "height": 64})
    print(r.status_code)
except httpx.HTTPError as exc:
    print(type(exc).__name__)
"""

"""The web layer's protections over real HTTP: file paths in Gradio requests, Host checks (DNS rebinding),
cross-origin refusal on every route, Gradio's included."""

from __future__ import annotations

import io
import json
import shutil
import socket
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from webui.launch_options import ServerConfig, parse_authority
from webui.server import same_origin


def _png(path: Path) -> Path:
    Image.new("RGB", (8, 8), "red").save(path)
    return path


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, format="PNG")
    return buf.getvalue()


def _pnginfo_event(c: httpx.Client) -> tuple[int, int]:
    """(fn id, trigger id) of the PNG Info tab's upload event, whose input is a file."""
    conf = c.get("/config").json()
    comp = next(x["id"] for x in conf["components"] if x.get("props", {}).get("elem_id") == "pnginfo_image")
    dep = next(d for d in conf["dependencies"] if d["inputs"] == [comp])
    return dep["id"], comp


def _run_with_file(c: httpx.Client, path: str) -> dict:
    """Run the PNG Info upload event with a FileData ``path``; the final queue message."""
    fn, trigger = _pnginfo_event(c)
    session = uuid.uuid4().hex
    body = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}],
            "fn_index": fn, "trigger_id": trigger, "session_hash": session}
    assert c.post("/gradio_api/queue/join", json=body).status_code == 200
    with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event never completed")


@pytest.mark.parametrize("ui_auth", [None, {"ann": "pw-ann"}])
def test_gradio_copies_only_uploaded_files(live_server, data_dir, ui_auth):
    """A FileData path naming a file on disk (directly, by ``..`` or through a symlink in the upload folder) is
    refused; a file uploaded through Gradio is accepted."""
    from gradio.utils import get_upload_folder

    outside = _png(data_dir.parent / f"outside-{uuid.uuid4().hex}.png")
    upload_dir = Path(get_upload_folder()) / f"test-{uuid.uuid4().hex}"
    upload_dir.mkdir(parents=True)
    (upload_dir / "link.png").symlink_to(outside)
    server = live_server(nowebui=False, ui_auth=ui_auth, load=False)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            if ui_auth:
                assert c.post("/login", data={"username": "ann", "password": "pw-ann"}).status_code == 200
            for path in (str(outside), f"{get_upload_folder()}/../{outside.relative_to('/')}",
                         str(upload_dir / "link.png"), str(data_dir / "config.json")):
                done = _run_with_file(c, path)
                assert done["success"] is False and "url" not in json.dumps(done["output"]), path
            uploaded = c.post("/gradio_api/upload", files={"files": ("mine.png", _png_bytes(), "image/png")}).json()
            done = _run_with_file(c, uploaded[0])
            assert done["success"] is True and "/gradio_api/file=" in done["output"]["data"][0]["url"]
    finally:
        shutil.rmtree(upload_dir, ignore_errors=True)


def _raw_get(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        return s.recv(200)


def test_only_the_hosts_the_server_was_started_for(live_server, data_dir):
    out = data_dir / "outputs" / "txt2img-images"
    out.mkdir(parents=True)
    _png(out / "00000-1.png")
    server = live_server(nowebui=False, load=False)
    port = server.port
    routes = ["/", "/config", "/gradio_api/info", "/sdapi/v1/options", "/docs", "/internal/ping",
              f"/gradio_api/file={out / '00000-1.png'}"]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}",
                     f"127.0.0.1:{port + 1}", f"localhost:{port}@evil.example", ""):
            for path in routes:
                r = c.get(path, headers={"Host": host, "Origin": f"http://{host}"})
                assert r.status_code == 400 and "Host" in r.json()["detail"], (host, path)
            assert c.post("/sdapi/v1/options", headers={"Host": host}, json={"samples_format": "jpg"}).status_code \
                == 400
            assert c.post("/gradio_api/upload", headers={"Host": host},
                          files={"files": ("a.png", _png_bytes(), "image/png")}).status_code == 400
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
            for path in routes:
                assert c.get(path, headers={"Host": host}).status_code == 200, (host, path)
        assert c.get("/sdapi/v1/options").json()["samples_format"] == "png"
    assert _raw_get(port, b"GET /internal/ping HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 400")


def test_cross_origin_requests_refused_on_every_route(live_server):
    server = live_server(nowebui=False, load=False)
    port, own = server.port, server.url
    foreign = ["http://evil.example", "null", f"https://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}",
               f"http://localhost:{port}", "http://127.0.0.1", f"http://127.0.0.1:{port}/x", "garbage"]
    png = {"files": ("a.png", _png_bytes(), "image/png")}
    with httpx.Client(base_url=own, timeout=60) as c:
        fn, trigger = _pnginfo_event(c)
        join = json.dumps({"data": [None], "fn_index": fn, "trigger_id": trigger, "session_hash": "s1"})
        for origin in foreign:
            h = {"Origin": origin}
            assert c.post("/gradio_api/upload", headers=h, files=png).status_code == 403, origin
            for ctype in ("text/plain", "application/json", "application/x-www-form-urlencoded"):
                r = c.post("/gradio_api/queue/join", headers={**h, "Content-Type": ctype}, content=join)
                assert r.status_code == 403, (origin, ctype)
                r = c.post("/sdapi/v1/options", headers={**h, "Content-Type": ctype},
                           content='{"samples_format": "jpg"}')
                assert r.status_code == 403 and r.json()["detail"] == "cross-origin request refused"
            assert c.get("/config", headers=h).status_code == 403  # nor can a foreign page read the UI's data
        assert c.get("/sdapi/v1/options").json()["samples_format"] == "png"
        # same origin (a browser on this page) and no Origin (a script) keep working
        assert c.post("/gradio_api/upload", headers={"Origin": own}, files=png).status_code == 200
        assert c.post("/gradio_api/upload", files=png).status_code == 200
        assert c.post("/sdapi/v1/options", headers={"Origin": own}, json={"samples_format": "jpg"}).status_code == 200
        assert c.post("/sdapi/v1/options", json={"samples_format": "webp"}).status_code == 200
        assert c.post("/sdapi/v1/options", headers={"Origin": f"http://localhost:{port}",
                                                    "Host": f"localhost:{port}"},
                      json={"samples_format": "png"}).status_code == 200


@pytest.fixture
def api_server(data_dir):
    """``api_server(host=..., allowed_hosts=(...))`` -> a live API-only server whose config names ``host``."""
    from conftest import LiveServer
    from modules.app import App, StartOptions

    servers = []

    def start(host: str = "127.0.0.1", allowed_hosts: tuple[str, ...] = ()) -> LiveServer:
        app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
        config = ServerConfig(host, 0, True, {}, {}, host != "127.0.0.1", {}, allowed_hosts)
        servers.append(LiveServer(app, config))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _status(server, host: str) -> int:
    return httpx.get(f"{server.url}/internal/ping", headers={"Host": host}, timeout=30).status_code


def test_allowed_hosts_and_server_name(api_server):
    server = api_server("sd.lan", allowed_hosts=("proxy.example", "tls.example:8443"))
    p = server.port
    assert _status(server, f"sd.lan:{p}") == 200 and _status(server, f"SD.LAN:{p}") == 200
    assert _status(server, "proxy.example") == 200 and _status(server, "proxy.example:9999") == 200
    assert _status(server, "tls.example:8443") == 200 and _status(server, "tls.example:8444") == 400
    assert _status(server, f"sd.lan:{p + 1}") == 400 and _status(server, f"other.lan:{p}") == 400
    r = httpx.post(f"{server.url}/sdapi/v1/interrupt", headers={"Host": "tls.example:8443",
                                                                "Origin": "https://tls.example:8443"})
    assert r.status_code == 403  # the request came over plain http: an https origin is another origin


def test_listening_everywhere_accepts_this_machines_name_and_the_address_reached(api_server):
    server = api_server("0.0.0.0")
    p, name = server.port, socket.gethostname()
    assert _status(server, f"{name}:{p}") == 200 and _status(server, f"{name}.local:{p}") == 200
    assert _status(server, f"127.0.0.1:{p}") == 200  # the address this connection reached
    assert _status(server, f"192.0.2.7:{p}") == 400 and _status(server, f"evil.example:{p}") == 400
    assert _status(api_server("127.0.0.1", allowed_hosts=("*",)), "anything.example") == 200


@pytest.mark.parametrize(("origin", "host", "same"), [
    ("http://127.0.0.1:7860", "127.0.0.1:7860", True),
    ("http://LOCALHOST:7860", "localhost:7860", True),
    ("http://[::1]:7860", "[::1]:7860", True),
    ("http://example.com", "example.com:80", True),
    ("https://127.0.0.1:7860", "127.0.0.1:7860", False),
    ("http://127.0.0.1:7861", "127.0.0.1:7860", False),
    ("http://localhost:7860", "127.0.0.1:7860", False),
    ("null", "127.0.0.1:7860", False),
    ("http://user@127.0.0.1:7860", "127.0.0.1:7860", False),
    ("http://127.0.0.1:7860/", "127.0.0.1:7860", False),
    ("http://127.0.0.1:notaport", "127.0.0.1:7860", False),
])
def test_same_origin_compares_scheme_host_and_port(origin, host, same):
    assert same_origin(origin, "http", host) is same


def test_parse_authority():
    assert parse_authority("LocalHost:7860", "http") == ("localhost", 7860)
    assert parse_authority("[::1]", "https") == ("::1", 443)
    assert parse_authority("name", "") == ("name", None)
    for bad in ("", "a b", "x/y", "u@h", "h:99999", "h:port"):
        assert parse_authority(bad, "http") is None, bad


def test_websockets_are_checked_too():
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from webui.server import HostOriginGuard

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("hello")
        await ws.close()

    config = ServerConfig("127.0.0.1", 0, True, {}, {}, False, {}, ("testserver",))
    client = TestClient(HostOriginGuard(Starlette(routes=[WebSocketRoute("/ws", echo)]), config))
    with client.websocket_connect("/ws", headers={"Origin": "http://testserver"}) as ws:
        assert ws.receive_text() == "hello"
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Host": "evil.example"}):
        with pytest.raises(WebSocketDisconnect) as refused:
            with client.websocket_connect("/ws", headers=headers) as ws:
                ws.receive_text()
        assert refused.value.code == 1008, headers

"""Auth and file access on the Gradio side of the server (the UI, its API and its file routes)."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture
def files(data_dir):
    out = data_dir / "outputs" / "txt2img-images"
    out.mkdir(parents=True)
    (out / "00000-1.png").write_bytes(b"\x89PNG fake")
    (data_dir / "config.json").write_text('{"samples_format": "png"}')
    secret = data_dir.parent / "secret.txt"
    secret.write_text("top secret")
    return {"output": out / "00000-1.png", "config": data_dir / "config.json", "secret": secret}


def test_ui_login_protects_ui_api_and_files(live_server, files):
    server = live_server(nowebui=False, ui_auth={"ann": "pw-ann"}, load=False)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for path in ("/config", "/gradio_api/info", "/gradio_api/queue/status",
                     f"/gradio_api/file={files['output']}", f"/gradio_api/file={files['config']}"):
            assert c.get(path).status_code == 401, path
        assert c.get("/sdapi/v1/options").status_code == 401  # the API is covered by the same credentials
        assert c.post("/login", data={"username": "ann", "password": "wrong"}).status_code in (400, 401)
        assert c.post("/login", data={"username": "ann", "password": "pw-ann"}).status_code == 200
        assert c.get("/config").status_code == 200
        assert c.get(f"/gradio_api/file={files['output']}").status_code == 200
        for path in (files["config"], files["secret"], "/etc/passwd",
                     f"{files['output'].parent}/../../config.json"):
            assert c.get(f"/gradio_api/file={path}").status_code in (403, 404), path
        assert c.get("/sdapi/v1/options", auth=("ann", "pw-ann")).status_code == 200


def test_without_auth_only_outputs_are_served(live_server, files):
    link = files["output"].parent / "00001-2.png"
    link.symlink_to(files["secret"])  # inside the outputs folder, pointing outside it
    server = live_server(nowebui=False, load=False)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get("/").status_code == 200
        assert c.get(f"/gradio_api/file={files['output']}").status_code == 200
        for path in (files["config"], files["secret"], "/etc/passwd", link):
            assert c.get(f"/gradio_api/file={path}").status_code in (403, 404), path


def test_startup_and_page_load_make_no_network_calls(live_server):
    """The conftest guard records any non-loopback connection; starting the full server and loading the page and
    its config must make none (no hub, no analytics, no CDN)."""
    server = live_server(nowebui=False)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get("/").status_code == 200 and c.get("/config").status_code == 200

"""Extensions through the server: the shipped example's script (``script_name``), tab, route, setting and hooks,
A1111's ``/sdapi/v1/extensions``, 403 for installing and toggling while exposed, a failing extension listed while
the server serves, and the Extensions tab's handlers."""

from __future__ import annotations

import base64
import json
import shutil
import textwrap
import zipfile
from pathlib import Path

import httpx
from starlette.testclient import TestClient

from modules.app import App, StartOptions
from modules.paths import PROJECT_ROOT
from webui.launch_options import ServerConfig
from webui.server import create_server

EXAMPLE = PROJECT_ROOT / "extensions" / "example"
A1111_KEYS = ["name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"]
SMALL = {"prompt": "a house", "steps": 2, "width": 64, "height": 64, "seed": 5}


def _tabs(config: dict) -> dict[str, str]:
    """elem_id -> label of every tab in a Gradio page config."""
    return {c["props"].get("elem_id"): c["props"].get("label") for c in config["components"]
            if c.get("type") == "tabitem"}


def test_the_example_adds_its_script_route_setting_and_hooks(data_dir, live_server):
    shutil.copytree(EXAMPLE, data_dir / "extensions" / "example")  # the data folder's copy is the one loaded
    (data_dir / "config.json").write_text(json.dumps({"enabled_extensions": ["example"]}))
    server = live_server()
    assert server.app.extensions.get("example").path == data_dir / "extensions" / "example"
    with httpx.Client(base_url=server.url, timeout=120) as c:
        listed = c.get("/sdapi/v1/extensions").json()
        assert [list(e) for e in listed] == [A1111_KEYS] and listed[0]["name"] == "example"
        assert listed[0]["enabled"] is True and listed[0]["version"] == "1.0.0"
        assert {"example seed sweep", "example hooks"} <= set(c.get("/sdapi/v1/scripts").json()["txt2img"])

        assert c.post("/sdapi/v1/options", json={"example_prompt_suffix": ", at dusk"}).status_code == 200
        r = c.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "Example seed sweep", "script_args": [2]})
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert len(r.json()["images"]) == 2 and info["all_seeds"] == [5, 6]
        assert info["prompt"] == "a house, at dusk"  # the before hook
        assert c.get("/sdapi/v1/example/stats").json() == {  # the after hook, read through the route
            "generations": 2, "images": 2, "last_prompt": "a house, at dusk", "last_seeds": [6]}
        assert c.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200  # hooks run for every job
        assert c.get("/sdapi/v1/example/stats").json()["generations"] == 3
        r = c.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "example seed sweep", "script_args": [99]})
        assert r.status_code == 422 and r.json()["field"] == "script_args"
    assert server.app.settings.sections()["Example"][0].key == "example_prompt_suffix"


def client(app: App, nowebui: bool = True, users: dict[str, str] | None = None) -> TestClient:
    config = ServerConfig("127.0.0.1", 7860, nowebui, users or {}, {}, False, {})
    return TestClient(create_server(app, config), base_url="http://127.0.0.1:7860")


def make_app(data_dir: Path, **options) -> App:
    return App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True, **options))


def zipped(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("zipped/extension.toml", 'name = "zipped"\nrequirements = ["pillow>=10", "nope-pkg==1"]\n')
        zf.writestr("zipped/main.py", "def setup(api):\n    pass\n")
    return path


def test_installing_and_toggling_are_refused_with_403_while_exposed(data_dir, tmp_path):
    archive = str(zipped(tmp_path / "z.zip"))
    c = client(make_app(data_dir, exposed=True))
    for path, body in (("enable", {"name": "example", "enabled": True}), ("install", {"source": archive})):
        r = c.post(f"/sdapi/v1/extensions/{path}", json=body)
        assert r.status_code == 403 and "--enable-insecure-extension-access" in r.json()["detail"], r.text
    assert c.get("/sdapi/v1/extensions").status_code == 200 and not (data_dir / "extensions" / "zipped").exists()

    c = client(make_app(data_dir, exposed=True, extension_access=True))
    r = c.post("/sdapi/v1/extensions/install", json={"source": archive, "dry_run": True})
    assert r.status_code == 200 and r.json()["requirements"][1] == "nope-pkg==1 (not installed)", r.text
    assert not (data_dir / "extensions" / "zipped").exists()
    r = c.post("/sdapi/v1/extensions/install", json={"source": archive})
    assert r.status_code == 200 and r.json()["status"] == "enabled; loads at the next start", r.text
    assert c.post("/sdapi/v1/extensions/enable", json={"name": "zipped", "enabled": False}).status_code == 200
    assert c.post("/sdapi/v1/extensions/enable", json={"name": "nope", "enabled": False}).status_code == 404
    r = c.post("/sdapi/v1/extensions/install", json={"source": str(tmp_path / "absent.zip")})
    assert r.status_code == 422 and r.json()["field"] == "source"

    users = {"alice": "pw", "bob": "pw"}
    c = client(make_app(data_dir, admin_users=("alice",)), users=users)
    body = {"name": "zipped", "enabled": True}
    bob = "Basic " + base64.b64encode(b"bob:pw").decode()
    assert c.post("/sdapi/v1/extensions/enable", json=body, headers={"Authorization": bob}).status_code == 403
    alice = "Basic " + base64.b64encode(b"alice:pw").decode()
    assert c.post("/sdapi/v1/extensions/enable", json=body, headers={"Authorization": alice}).status_code == 200


BROKEN_TAB = """
from fastapi import APIRouter


def setup(api):
    def build():
        raise RuntimeError("no tab today")

    api.add_tab("Boom", build)
    api.add_router(APIRouter())
"""


def test_a_failing_extension_is_listed_with_its_error_and_the_server_serves(data_dir):
    """...and the example's tab is on the page, after the built-in tabs."""
    (data_dir / "config.json").write_text(json.dumps({"enabled_extensions": ["example"]}))
    ext = data_dir / "extensions"
    for name, main in (("broken", "raise ImportError('missing piece')\n"), ("sd-models", BROKEN_TAB)):
        (ext / name).mkdir(parents=True)
        (ext / name / "extension.toml").write_text(f'name = "{name}"\n')
        (ext / name / "main.py").write_text(textwrap.dedent(main))
    app = make_app(data_dir)
    c = client(app, nowebui=False)
    assert c.get("/internal/ping").status_code == 200 and c.get("/").status_code == 200
    assert [e["name"] for e in c.get("/sdapi/v1/extensions").json()] == ["broken", "sd-models", "example"]
    from webui.ui.extensions_tab import ExtensionsHandlers

    table = ExtensionsHandlers(app).table_html()
    assert "failed: ImportError: missing piece" in table and "Traceback" not in table
    assert app.extensions.status(app.extensions.get("sd-models")) == (
        "loaded (error: its routes are not served: /sdapi/v1/sd-models is taken; "
        "its tab 'Boom' failed: RuntimeError: no tab today)")
    tabs = _tabs(c.get("/config").json())
    assert tabs["tab_ext_example_0"] == "Example" and tabs["tab_ext_sd_models_0"] == "Boom"
    assert list(tabs.values()).index("Example") < list(tabs.values()).index("Settings")


def test_the_extensions_tab_handlers(data_dir, tmp_path):
    from webui.ui.extensions_tab import ExtensionsHandlers

    app = make_app(data_dir)
    h = ExtensionsHandlers(app)
    assert "restarted" in h.notice_html() and "Read only" not in h.notice_html()
    preview, token = h.check("", "", str(zipped(tmp_path / "z.zip")))
    assert token and "nope-pkg==1 (not installed)" in preview and "pillow&gt;=10 (installed: " in preview
    message, token_after, table, toggles, _ = h.install(token, "")
    assert "Installed zipped" in message and "Restart" in message and token_after == ""
    assert "enabled; loads at the next start" in table and toggles["value"] == ["zipped"]
    assert toggles["choices"] == ["zipped", "example"]
    message, table, toggles, mode = h.apply(["example"], "none")
    assert "zipped disabled" in message and "example enabled" in message and toggles["value"] == ["example"]
    assert json.loads((data_dir / "config.json").read_text())["disabled_extensions"] == ["zipped"]
    assert "not a git URL" in h.check("no/such/place", "", None)[0]

    exposed = ExtensionsHandlers(make_app(data_dir, exposed=True))
    assert "Read only" in exposed.notice_html() and "--enable-insecure-extension-access" in exposed.notice_html()
    assert "Not saved" in exposed.apply([], "all")[0]
    assert exposed.check("", "", str(tmp_path / "z.zip"))[1] == ""

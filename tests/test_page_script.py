"""The page script and CSS (webui/ui/page_script.py) without a browser: they are in the served page, every icon
button of the built UI has an A1111 tooltip, every id the script names exists, and the prompt editing functions
(A1111's edit-attention.js and edit-order.js) give A1111's results, run in node."""

from __future__ import annotations

import json
import shutil
import subprocess

import gradio as gr
import pytest

from webui.ui import page_script as ps

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="needs node to run the page's JavaScript")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from modules.app import App, StartOptions

    app = App(StartOptions(data_dir=tmp_path_factory.mktemp("page-script"), device="cpu", skip_load_model=True))
    yield app
    app.stop()


@pytest.fixture(scope="module")
def demo(app):
    from webui.ui import build_ui

    return build_ui(app)


def _buttons(demo) -> list[gr.Button]:
    return [b for b in demo.blocks.values() if isinstance(b, gr.Button)]


def _icon_buttons(demo) -> list[gr.Button]:
    return [b for b in _buttons(demo) if "sd-tool" in (b.elem_classes or []) or ps.is_icon_text(str(b.value))]


# -- in the page


def test_script_and_css_are_in_the_built_page(demo):
    (style,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "webui_style"]
    assert style.js_on_load == ps.PAGE_JS
    assert ps.PAGE_CSS in style.value and "@media (max-width: 640px)" in style.value
    assert ps.PAGE_CSS in demo.webui_css  # also given to mount_gradio_app(css=...)


def test_the_served_page_carries_them(app):
    from fastapi.testclient import TestClient

    from webui.launch_options import ServerConfig
    from webui.server import create_server

    config = ServerConfig("127.0.0.1", 7860, False, {}, {}, False, {})
    client = TestClient(create_server(app, config), base_url="http://127.0.0.1:7860")
    page = client.get("/")
    assert page.status_code == 200
    served = client.get("/config")
    assert served.status_code == 200, served.text[:300]
    components = served.json()["components"]
    scripts = [c["props"].get("js_on_load") for c in components if c["props"].get("elem_id") == "webui_style"]
    assert scripts == [ps.PAGE_JS]
    assert "window.sdwebuiPage" in ps.PAGE_JS and "@media (max-width: 640px)" in served.text


# -- tooltips


def test_every_icon_button_has_an_a1111_tooltip(demo):
    icons = _icon_buttons(demo)
    assert len(icons) >= 20
    untitled = [(b.elem_id, b.value) for b in icons
                if b.elem_id not in ps.ID_ICONS and ps.symbol_key(str(b.value)) not in ps.SYMBOL_ICONS]
    assert not untitled, f"icon buttons with no tooltip in page_script.ID_ICONS or SYMBOL_ICONS: {untitled}"
    for b in icons:
        info = ps.icon_for(b.elem_id, str(b.value))
        assert info is not None and all(info[k].strip() for k in ("title", "name", "text")), b.elem_id
        assert len(info["text"]) <= 10, info  # the text shown instead of a symbol fits a small button


def test_a1111_texts(demo):
    assert ps.icon_for("txt2img_random_seed", "\U0001f3b2\ufe0f")["title"] == (
        "Set seed to -1, which will cause a new random number to be used every time")
    assert ps.icon_for("img2img_reuse_seed", "\u267b\ufe0f")["title"] == (
        "Reuse seed from last generation, mostly useful if it was randomized")
    assert ps.icon_for("paste", "\u2199\ufe0f")["title"] == (
        "Read generation parameters from prompt or last generation if prompt is empty into user interface.")
    assert ps.icon_for("txt2img_res_switch_btn", "\u21c5")["title"] == "Switch width/height"
    assert ps.icon_for("refresh_sd_model_checkpoint", "\U0001f504")["title"] == "Stable Diffusion checkpoint: refresh"
    assert ps.icon_for("txt2img_extra_networks", "\U0001f3b4")["title"] == "Show/hide extra networks"
    # an unknown button: by its symbol, else (one of the UI's own tool buttons) a plain title from its id
    assert ps.icon_for("somewhere_else", "\U0001f5d1\ufe0f")["title"] == "Clear prompt"
    assert ps.icon_for("my_ext_thing", "\u2603")["title"] == "My ext thing"
    assert ps.icon_for("my_ext_thing", "\u2603", tool=False) is None
    assert ps.is_icon_text("\U0001f3b2\ufe0f") and ps.is_icon_text("\u21c5") and not ps.is_icon_text("Generate")
    assert not ps.is_icon_text("\u2199\ufe0f Copy from txt2img")


def test_every_id_the_script_names_is_in_the_ui(demo):
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    missing = sorted(set(ps.ID_ICONS) - ids)
    assert not missing, f"page_script.ID_ICONS names ids the UI does not have: {missing}"
    # the keys' targets: A1111's ids
    for tab in ps.GENERATION_TABS:
        assert {f"{tab}_generate", f"{tab}_interrupt", f"{tab}_skip", f"{tab}_prompt", f"{tab}_neg_prompt",
                f"{tab}_toprow", f"{tab}_progress"} <= ids
    assert "tabs" in ids


def test_config_in_the_script_is_the_tables():
    start = ps.PAGE_JS.index("const CONFIG = ") + len("const CONFIG = ")
    config, _ = json.JSONDecoder().raw_decode(ps.PAGE_JS[start:])
    assert config == json.loads(json.dumps(ps.page_config()))
    assert config["keyedit"]["keyedit_precision_attention"] == 0.1
    assert config["keyedit"]["keyedit_precision_extra"] == 0.05
    assert config["keyedit"]["keyedit_delimiters"] == ".,\\/!?%^*;:{}=`~() "


# -- the JavaScript, in node


def _node(script: str) -> str:
    assert NODE is not None
    done = subprocess.run([NODE, "-e", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_node
def test_page_js_is_valid_javascript(tmp_path):
    path = tmp_path / "page.js"
    path.write_text(ps.PAGE_JS, encoding="utf-8")
    assert NODE is not None
    done = subprocess.run([NODE, "--check", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


ATTENTION_CASES = [
    # (text, selection start, end, up) -> (text, selection start, end)
    (("a cat, dog", 2, 5, True), ("a (cat:1.1), dog", 3, 6)),  # the selection
    (("a (cat:1.1), dog", 3, 6, True), ("a (cat:1.2), dog", 3, 6)),
    (("a (cat:1.1), dog", 3, 6, False), ("a cat, dog", 2, 5)),  # 1.0: the parentheses go
    (("a cat, dog", 2, 5, False), ("a (cat:0.9), dog", 3, 6)),
    (("a cat, dog", 9, 9, True), ("a cat, (dog:1.1)", 8, 11)),  # the word under the cursor
    (("x (a b:1.3), y", 5, 5, False), ("x (a b:1.2), y", 3, 6)),  # a block under the cursor, edited in place
    (("x <lora:name:0.8>, y", 6, 6, True), ("x <lora:name:0.85>, y", 3, 12)),  # extra networks: 0.05
    (("x <lora:name:0.95>", 6, 6, True), ("x <lora:name:1.0>", 3, 12)),  # the tag keeps 1.0
    (("x ((word)), y", 6, 6, True), ("x (word:1.3), y", 3, 7)),  # old-style emphasis converted
    (("x [word], y", 5, 5, False), ("x (word:0.8), y", 3, 7)),
    (("red cat", 0, 7, True), ("(red cat:1.1)", 1, 8)),  # several words selected
    (("a cat ", 2, 6, True), ("a (cat:1.1) ", 3, 6)),  # the trailing space stays out
    (("a\tdog", 3, 3, True), ("a\t(dog:1.1)", 3, 6)),  # a tab delimits words
    (("one, , two", 5, 5, True), ("one, , two", 5, 5)),  # nothing to weigh: unchanged
]


@needs_node
def test_edit_attention_as_a1111():
    script = (f"const core = {ps.CORE_JS}; const opts = {json.dumps(ps.KEYEDIT_DEFAULTS)};"
              f"const cases = {json.dumps([c for c, _ in ATTENTION_CASES])};"
              "console.log(JSON.stringify(cases.map(([t, s, e, up]) => {"
              "  const r = core.editAttention(t, s, e, up, opts); return [r.text, r.start, r.end]; })));")
    results = json.loads(_node(script))
    for (case, expected), got in zip(ATTENTION_CASES, results, strict=True):
        assert tuple(got) == expected, case


@needs_node
def test_edit_order_as_a1111():
    cases = [("a, b, c", 3, 3, True), ("a, b, c", 3, 3, False), ("a, b, c", 0, 0, True), ("a, b, c", 6, 6, False)]
    script = (f"const core = {ps.CORE_JS}; const cases = {json.dumps(cases)};"
              "console.log(JSON.stringify(cases.map(([t, s, e, left]) => core.editOrder(t, s, e, left))));")
    results = json.loads(_node(script))
    assert results == [{"text": " b,a, c", "start": 0, "end": 2}, {"text": "a, c, b", "start": 5, "end": 7},
                       None, None]

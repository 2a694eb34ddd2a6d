"""The extra-networks panel without a browser: user metadata beside network files, previews, what a card inserts
(and takes out again), the cards each page lists, and the panel's HTML and handlers."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from modules.networks import user_metadata as um


def _image_bytes(size: tuple[int, int] = (600, 300), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (255, 0, 0, 128) if mode == "RGBA" else "red").save(out, "PNG")
    return out.getvalue()


# --- user metadata ---------------------------------------------------------------------------------------------------


def test_metadata_file_is_beside_the_network(tmp_path):
    assert um.metadata_file(tmp_path / "a" / "b.safetensors") == tmp_path / "a" / "b.json"
    assert um.metadata_file(tmp_path / "v1.5.pt") == tmp_path / "v1.5.json"


@pytest.mark.parametrize("content", [None, "not json", "[1, 2]", '"text"', "{" * 5000 + "}" * 5000,
                                     b"\xff\xfe\x00garbage", "dir"])
def test_missing_or_broken_metadata_reads_as_empty(tmp_path, content):
    network = tmp_path / "net.safetensors"
    target = tmp_path / "net.json"
    if content == "dir":
        target.mkdir()
    elif isinstance(content, bytes):
        target.write_bytes(content)
    elif content is not None:
        target.write_text(content)
    assert um.read_user_metadata(network) == {}


def test_write_keeps_unknown_keys_and_writes_as_a1111(tmp_path):
    network = tmp_path / "net.safetensors"
    (tmp_path / "net.json").write_text(json.dumps({"vae": "kl-f8.pt", "description": "old", "my ext": [1]}))
    saved = um.write_user_metadata(network, {"description": "Rouge \u00e9t\u00e9", "activation text": "glossy"})
    assert saved == {"vae": "kl-f8.pt", "description": "Rouge \u00e9t\u00e9", "my ext": [1],
                     "activation text": "glossy"}
    text = (tmp_path / "net.json").read_text(encoding="utf-8")
    assert "\u00e9t\u00e9" in text and '\n    "vae": "kl-f8.pt"' in text  # non-ASCII kept, 4-space indent
    assert um.read_user_metadata(network) == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.json"]  # no temporary file left


def test_write_replaces_a_corrupt_file(tmp_path):
    network = tmp_path / "net.pt"
    (tmp_path / "net.json").write_text("{broken")
    assert um.write_user_metadata(network, {"notes": "n"}) == {"notes": "n"}


def test_description_from_metadata_then_text_files(tmp_path):
    network = tmp_path / "net.safetensors"
    assert um.read_description(network, {}) == ""
    (tmp_path / "net.description.txt").write_text("second")
    assert um.read_description(network, {}) == "second"
    (tmp_path / "net.txt").write_text("first")
    assert um.read_description(network, {}) == "first"
    assert um.read_description(network, {"description": ""}) == ""  # the user's (even empty) wins


def test_preview_order_and_folder(tmp_path):
    network = tmp_path / "net.safetensors"
    assert um.find_preview(network, tmp_path) is None
    (tmp_path / "net.jpg").write_bytes(b"x")
    (tmp_path / "net.preview.png").write_bytes(b"x")
    assert um.find_preview(network, tmp_path) == tmp_path / "net.preview.png"  # png before jpg
    (tmp_path / "net.png").write_bytes(b"x")
    assert um.find_preview(network, tmp_path) == tmp_path / "net.png"


def test_preview_must_stay_in_the_network_folder(tmp_path):
    root = tmp_path / "Lora"
    root.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(_image_bytes())
    os.symlink(secret, root / "net.png")
    assert um.find_preview(root / "net.safetensors", root) is None
    (root / "net.preview.webp").write_bytes(b"x")
    assert um.find_preview(root / "net.safetensors", root) == root / "net.preview.webp"


def test_thumbnails(tmp_path):
    picture = tmp_path / "p.png"
    picture.write_bytes(_image_bytes((900, 300), "RGBA"))
    uri = um.thumbnail_uri(picture)
    assert uri is not None and uri.startswith("data:image/webp;base64,")
    small = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(small.size) == um.THUMBNAIL_SIZE and small.mode == "RGBA"
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert um.thumbnail_uri(tmp_path / "bad.png") is None
    assert um.thumbnail_uri(tmp_path / "missing.png") is None
    cache = um.Thumbnails()
    assert cache.preview(picture) == uri and cache.preview(picture) == uri


def test_cover_image_from_lora_metadata(tmp_path):
    cover = base64.b64encode(_image_bytes()).decode()
    assert um.cover_image({"ssmd_cover_images": [cover]}) == _image_bytes()
    assert um.cover_image({"ssmd_cover_images": json.dumps(["", cover])}) == _image_bytes()
    assert um.cover_image({"ssmd_cover_images": "not json"}) is None
    assert um.cover_image({}) is None
    network = tmp_path / "net.safetensors"
    network.write_bytes(b"x")
    assert um.Thumbnails().cover(network, {"ssmd_cover_images": [cover]}).startswith("data:image/webp")


# --- what a card inserts ---------------------------------------------------------------------------------------------


def test_lora_text():
    assert um.lora_texts("style", {}) == ("<lora:style:1>", "")
    assert um.lora_texts("style", {}, 0.5) == ("<lora:style:0.5>", "")
    assert um.lora_texts("style", {"preferred weight": 0.8}) == ("<lora:style:0.8>", "")
    assert um.lora_texts("style", {"preferred weight": 1.0}) == ("<lora:style:1.0>", "")  # Python's str, as A1111
    assert um.lora_texts("style", {"preferred weight": 0.0}) == ("<lora:style:1>", "")  # 0: the default
    assert um.lora_texts("style", {"preferred weight": "x"}) == ("<lora:style:1>", "")
    assert um.lora_texts("style", {"preferred weight": 0.7, "activation text": "glossy, red",
                                   "negative text": "blurry"}) == ("<lora:style:0.7> glossy, red", "(blurry:1)")


def test_other_texts():
    assert um.hypernetwork_text("anime") == "<hypernet:anime:1>"
    assert um.hypernetwork_text("anime", 0.75) == "<hypernet:anime:0.75>"
    assert [um.js_number(v) for v in (1.0, 0.5, 2, 1.25)] == ["1", "0.5", "2", "1.25"]


@pytest.mark.parametrize(("prompt", "text", "expected"), [
    ("", "<lora:a:1>", " <lora:a:1>"),  # A1111 adds the separator even to an empty prompt
    ("cat", "<lora:a:1>", "cat <lora:a:1>"),
    ("cat <lora:a:0.5>, dog", "<lora:a:1>", "cat, dog"),  # the same network, whatever its weight, comes out
    ("cat <lora:a:1> glossy, dog", "<lora:a:0.8> glossy", "cat, dog"),  # with the activation text after it
    ("cat <lora:b:1>", "<lora:a:1>", "cat <lora:b:1> <lora:a:1>"),
    ("<lora:a:1> cat", "<lora:a:1>", " cat"),
    ("cat <hypernet:h:1>", "<hypernet:h:1>", "cat"),
    ("cat, badhands", "badhands", "cat,"),
    ("a b", "a.b", "a b a.b"),  # plain text is matched literally
])
def test_toggle_in_prompt(prompt, text, expected):
    assert um.toggle_network_text(prompt, text) == expected


def test_toggle_in_negative_prompt():
    assert um.toggle_network_text("ugly", "(blurry:1)", negative=True) == "ugly (blurry:1)"
    assert um.toggle_network_text("ugly (blurry:1)", "(blurry:1)", negative=True) == "ugly"
    assert um.toggle_network_text("ugly (blurry:1.2)", "(blurry:1)", negative=True) == "ugly (blurry:1.2) (blurry:1)"
    assert um.toggle_network_text("cat", "", negative=True) == "cat"


def test_lora_version():
    assert um.lora_version({}, {}) == "Unknown"
    assert um.lora_version({"ss_network_module": "networks.lora"}, {}) == "SD1"
    assert um.lora_version({"ss_v2": "True"}, {}) == "SD2"
    assert um.lora_version({"ss_base_model_version": "sdxl_base_v1-0"}, {}) == "SDXL"
    assert um.lora_version({"ss_v2": "True"}, {"sd version": "SDXL"}) == "SDXL"
    assert um.lora_version({"ss_v2": "True"}, {"sd version": "bogus"}) == "SD2"


# --- the cards of an application -------------------------------------------------------------------------------------


def _lora(path: Path, alias: str | None = None) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(path), metadata={"ss_output_name": alias} if alias else None)


@pytest.fixture
def app(data_dir):
    from modules.app import App, StartOptions

    lora = data_dir / "models" / "Lora"
    _lora(lora / "plain.safetensors")
    _lora(lora / "styles" / "red.safetensors", alias="red_style")
    _lora(lora / "styles" / "blue.safetensors", alias="plain")  # a name another file took: its file name is used
    _lora(lora / "none_alias.safetensors", alias="None")
    _lora(lora / ".hidden" / "secret.safetensors")
    hyper = data_dir / "models" / "hypernetworks"
    (hyper / "sub").mkdir(parents=True)
    for name in ("anime.pt", "sub/Zeta.pt", "None.pt", "notes.txt"):
        (hyper / name).write_bytes(b"x")
    application = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True,
                                   admin_users=("root",)))
    yield application
    application.stop()


def test_lora_cards(app):
    cards = {c.name: c for c in um.list_cards(app, "lora")}
    assert list(cards) == ["secret", "none_alias", "plain", "blue", "red"]  # by path, as the registry lists them
    assert cards["red"].insert == "red_style" and cards["red"].key == "styles/red.safetensors"
    assert cards["blue"].insert == "blue" and cards["none_alias"].insert == "none_alias"
    assert cards["plain"].insert == "plain" and cards["plain"].search_terms == "Lora/plain.safetensors"
    assert cards["secret"].search_only and not cards["red"].search_only
    assert um.find_card(app, "lora", "styles/red.safetensors") == cards["red"]
    for page, key in (("lora", "../Lora/plain.safetensors"), ("lora", "missing"), ("nope", "plain.safetensors")):
        assert um.find_card(app, page, key) is None


def test_hypernetwork_and_empty_pages(app):
    cards = um.list_cards(app, "hypernetworks")
    assert [(c.name, c.key) for c in cards] == [("anime", "anime.pt"), ("Zeta", "sub/Zeta.pt")]
    assert um.hypernetwork_text(cards[1].insert) == "<hypernet:Zeta:1>"
    assert um.list_cards(app, "checkpoints") == [] and um.list_cards(app, "textual_inversion") == []
    with pytest.raises(ValueError):
        um.list_cards(app, "styles")


# --- the panel's HTML and handlers -----------------------------------------------------------------------------------


def test_card_html_escapes_user_data(app):
    from webui.ui.extra_networks import card_html, page_html

    lora = app.paths.lora_dir
    _lora(lora / 'x<img src=x onerror=alert(1)>"q.safetensors')
    (lora / 'x<img src=x onerror=alert(1)>"q.json').write_text(json.dumps({"description": "<script>bad()</script>"}))
    (lora / "plain.png").write_bytes(_image_bytes())
    app.networks.refresh()
    cards = {c.name: c for c in um.list_cards(app, "lora")}
    hostile = card_html(cards['x<img src=x onerror=alert(1)>"q'], um.Thumbnails())
    assert "<img src=x" not in hostile and "<script>" not in hostile and "&lt;script&gt;" in hostile
    assert 'data-key="x&lt;img src=x onerror=alert(1)&gt;&quot;q.safetensors"' in hostile
    assert '<img class="preview" src="data:image/webp' in card_html(cards["plain"], um.Thumbnails())
    page = page_html(app, "txt2img", "lora", um.Thumbnails())
    assert 'id="txt2img_lora_extra_search"' in page and 'data-dir="styles/"' in page and 'data-dir=".hidden/"' in page
    empty = page_html(app, "img2img", "checkpoints", um.Thumbnails())
    assert "Nothing here" in empty and "models/Stable-diffusion" in empty


def test_card_click(app):
    from webui.ui.extra_networks import card_click

    red = um.find_card(app, "lora", "styles/red.safetensors")
    prompt, negative, status = card_click(app, red, "cat", "ugly", False, None)
    assert (prompt, status) == ("cat <lora:red_style:1>", "") and not isinstance(negative, str)
    um.write_user_metadata(red.path, {"preferred weight": 0.6, "negative text": "blue"})
    red = um.find_card(app, "lora", "styles/red.safetensors")
    assert card_click(app, red, prompt, "ugly", False, None) == ("cat", "ugly (blue:1)", "")
    anime = um.find_card(app, "hypernetworks", "anime.pt")
    assert card_click(app, anime, "", "", True, None)[0] == " <hypernet:anime:1>"  # only embeddings go negative
    assert "press refresh" in card_click(app, None, "", "", False, None)[2]


def test_save_metadata_needs_an_administrator(app):
    from webui.ui.extra_networks import save_metadata

    values = {"description": "d", "sd_version": "SDXL", "activation": "glossy", "weight": 0.80000001,
              "negative": "", "notes": "n"}
    message, page = save_metadata(app, ("lora", "plain.safetensors"), values, "guest")
    assert page is None and "administrator" in message
    assert not (app.paths.lora_dir / "plain.json").exists()
    assert save_metadata(app, ("lora", "plain.safetensors"), values, "root") == ("", "lora")
    assert json.loads((app.paths.lora_dir / "plain.json").read_text()) == {
        "description": "d", "sd version": "SDXL", "activation text": "glossy", "preferred weight": 0.8,
        "negative text": "", "notes": "n"}
    assert save_metadata(app, ("hypernetworks", "sub/Zeta.pt"), values, "root") == ("", "hypernetworks")
    assert um.read_user_metadata(app.paths.models_dir / "hypernetworks" / "sub" / "Zeta.pt") == {
        "description": "d", "notes": "n"}
    hostile = {"description": 5, "sd_version": "SD9", "weight": "heavy", "activation": None}
    assert save_metadata(app, ("lora", "plain.safetensors"), hostile, None) == ("", "lora")
    saved = um.read_user_metadata(app.paths.lora_dir / "plain.safetensors")
    assert saved["description"] == "5" and saved["sd version"] == "Unknown" and saved["preferred weight"] == 0.0
    assert "press refresh" in save_metadata(app, ("lora", "../../config"), values, "root")[0]
    assert "press refresh" in save_metadata(app, "garbage", values, "root")[0]

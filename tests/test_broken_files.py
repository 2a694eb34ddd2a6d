"""One broken checkpoint never breaks the rest: the next loadable one is used, and the broken one is marked."""

from __future__ import annotations

import json

import pytest
from PIL import Image

SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
A1111_KEYS = {"title", "model_name", "hash", "sha256", "filename", "config"}
TRUNCATED, PICTURE = "a-truncated.safetensors", "b-picture.ckpt"


@pytest.fixture
def broken(data_dir, model_store):
    """A truncated safetensors and a PNG renamed .ckpt, both sorting before the good ``tiny.safetensors``."""
    folder = data_dir / "models" / "Stable-diffusion"
    good = model_store("sd1", "safetensors").read_bytes()
    (folder / TRUNCATED).write_bytes(good[: len(good) // 2])
    Image.new("RGB", (8, 8), "red").save(folder / PICTURE, format="PNG")
    return folder


def _models(api) -> dict[str, dict]:
    r = api.get("/sdapi/v1/sd-models")
    assert r.status_code == 200
    return {m["filename"].rsplit("/", 1)[-1]: m for m in r.json()}


def _client(server):
    import httpx

    return httpx.Client(base_url=server.url, timeout=120)


def test_start_uses_the_next_loadable_checkpoint(live_server, broken, caplog):
    caplog.set_level("WARNING")
    server = live_server()
    app = server.app
    assert app.models.current is not None and app.models.current.info.name == "tiny.safetensors"
    assert app.model_status.state == "loaded"
    assert app.settings["sd_model_checkpoint"].startswith("tiny.safetensors")
    assert "instead of the default checkpoint" in caplog.text
    with _client(server) as api:
        assert api.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
        models = _models(api)
        assert set(models["tiny.safetensors"]) == A1111_KEYS  # a good entry keeps exactly A1111's keys
        for name in (TRUNCATED, PICTURE):
            assert set(models[name]) == A1111_KEYS | {"error"} and models[name]["error"], name
        for name in (TRUNCATED, PICTURE):  # naming a broken file explicitly: 422 naming it
            r = api.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": name}})
            assert r.status_code == 422, r.text
            assert name in r.json()["detail"] and "Traceback" not in r.text
        assert api.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200  # and the rest still works


def test_first_request_without_a_loaded_model_falls_back(live_server, broken):
    server = live_server(load=False)
    with _client(server) as api:
        r = api.post("/sdapi/v1/txt2img", json=SMALL)
        assert r.status_code == 200, r.text
        assert set(_models(api)[TRUNCATED]) >= {"error"}
    assert server.app.models.current.info.name == "tiny.safetensors"


def test_a_setting_naming_a_broken_file_falls_back(live_server, broken, data_dir):
    (data_dir / "config.json").write_text(json.dumps({"sd_model_checkpoint": PICTURE}))
    server = live_server()
    app = server.app
    assert app.models.current.info.name == "tiny.safetensors"
    assert app.settings["sd_model_checkpoint"].startswith("tiny.safetensors")
    with _client(server) as api:
        assert api.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200


def test_choosing_a_broken_file_is_refused_and_the_model_stays(live_server, broken):
    server = live_server()
    before = server.app.settings["sd_model_checkpoint"]
    with _client(server) as api:
        r = api.post("/sdapi/v1/options", json={"sd_model_checkpoint": TRUNCATED})
        assert r.status_code == 422 and TRUNCATED in r.json()["detail"]
        assert api.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == before
        assert api.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200


def test_a_repaired_file_is_tried_again(live_server, broken, model_store):
    server = live_server()
    registry = server.app.registry
    info = registry.find(TRUNCATED)
    assert registry.error_of(info)
    (broken / TRUNCATED).write_bytes(model_store("sd1", "safetensors").read_bytes())
    assert registry.error_of(info) is None


def test_the_ui_checkpoint_list_shows_broken_files(live_server, broken):
    from webui.ui.quicksettings import checkpoint_choices

    server = live_server()
    labels = {value: label for label, value in checkpoint_choices(server.app)}
    assert len(labels) == 3
    for title, label in labels.items():
        if title.startswith(("a-", "b-")):
            assert label.startswith(f"{title} (broken: "), label
        else:
            assert label == title


def test_broken_refiner_or_hires_checkpoint_fails_the_job_with_422_and_the_rest_works(live_server, broken):
    server = live_server()
    with _client(server) as api:
        for body in ({**SMALL, "refiner_checkpoint": PICTURE, "refiner_switch_at": 0.5},
                     {**SMALL, "enable_hr": True, "hr_scale": 1.0, "hr_checkpoint_name": TRUNCATED}):
            r = api.post("/sdapi/v1/txt2img", json=body)
            assert r.status_code == 422, r.text
            assert "Traceback" not in r.text and ("b-picture" in r.text or "a-truncated" in r.text)
        assert api.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200

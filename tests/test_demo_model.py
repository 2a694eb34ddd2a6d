"""The built-in demo model: its world (renderer and judge), the defaults a model carries in its metadata, the
demo loaded only when no other checkpoint is there, and (with the shipped file) what it draws."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from modules.models import demo
from modules.models.model_defaults import KEY, read_defaults
from tests.conftest import install_model

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / f"{demo.DEMO_NAME}.safetensors"


def test_the_judge_reads_every_rendered_scene():
    rng = random.Random(0)
    for _ in range(200):
        scene = demo.random_scene(rng)
        seen = demo.judge(demo.render(scene))
        assert (seen.background, seen.colour, seen.shape) == (scene.background, scene.colour, scene.shape)
    assert demo.judge(demo.render(demo.Scene("circle", "red", "red", (10, 10, 60, 60)))).shape is None


def _with_metadata(source: Path, target: Path, defaults: object) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(source)), str(target), metadata={KEY: json.dumps(defaults)})
    config = source.with_suffix("")
    if config.is_dir():
        shutil.copytree(config, target.with_suffix(""))
    return target


def test_defaults_from_metadata_are_checked(tmp_path, model_store):
    source = model_store("sd1", "safetensors")
    good = _with_metadata(source, tmp_path / "a.safetensors",
                          {"width": 128, "height": 128, "steps": 12, "sampler_name": "Euler", "cfg_scale": 4})
    assert read_defaults(good) == {"width": 128, "height": 128, "steps": 12, "sampler_name": "Euler",
                                   "cfg_scale": 4.0}
    bad = _with_metadata(source, tmp_path / "b.safetensors",
                         {"width": 100, "height": -8, "steps": "20", "cfg_scale": True, "other": 1})
    assert read_defaults(bad) == {}
    assert read_defaults(source) == {}
    (tmp_path / "c.safetensors").write_bytes(b"\x00" * 4)
    assert read_defaults(tmp_path / "c.safetensors") == {}


@pytest.fixture
def demo_and_other(data_dir, model_store):
    """A data folder with a demo-named tiny model (carrying 64x64 defaults) and, optionally, another model."""
    target = data_dir / "models" / "Stable-diffusion" / f"{demo.DEMO_NAME}.safetensors"
    _with_metadata(model_store("sd1", "safetensors"), target,
                   {"width": 64, "height": 64, "steps": 3, "sampler_name": "Euler", "scheduler": "Automatic"})
    return data_dir


def test_the_demo_loads_only_when_nothing_else_is_there(demo_and_other, model_store):
    from modules.app import App, StartOptions

    data_dir = demo_and_other
    app = App(StartOptions(data_dir=data_dir, device="cpu"))
    app.start()
    try:
        assert app.queue.wait_idle(60)
        assert app.models.current.info.name == f"{demo.DEMO_NAME}.safetensors"
        assert app.settings["sd_model_checkpoint"] == ""  # not remembered: a model added later is the default
        assert app.selected_checkpoint() == app.models.current.info.title
        assert app.model_defaults()["width"] == 64
    finally:
        app.stop()
    install_model(data_dir, model_store("sd1", "safetensors"), "zzz-mine")
    app = App(StartOptions(data_dir=data_dir, device="cpu"))
    app.start()
    try:
        assert app.queue.wait_idle(60)
        assert app.models.current.info.name == "zzz-mine.safetensors"  # after the demo in name order, yet first
        assert app.model_defaults() == {}
        assert app.model_defaults(f"{demo.DEMO_NAME}.safetensors")["steps"] == 3
    finally:
        app.stop()


def test_api_fields_left_out_take_the_models_defaults(demo_and_other, live_server):
    import httpx

    server = live_server(models=())
    with httpx.Client(base_url=server.url, timeout=120) as client:
        info = json.loads(client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle"}).json()["info"])
        assert (info["width"], info["height"], info["steps"], info["sampler_name"]) == (64, 64, 3, "Euler")
        info = json.loads(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 72, "steps": 2}).json()
                          ["info"])
        assert (info["width"], info["height"], info["steps"]) == (72, 64, 2)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the demo model file is not in this checkout")
def test_the_shipped_demo_model_draws_what_it_is_asked(engine_factory, data_dir):
    from modules.requests import GenerationRequest

    target = data_dir / "models" / "Stable-diffusion"
    shutil.copy2(SHIPPED, target / SHIPPED.name)
    shutil.copytree(SHIPPED.with_suffix(""), target / SHIPPED.stem)
    assert SHIPPED.stat().st_size <= 40 * 2**20
    engine = engine_factory()
    rng = random.Random(7)
    hits = [0, 0, 0]
    cases = 6
    for _ in range(cases):
        scene = demo.random_scene(rng)
        req = GenerationRequest(prompt=scene.caption, seed=rng.randrange(2**31), width=128, height=128, steps=20,
                                sampler_name="DPM++ 2M", scheduler="Karras", cfg_scale=5.0)
        seen = demo.judge(engine.txt2img(req).result.images[0])
        hits[0] += seen.background == scene.background
        hits[1] += seen.colour == scene.colour
        hits[2] += seen.shape == scene.shape
    assert hits[0] >= cases - 1 and hits[1] >= cases - 2 and hits[2] >= cases - 3, hits

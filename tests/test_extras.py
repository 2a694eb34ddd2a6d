"""Extras through the API: upscaling by a factor and to a size, a second upscaler blended in, batches, the jobs
API, and bad input answered with 422."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from modules.upscalers.spandrel_loader import spandrel


def _compact(upscale: int):
    spandrel()
    from spandrel.architectures.Compact import Compact

    return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=upscale)


@pytest.fixture
def server(api, data_dir):
    folder = data_dir / "models" / "RealESRGAN"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_compact(4).state_dict(), str(folder / "tiny4x.safetensors"))
    save_file(_compact(2).state_dict(), str(folder / "tiny2x.safetensors"))
    return api


def _png(width: int, height: int, parameters: str | None = None) -> str:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def _open(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def test_scale_by_keeps_the_parameters_and_adds_the_postprocessing_entry(server):
    r = server.post("/sdapi/v1/extra-single-image", json={
        "image": _png(40, 32, "a cat\nSteps: 20, Seed: 1, Size: 40x32"), "upscaler_1": "tiny4x",
        "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    out = _open(body["image"])
    assert out.size == (80, 64)
    assert out.info["parameters"] == "a cat\nSteps: 20, Seed: 1, Size: 40x32"
    assert out.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: tiny4x"
    assert body["html_info"] == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: tiny4x</p>"


def test_scale_to_with_crop_and_a_second_upscaler(server):
    r = server.post("/sdapi/v1/extra-single-image", json={
        "image": _png(40, 30), "resize_mode": 1, "upscaling_resize_w": 96, "upscaling_resize_h": 96,
        "upscaling_crop": True, "upscaler_1": "tiny4x", "upscaler_2": "tiny2x", "extras_upscaler_2_visibility": 0.5})
    assert r.status_code == 200, r.text
    out = _open(r.json()["image"])
    assert out.size == (96, 96)
    assert out.info["postprocessing"] == ('Postprocess upscale to: 96x96, Postprocess crop to: 96x96, '
                                          'Postprocess upscaler: tiny4x, Postprocess upscaler 2: tiny2x')
    plain = server.post("/sdapi/v1/extra-single-image", json={"image": _png(40, 30), "upscaler_1": "None"})
    assert _open(plain.json()["image"]).size == (40, 30) and plain.json()["html_info"] == "<p></p>"


def test_batch_and_the_jobs_api(server):
    images = [{"data": _png(16, 16), "name": "a.png"}, {"data": _png(24, 8), "name": "b.png"}]
    r = server.post("/sdapi/v1/extra-batch-images", json={"imageList": images, "upscaler_1": "tiny2x"})
    assert r.status_code == 200, r.text
    assert [_open(i).size for i in r.json()["images"]] == [(32, 32), (48, 16)]
    accepted = server.post("/sdapi/v2/extra-single-image", json={"image": _png(16, 16), "upscaler_1": "tiny2x"})
    assert accepted.status_code == 202
    job_id = accepted.json()["id"]
    import time

    for _ in range(200):
        job = server.get(f"/sdapi/v2/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert job["state"] == "succeeded", job
    assert job["kind"] == "extras" and _open(job["result"]["images"][0]).size == (32, 32)


@pytest.mark.parametrize("changes,field", [
    ({"upscaler_1": "4x-Missing"}, "upscaler_1"),
    ({"upscaler_1": "tiny2x", "upscaler_2": "nope", "extras_upscaler_2_visibility": 0.3}, "upscaler_2"),
    ({"image": "bm90IGFuIGltYWdl"}, "image"),
    ({"gfpgan_visibility": 0.5, "upscaler_1": "tiny2x"}, "gfpgan_visibility"),
    ({"upscaling_resize": 9, "upscaler_1": "tiny2x"}, "upscaling_resize"),
])
def test_bad_input_is_a_422_naming_the_field(server, changes, field):
    r = server.post("/sdapi/v1/extra-single-image", json={"image": _png(16, 16), **changes})
    assert r.status_code == 422, r.text
    assert field in r.text
    if field == "upscaler_1":
        assert "tiny4x" in r.text  # the names installed are listed
    empty = server.post("/sdapi/v1/extra-batch-images", json={"imageList": [], "upscaler_1": "tiny2x"})
    assert empty.status_code == 422


def test_the_tab_refuses_a_cleared_number_with_a_message():
    from modules.errors import WebUIError
    from webui.ui.extras import extras_request

    values = {"source": 0, "image": Image.new("RGB", (8, 8)), "resize_mode": 1, "upscaling_resize": 2.0,
              "upscaling_resize_w": None, "upscaling_resize_h": 64, "upscaling_crop": True, "upscaler_1": "Lanczos",
              "upscaler_2": "None", "upscaler_2_visibility": 0.0}
    with pytest.raises(WebUIError, match="Width: enter a number"):
        extras_request(None, values)  # type: ignore[arg-type]
    assert extras_request(None, {**values, "upscaling_resize_w": 64}).upscaling_resize_w == 64  # type: ignore[arg-type]


def _dir_values(input_dir, output_dir, show: bool) -> dict:
    return {"source": 2, "image": None, "batch": None, "input_dir": str(input_dir), "output_dir": str(output_dir),
            "show_results": show, "resize_mode": 0, "upscaling_resize": 2.0, "upscaling_resize_w": 64,
            "upscaling_resize_h": 64, "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "None",
            "upscaler_2_visibility": 0.0}


def test_batch_from_directory_saves_under_the_original_names_and_reports_what_it_skipped(data_dir, tmp_path):
    from modules.app import App, StartOptions
    from webui.ui.extras import run

    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    _open(_png(8, 12)).save(source / "first photo.png",
                                                                   pnginfo=_pnginfo("a dog\nSteps: 4"))
    Image.new("RGB", (12, 4), "red").save(source / "second.jpg")
    (source / "notes.txt").write_text("not an image")
    app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
    app.start()
    try:
        gallery, info, message = run(app, _dir_values(source, out, show=False), None)
        assert gallery == [] and "Postprocess upscale by: 2.0" in info
        assert "Saved 2" in message and "Skipped notes.txt: not an image" in message
        first = Image.open(out / "first photo.png")
        assert first.size == (16, 24) and first.info["parameters"] == "a dog\nSteps: 4"
        assert first.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
        assert Image.open(out / "second.png").size == (24, 8)
        gallery, _, _ = run(app, _dir_values(source, out, show=True), None)
        assert len(gallery) == 2 and (out / "first photo-1.png").exists()  # nothing overwritten
        gallery, _, message = run(app, _dir_values(tmp_path / "missing", out, show=True), None)
        assert "input directory not found" in message
    finally:
        app.stop()
    exposed = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True, exposed=True))
    _, _, message = run(exposed, _dir_values(source, out, show=True), None)
    assert "server folders cannot be used" in message


def _pnginfo(text: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info


def test_training_preparation_makes_flipped_captioned_copies(data_dir, tmp_path):
    import torch

    from modules.app import App, StartOptions
    from modules.interrogate.deepbooru import MODEL_FILE
    from tests.test_deepbooru import DIVISOR, TAGS, gradient_image, seeded_state
    from webui.ui.extras import run

    folder = data_dir / "models" / "torch_deepdanbooru"
    folder.mkdir(parents=True)
    torch.save({**seeded_state(DIVISOR, len(TAGS)), "tags": TAGS}, folder / MODEL_FILE)
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    gradient_image(64, 48).save(source / "pic.png")
    (source / "pic.txt").write_text("my caption", encoding="utf-8")
    values = {**_dir_values(source, out, show=True), "upscaler_1": "None", "gfpgan_enable": False,
              "gfpgan_visibility": 1.0, "codeformer_enable": False, "codeformer_visibility": 1.0,
              "codeformer_weight": 0.0, "split_enable": False, "split_threshold": 0.5, "overlap_ratio": 0.2,
              "focal_crop_enable": False, "face_weight": 0.9, "entropy_weight": 0.15, "edges_weight": 0.5,
              "focal_debug": False, "autosized_crop_enable": False, "mindim": 384, "maxdim": 768, "minarea": 4096,
              "maxarea": 409600, "objective": "Maximize area", "error_threshold": 0.1, "flip_enable": True,
              "flip_option": ["Horizontal"], "caption_enable": True, "caption_option": ["Deepbooru"]}
    app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
    app.settings.update({"postprocessing_existing_caption_action": "Prepend"})
    app.start()
    try:
        gallery, _, message = run(app, values, None)
        assert len(gallery) == 2 and "Saved 2" in message, message
        first, flipped = Image.open(out / "pic.png"), Image.open(out / "pic-1.png")
        assert np.array_equal(np.asarray(flipped), np.asarray(first)[:, ::-1])
        captions = [(out / n).read_text(encoding="utf-8") for n in ("pic.txt", "pic-1.txt")]
        assert all(c.startswith("my caption ") and len(c) > len("my caption ") for c in captions)
        values["caption_option"] = ["BLIP"]
        _, _, message = run(app, values, None)
        assert "models/BLIP" in message  # the captioner's model is missing: named before anything runs
    finally:
        app.stop()

"""POST /sdapi/v1/img2img and /sdapi/v2/img2img on a live server, with A1111 clients' bodies."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from modules.images import read_parameters


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + b64(image)


def picture(size=(64, 64), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


# what webuiapi 0.9.17 sends for img2img (every key; its defaults)
def webuiapi_body(image: Image.Image, mask: Image.Image | None = None) -> dict:
    body = {
        "init_images": [data_url(image)], "resize_mode": 0, "denoising_strength": 0.75, "image_cfg_scale": 1.5,
        "mask_blur": 4, "inpainting_fill": 0, "inpaint_full_res": True, "inpaint_full_res_padding": 0,
        "inpainting_mask_invert": 0, "initial_noise_multiplier": 1, "prompt": "cute cat", "styles": [],
        "seed": 5555, "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
        "batch_size": 1, "n_iter": 1, "steps": 3, "cfg_scale": 6.5, "width": 64, "height": 64,
        "restore_faces": False, "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False,
        "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
        "override_settings": {}, "override_settings_restore_afterwards": True, "sampler_name": "Euler a",
        "scheduler": "automatic", "sampler_index": "Euler a", "include_init_images": False, "script_name": None,
        "script_args": [], "send_images": True, "save_images": False, "alwayson_scripts": {},
    }
    if mask is not None:
        body["mask"] = data_url(mask)
    return body


def test_webuiapi_img2img_and_inpaint(api):
    image = picture()
    r = api.post("/sdapi/v1/img2img", json=webuiapi_body(image))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["parameters"]["init_images"] is None  # not echoed unless include_init_images
    info = json.loads(body["info"])
    out = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert out.size == (64, 64) and read_parameters(out) == info["infotexts"][0]
    assert "Denoising strength: 0.75" in info["infotexts"][0] and info["seed"] == 5555
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 44, 44))
    r = api.post("/sdapi/v1/img2img", json=webuiapi_body(image, mask))
    assert r.status_code == 200, r.text
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Inpaint area: Only masked" in text and "Masked content: fill" in text and "Mask blur: 4" in text
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"), np.int16)
    assert np.abs(out - np.asarray(image, np.int16))[:10, :10].max() <= 1


def test_raw_base64_mask_of_another_size_and_include_init_images(api):
    image = picture((96, 64))
    mask = Image.new("RGB", (48, 32), "black")
    body = {"init_images": [b64(image)], "mask": b64(mask.resize((30, 20))), "width": 96, "height": 64,
            "steps": 2, "include_init_images": True, "inpaint_full_res": False}
    r = api.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["init_images"] == [body["init_images"][0]]


@pytest.mark.parametrize("body,field", [
    ({"init_images": []}, "init_images"),
    ({}, "init_images"),
    ({"init_images": ["not base64 at all!!"]}, "init_images[0]"),
    ({"init_images": [base64.b64encode(b"hello, not an image").decode()]}, "init_images[0]"),
    ({"init_images": ["https://example.com/cat.png"]}, "init_images[0]"),
    ({"init_images": ["data:image/png;base64,"]}, "init_images[0]"),
    ({"mask": "garbage"}, "mask"),
    ({"denoising_strength": 3}, "denoising_strength"),
    ({"inpainting_fill": 7}, "inpainting_fill"),
    ({"width": 63}, "width"),
])
def test_bad_img2img_requests_are_4xx_and_queue_nothing(api, body, field):
    count = len(api.server.app.queue.jobs())
    full = {"init_images": [data_url(picture())], "steps": 2, "width": 64, "height": 64, **body}
    if body == {}:
        full.pop("init_images")
    r = api.post("/sdapi/v1/img2img", json=full)
    assert r.status_code in (400, 422), r.text
    assert r.json()["field"] == field
    assert len(api.server.app.queue.jobs()) == count


def test_decompression_bomb_is_refused(api):
    big = Image.new("1", (9000, 9000))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    r = api.post("/sdapi/v1/img2img", json={"init_images": [base64.b64encode(buf.getvalue()).decode()]})
    assert r.status_code == 422 and "too large" in r.json()["detail"]


def test_async_img2img(api):
    r = api.post("/sdapi/v2/img2img", json={"init_images": [data_url(picture())], "steps": 2, "width": 64,
                                            "height": 64, "seed": 4})
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert api.server.app.queue.get(job_id).wait(120)
    detail = api.get(f"/sdapi/v2/jobs/{job_id}").json()
    assert detail["state"] == "succeeded" and detail["kind"] == "img2img"
    assert json.loads(detail["result"]["info"])["all_seeds"] == [4]


def test_img2img_outputs_saved_when_asked(api):
    r = api.post("/sdapi/v1/img2img", json={"init_images": [data_url(picture())], "steps": 2, "width": 64,
                                            "height": 64, "seed": 8, "save_images": True})
    assert r.status_code == 200
    saved = list((api.server.app.paths.outputs_dir / "img2img-images").rglob("*.png"))
    assert [p.name for p in saved] == ["00000-8.png"]

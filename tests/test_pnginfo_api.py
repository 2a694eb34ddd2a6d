"""``POST /sdapi/v1/png-info`` on a live server, and the round trip: generate, read back, regenerate identically."""

from __future__ import annotations

import base64
import io
import json
import random

import numpy as np
from PIL import Image

from modules.metadata import read_metadata
from tests.test_metadata import IMAGES, INFOTEXT, jpeg, png, text_chunk


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _info(api, image: str):
    return api.post("/sdapi/v1/png-info", json={"image": image})


def test_png_info_shapes(api):
    data = png(before=[text_chunk("parameters", INFOTEXT), text_chunk("Software", "Tool")])
    for image in (b64(data), "data:image/png;base64," + b64(data), "\n".join(b64(data)[i:i + 76] for i in
                                                                               range(0, len(b64(data)), 76))):
        r = _info(api, image)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["info"] == INFOTEXT and body["tool"] == "A1111"
        assert body["items"] == {"Software": "Tool"}  # A1111's shape: the text is in "info"
        assert body["raw_items"] == {"parameters": INFOTEXT, "Software": "Tool"}  # every item as written
        assert body["parameters"]["Steps"] == 25 and body["parameters"]["Size-1"] == 512
    comfy = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 6, "cfg": 3, "sampler_name": "dpmpp_2m",
                                                         "scheduler": "karras", "positive": ["6", 0],
                                                         "negative": ["6", 0], "latent_image": ["5", 0]}},
             "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 96, "batch_size": 1}},
             "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bird"}}}
    body = _info(api, b64(png(after=[text_chunk("prompt", json.dumps(comfy))]))).json()
    assert body["tool"] == "ComfyUI" and "prompt" in body["items"]
    assert body["info"].startswith("a bird\nNegative prompt: a bird\n"
                                   "Steps: 6, Sampler: DPM++ 2M, Schedule type: Karras")


def test_png_info_without_metadata_and_jpeg(api):
    body = _info(api, b64(jpeg())).json()
    assert body["info"] == "" and body["parameters"] == {} and body["items"] == {} and body["tool"] is None
    assert body["raw_items"] == {}
    if IMAGES.is_dir():
        raw = (IMAGES / "automatic1111/automatic1111_cropped.jpg").read_bytes()
        assert _info(api, b64(raw)).json()["parameters"]["Seed"] == 235284042


def test_png_info_new_formats_keep_raw_items(api):
    from tests.test_metadata_savers import GRAPH, IMAGE_SAVER, RUINED, WORKFLOW

    exif = Image.Exif()
    exif[0x9286] = json.dumps({"prompt": GRAPH, "workflow": WORKFLOW})
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "WEBP", exif=exif.tobytes())
    body = _info(api, b64(buf.getvalue())).json()
    assert body["tool"] == "ComfyUI" and body["parameters"]["Seed"] == 123456 and "UserComment" in body["items"]
    text = IMAGE_SAVER.format(sampler="DPM++ 2M Karras")
    body = _info(api, b64(png(before=[text_chunk("parameters", text), text_chunk("prompt", json.dumps(GRAPH))]))).json()
    assert body["tool"] == "ComfyUI" and body["raw_items"]["parameters"] == text and "prompt" in body["items"]
    body = _info(api, b64(png(before=[text_chunk("parameters", json.dumps(RUINED))]))).json()
    assert body["tool"] == "Ruined Fooocus" and body["parameters"]["Steps"] == 30
    assert json.loads(body["raw_items"]["parameters"]) == RUINED


BAD = [("", "no image"), (None, "no image"), ("not base64 at all!!", "base64"),
       (b64(b"just some text, not a picture"), "not an image"), ("http://127.0.0.1/x.png", "URLs"),
       ("data:image/png;base64,", "empty"), (b64(b"\x89PNG\r\n\x1a"), "not an image")]


def test_png_info_bad_input(api):
    for image, words in BAD:
        r = _info(api, image)
        assert r.status_code == 422, (image, r.text)
        assert words in r.json()["detail"] and r.json()["field"] == "image", (image, r.text)


def test_png_info_oversized_and_malformed_bodies(api, monkeypatch):
    import webui.api.pnginfo as pnginfo

    monkeypatch.setattr(pnginfo, "MAX_IMAGE_BYTES", 1000)
    r = _info(api, b64(png(before=[text_chunk("parameters", "x" * 5000)])))
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    monkeypatch.undo()
    assert api.post("/sdapi/v1/png-info", content=b"{nope", headers={"content-type": "application/json"}
                    ).status_code == 422
    assert api.post("/sdapi/v1/png-info", json={"image": 5}).status_code == 422


def test_png_info_never_5xx_on_damaged_files(api):
    rng = random.Random(11)
    sample = png(before=[text_chunk("parameters", INFOTEXT, "zTXt")])
    for _ in range(40):
        data = bytearray(sample[: rng.randrange(1, len(sample))])
        for _ in range(rng.randint(0, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        r = _info(api, b64(bytes(data)))
        assert r.status_code in (200, 422), r.text


def _pixels(b64_png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64_png))).convert("RGB"))


def test_round_trip_txt2img_with_hires_fix(api):
    first = api.post("/sdapi/v1/txt2img", json={
        "prompt": "a lighthouse, (stormy sea:1.2)", "negative_prompt": "blurry", "seed": 321, "steps": 3,
        "width": 64, "height": 64, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "cfg_scale": 6.5,
        "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2, "denoising_strength": 0.55,
        "hr_upscaler": "Latent (nearest-exact)", "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert first.status_code == 200, first.text
    image = first.json()["images"][0]
    md = read_metadata(base64.b64decode(image))
    assert md.tool == "sdwebui" and md.parameters["Hires upscale"] == 1.5 and md.parameters["Clip skip"] == 2
    info = _info(api, image).json()["info"]
    assert info == md.infotext == json.loads(first.json()["info"])["infotexts"][0]
    again = api.post("/sdapi/v1/txt2img", json={"infotext": info})
    assert again.status_code == 200, again.text
    assert _pixels(again.json()["images"][0]).shape == (96, 96, 3)
    assert np.array_equal(_pixels(again.json()["images"][0]), _pixels(image))


def test_round_trip_img2img(api):
    source = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    source.save(buf, "PNG")
    init = "data:image/png;base64," + b64(buf.getvalue())
    first = api.post("/sdapi/v1/img2img", json={"init_images": [init], "prompt": "a cat", "seed": 77, "steps": 4,
                                                 "denoising_strength": 0.6, "width": 64, "height": 64,
                                                 "sampler_name": "Euler a", "cfg_scale": 5})
    assert first.status_code == 200, first.text
    image = first.json()["images"][0]
    md = read_metadata(base64.b64decode(image))
    assert md.parameters["Denoising strength"] == 0.6
    again = api.post("/sdapi/v1/img2img", json={"init_images": [init], "infotext": md.infotext})
    assert again.status_code == 200, again.text
    assert np.array_equal(_pixels(again.json()["images"][0]), _pixels(image))

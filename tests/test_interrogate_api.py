"""``/sdapi/v1/interrogate`` (and the jobs API, and img2img's buttons): ``clip`` and ``deepdanbooru`` from the user's
model files, the same strings the interrogators give directly; missing models and bad input are 422s naming what
to do."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
import torch
from PIL import Image

from modules.interrogate.clip import ClipInterrogateOptions, ClipInterrogator
from modules.interrogate.deepbooru import MODEL_FILE, DeepBooru
from tests.test_deepbooru import DIVISOR, TAGS, gradient_image, seeded_state
from tests.test_interrogate_clip import _write_blip, _write_clip

CPU = torch.device("cpu")


def _b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def client(live_server):
    server = live_server(models=(), load=False)
    with httpx.Client(base_url=server.url, timeout=120) as c:
        c.server = server  # type: ignore[attr-defined]
        yield c


def test_interrogate_routes(client, data_dir):
    image = gradient_image(96, 64)
    body = {"image": _b64(image), "model": "deepdanbooru"}
    missing = client.post("/sdapi/v1/interrogate", json=body)
    assert missing.status_code == 422 and f"models/torch_deepdanbooru/{MODEL_FILE}" in missing.text
    missing = client.post("/sdapi/v1/interrogate", json={"image": _b64(image)})  # A1111's default model: clip
    assert missing.status_code == 422 and "BLIP" in missing.text
    unknown = client.post("/sdapi/v1/interrogate", json={**body, "model": "wd14"})
    assert unknown.status_code == 422 and "clip, deepdanbooru" in unknown.text
    for bad in ("", "bm90IGFuIGltYWdl"):
        assert client.post("/sdapi/v1/interrogate", json={**body, "image": bad}).status_code == 422

    models = data_dir / "models"
    (models / "torch_deepdanbooru").mkdir(parents=True)  # A1111's folder for it
    torch.save({**seeded_state(DIVISOR, len(TAGS)), "tags": TAGS}, models / "torch_deepdanbooru" / MODEL_FILE)
    _write_blip(models / "BLIP" / "tiny-blip")
    _write_clip(models / "CLIP" / "tiny-clip")
    (models / "interrogate").mkdir()
    (models / "interrogate" / "colors.txt").write_text("red\ngreen\nblue\n", encoding="utf-8")

    tags = DeepBooru(models / "torch_deepdanbooru", lambda: CPU).tags(image)
    r = client.post("/sdapi/v1/interrogate", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"caption": tags} and tags
    r = client.post("/sdapi/v1/interrogate", json={"image": _b64(image), "model": "clip"})
    assert r.status_code == 200, r.text
    direct = ClipInterrogator(models, lambda: CPU).interrogate(image, ClipInterrogateOptions())
    assert r.json() == {"caption": direct} and direct.count(",") >= 1

    accepted = client.post("/sdapi/v2/interrogate", json=body)
    assert accepted.status_code == 202
    for _ in range(400):
        job = client.get(f"/sdapi/v2/jobs/{accepted.json()['id']}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert job["state"] == "succeeded" and job["kind"] == "interrogate" and job["result"] == {"caption": tags}

    from webui.ui.interrogate import interrogate

    app = client.server.app
    prompt, message = interrogate(app, "deepdanbooru", "img2img", {"init_img": image}, None)
    assert message == "" and prompt == tags
    prompt, message = interrogate(app, "clip", "img2img", {}, None)
    assert "Upload an image first" in message


def test_blip_captions_need_only_the_blip_model(tmp_path):
    from modules.interrogate.errors import InterrogateUnavailable

    _write_blip(tmp_path / "BLIP" / "tiny-blip")
    service = ClipInterrogator(tmp_path, lambda: CPU)
    service.check_caption()  # the training caption (BLIP) can run
    with pytest.raises(InterrogateUnavailable, match="CLIP"):
        service.check_available()  # interrogate CLIP needs both

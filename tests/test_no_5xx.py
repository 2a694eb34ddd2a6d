"""Whatever a client sends gets a 4xx naming the field, or succeeds; a 5xx is a bug (over real HTTP)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os

import pytest
import torch
from PIL import Image

from modules.errors import GenerationError, ValidationError

pytestmark = pytest.mark.usefixtures("frozen_gc")  # full GC passes scan only what this module makes

SMALL = {"width": 64, "height": 64, "steps": 1}
JSON = {"content-type": "application/json"}


def _raw_post(api, path: str, text: str):
    """POST a JSON text as is (lone surrogate escapes, NaN and Infinity literals: what a client can send)."""
    return api.post(path, content=text.encode("ascii"), headers=JSON)


def _png(size: tuple[int, int], mode: str = "1") -> str:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _assert_client_error(r, field: str | None = None) -> None:
    assert 400 <= r.status_code < 500, r.text
    body = r.json()
    if field is not None:
        assert body["field"] == field, body
        assert field.split(".")[-1].split("[")[0] in body["detail"], body
    assert "Traceback" not in r.text


def _still_serving(api) -> None:
    r = api.post("/sdapi/v1/txt2img", json={"prompt": "after", **SMALL})
    assert r.status_code == 200, r.text


def _install_bad_models(api) -> None:
    folder = api.server.app.paths.models_dir / "Stable-diffusion"
    (folder / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": os.getcwd}, folder / "evil.ckpt")
    assert api.post("/sdapi/v1/refresh-checkpoints").status_code == 200


def test_corrupt_or_refused_checkpoint_is_422_naming_the_file(api):
    _install_bad_models(api)
    before = api.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    for name, word in (("broken.safetensors", "corrupt"), ("evil.ckpt", "refused")):
        body = {"prompt": "x", **SMALL, "override_settings": {"sd_model_checkpoint": name}}
        r = api.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "sd_model_checkpoint" and r.json()["kind"] == "model"
        assert name in r.json()["detail"] and word in r.json()["detail"] and "Traceback" not in r.text
        job_id = api.post("/sdapi/v2/txt2img", json=body).json()["id"]
        assert api.server.app.queue.get(job_id).wait(60)
        detail = api.get(f"/sdapi/v2/jobs/{job_id}").json()
        assert detail["state"] == "failed" and detail["error_kind"] == "model"
        assert detail["error_field"] == "sd_model_checkpoint" and name in detail["error"]
        r = api.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})
        assert r.status_code == 422 and name in r.json()["detail"], r.text
        # as A1111: a checkpoint that failed to load does not stay the setting
        assert api.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == before
        _still_serving(api)


BAD_INFOTEXT_LINES = [
    "CFG scale: nan", "CFG scale: inf", "CFG scale: -inf", "CFG scale: 1e999", "Steps: 1e400", "Steps: nan",
    "Seed: 99999999999999999999999999", "Seed: nan", "Seed: -7", "Size: 0x0", "Size: 64x", "Size: nanxnan",
    "Size: 99999x99999", "Clip skip: nan", "Clip skip: 1e9", "Denoising strength: nan",
    "Hires upscale: inf, Denoising strength: 0.5", "Hires upscale: 2, Hires steps: nan, Denoising strength: 0.5",
    "Variation seed strength: inf", "Variation seed: nan", "Eta: nan", "Seed resize from: nanxnan",
    "Seed resize from: 1e9x1e9", "ENSD: nan", "ENSD: -1e30", "Sampler: \u0000", "Schedule type: nowhere",
    "Model hash: nan", "Model: \u202e", "Batch size: 1e9", "Batch pos: nan", "Hires resize: nanx64",
    "Hires upscaler: nope", "sigma churn: nan", "RNG: nan", "VAE: missing.safetensors", "Lora hashes: \"x: nan\"",
    "Steps: 2\nSteps: 3", "Template: {nan}", "Mask blur: nan", "Sampler: DDIM, Eta: inf", "Steps: -1",
]


def test_bad_infotext_values_are_4xx_or_ignored_with_a_note(module_api):
    from modules.errors import WebUIError
    from webui.api.convert import prepare
    from webui.api.schemas import Txt2ImgBody

    app = module_api.server.app
    for line in BAD_INFOTEXT_LINES:
        text = f"a fox\nNegative prompt: bad\n{line}, Version: v1.10.1, Comment: x"  # 3 pairs: a parameters line
        try:  # all the infotext says (sizes and steps too), checked as a request would be, not run
            app.handlers.check(app, prepare(app, Txt2ImgBody.model_validate({"infotext": text}), "txt2img").spec)
        except WebUIError as exc:
            assert getattr(exc, "field", None), (line, exc)
        body = {"infotext": text, "width": 64, "height": 64, "steps": 1}  # over HTTP, run at a tiny size
        r = module_api.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code < 500, (line, r.text)
        if r.status_code != 200:
            _assert_client_error(r)
            assert r.json().get("field"), (line, r.text)
    _still_serving(module_api)


def test_lone_surrogates_are_replaced_with_a_warning(api):
    r = _raw_post(api, "/sdapi/v1/txt2img",
                  '{"prompt": "a \\ud800 fox", "negative_prompt": "\\udfff", "width": 64, "height": 64, "steps": 1,'
                  ' "comments": {"k\\udc00": "v"}, "styles": ["\\ud83d"]}')
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["prompt"] == "a \ufffd fox" and info["negative_prompt"] == "\ufffd"
    assert any(w.startswith("prompt: invalid characters") for w in info["warnings"])
    assert any(w.startswith("negative_prompt:") for w in info["warnings"])
    text = _raw_post(api, "/sdapi/v1/txt2img",
                     '{"infotext": "a \\ud800\\nSteps: 1, Sampler: Euler, Size: 64x64, Comment: \\udc00"}')
    assert text.status_code == 200, text.text
    assert json.loads(text.json()["info"])["prompt"] == "a \ufffd"
    v2 = _raw_post(api, "/sdapi/v2/txt2img", '{"prompt": "\\udbff", "width": 64, "height": 64, "steps": 1}')
    assert v2.status_code == 202
    assert api.server.app.queue.get(v2.json()["id"]).wait(60)
    detail = api.get(f"/sdapi/v2/jobs/{v2.json()['id']}").json()
    assert detail["state"] == "succeeded" and any(w.startswith("prompt:") for w in detail["warnings"])
    opts = _raw_post(api, "/sdapi/v1/options", '{"samples_filename_pattern": "[seed]\\udc00"}')
    assert opts.status_code == 200, opts.text
    assert api.get("/sdapi/v1/options").json()["samples_filename_pattern"] == "[seed]\ufffd"


NAN_BODIES = [
    ('{"cfg_scale": NaN}', "cfg_scale"), ('{"steps": Infinity}', "steps"), ('{"seed": -Infinity}', "seed"),
    ('{"denoising_strength": NaN}', "denoising_strength"), ('{"s_min_uncond": NaN}', "s_min_uncond"),
    ('{"s_min_uncond": "nan"}', "s_min_uncond"), ('{"refiner_switch_at": "Infinity"}', "refiner_switch_at"),
    ('{"cfg_scale": "inf"}', "cfg_scale"), ('{"override_settings": {"eta_ddim": NaN}}', "override_settings.eta_ddim"),
    ('{"comments": {"a": [1, Infinity]}}', "comments.a[1]"), ('{"script_args": [NaN]}', "script_args[0]"),
    ('{"comments": ' + "[" * 40 + "]" * 40 + "}", "comments"),
]


def test_nan_infinity_and_deep_nesting_are_422_naming_the_field(module_api):
    count = len(module_api.server.app.queue.jobs())
    for text, field in NAN_BODIES:
        for path in ("/sdapi/v1/txt2img", "/sdapi/v2/txt2img", "/sdapi/v1/img2img", "/sdapi/v2/img2img"):
            r = _raw_post(module_api, path, text)
            _assert_client_error(r, field)
    assert len(module_api.server.app.queue.jobs()) == count
    r = _raw_post(module_api, "/sdapi/v1/options", '{"jpeg_quality": NaN}')
    _assert_client_error(r, "jpeg_quality")


def test_unparsable_bodies_are_4xx(module_api):
    deep = '{"comments": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for text in (deep, '{"seed": ' + "9" * 5000 + "}", '{"prompt": "\\ud800', "\u00ff"):
        r = module_api.post("/sdapi/v1/txt2img", content=text.encode("utf-8"), headers=JSON)
        assert 400 <= r.status_code < 500, r.text[:200]
    r = module_api.post("/sdapi/v1/txt2img", content=b'{"prompt": "\xff\xfe"}', headers=JSON)
    assert 400 <= r.status_code < 500, r.text
    _still_serving(module_api)


def test_img2img_checks_every_header_and_the_total_before_decoding(module_api, monkeypatch):
    import webui.api.images as images

    decoded = []
    real_load = images.load_image
    monkeypatch.setattr(images, "load_image", lambda image, field: decoded.append(field) or real_load(image, field))
    huge = _png((8192, 8192))
    r = module_api.post("/sdapi/v1/img2img", json={"init_images": [huge] * 8, "batch_size": 8, **SMALL})
    _assert_client_error(r, "init_images")
    assert "megapixels" in r.json()["detail"] and decoded == []
    r = module_api.post("/sdapi/v1/img2img", json={"init_images": [_png((64, 64), "RGB"), _png((9000, 9000))],
                                                   "batch_size": 2, **SMALL})
    _assert_client_error(r, "init_images[1]")
    assert decoded == []
    r = module_api.post("/sdapi/v1/img2img", json={"init_images": [_png((64, 64), "RGB")],
                                                   "mask": _png((9000, 9000)), **SMALL})
    _assert_client_error(r, "mask")
    assert decoded == []
    r = module_api.post("/sdapi/v1/img2img", json={"init_images": [_png((64, 64), "RGB")], **SMALL})
    assert r.status_code == 200 and decoded == ["init_images[0]"]


def _fail_next_job(api, monkeypatch, exc: BaseException) -> None:
    engine = api.server.app.engine

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(engine, "txt2img", boom)


FAILURES = [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), 507, "out_of_memory", None,
     "lower the size"),
    (MemoryError(), 507, "out_of_memory", None, "out of memory"),
    (GenerationError("the UNet produced NaNs; try the --no-half option"), 422, "nans", "precision", "precision"),
    (GenerationError("the VAE produced NaNs; try another VAE"), 422, "nans", "sd_vae", "VAE"),
    (ValidationError("hr_scale: the hires size is too large", field="hr_scale"), 422, "invalid", "hr_scale",
     "hr_scale"),
    (ZeroDivisionError("division by zero"), 500, "internal", None, "ZeroDivisionError"),
]


def test_failed_jobs_answer_by_their_kind(module_api, monkeypatch, caplog):
    engine = module_api.server.app.engine
    for exc, status, kind, field, words in FAILURES:
        monkeypatch.setattr(engine, "txt2img", lambda *a, _exc=exc, **k: (_ for _ in ()).throw(_exc))
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="modules.jobs"):
            r = module_api.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})
        assert r.status_code == status, r.text
        body = r.json()
        assert body["kind"] == kind and words in body["detail"] and body.get("field") == field, body
        assert "Traceback" not in r.text
        logged = [rec for rec in caplog.records if "failed" in rec.getMessage()]
        assert logged and bool(logged[-1].exc_info) == (status == 500)  # only our bugs come with a traceback
        job_id = module_api.post("/sdapi/v2/txt2img", json={"prompt": "x", **SMALL}).json()["id"]
        assert module_api.server.app.queue.get(job_id).wait(60)
        assert module_api.get(f"/sdapi/v2/jobs/{job_id}").json()["error_kind"] == kind
    monkeypatch.undo()
    _still_serving(module_api)


def test_png_info_short_base64_is_4xx(module_api):
    r = module_api.post("/sdapi/v1/png-info", json={"image": "4"})
    _assert_client_error(r, "image")

"""A1111's "Poor man's outpainting" and "Outpainting mk2": the image grows by the pixels asked for in the chosen
directions (to multiples of 64, as A1111), the original stays as it was where it is not masked, controls in
A1111's order, bad arguments refused naming ``script_args``; the matched noise mk2 pre-fills with."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules.scripts.outpainting import PoorMansOutpainting, expansion
from modules.scripts.outpainting_mk2 import OutpaintingMk2, matched_noise
from tests.test_script_builtins import SMALL, b64, img2img_request, init_image, post, run_script, scripts_server

ALL = ["left", "right", "up", "down"]
POOR, MK2 = "poor man's outpainting", "outpainting mk2"


@pytest.fixture(scope="module")
def client(tmp_path_factory, model_store):
    with scripts_server(tmp_path_factory, model_store) as c:
        yield c


def body(script: str, args: list, **changes) -> dict:
    return {**SMALL, "init_images": [b64(init_image())], "denoising_strength": 0.8, "script_name": script,
            "script_args": args, **changes}


def original_at(image: Image.Image, x: int, y: int) -> bool:
    """Whether the 64x64 init image is there, unchanged, with its top left corner at (x, y)."""
    part = np.asarray(image.convert("RGB"))[y:y + 64, x:x + 64]
    return bool((part == np.asarray(init_image())).all())


def test_controls_are_a1111s(client):
    info = {s["name"]: s["args"] for s in client.get("/sdapi/v1/script-info").json() if s["is_img2img"]}
    assert [(a["label"], a["value"]) for a in info[POOR]] == [
        ("Pixels to expand", 128), ("Mask blur", 4), ("Masked content", "fill"), ("Outpainting direction", ALL)]
    assert info[POOR][2]["choices"] == ["fill", "original", "latent noise", "latent nothing"]
    assert [(a["label"], a["value"]) for a in info[MK2][1:]] == [
        ("Pixels to expand", 128), ("Mask blur", 8), ("Outpainting direction", ALL),
        ("Fall-off exponent (lower=higher detail)", 1.0), ("Color variation", 0.05)]
    assert info[MK2][0]["label"] == "" and info[MK2][0]["value"].startswith("<p")


def test_expansion_rounds_to_multiples_of_64():
    e = expansion(64, 64, 128, ALL)
    assert (e.left, e.right, e.up, e.down) == (128, 128, 128, 128)  # 320 x 320
    e = expansion(64, 64, 16, ["left", "right"])
    assert (e.left, e.right, e.up, e.down) == (32, 32, 0, 0)
    e = expansion(100, 70, 40, ["left", "down"])
    assert (e.left, e.right, e.up, e.down) == (92, 0, 0, 58)  # 192 x 128


@pytest.mark.parametrize("args,size,at", [
    ([32, 0, 1, ["left", "right"]], (128, 64), (32, 0)),
    ([16, 0, 0, ALL], (128, 128), (32, 32)),
    ([32, 0, "latent noise", ["up"]], (64, 128), (0, 64)),
])
def test_poor_mans_outpainting_grows_and_keeps(client, args, size, at):
    images, info = post(client, "img2img", body(POOR, args))
    assert [im.size for im in images] == [size]
    assert original_at(images[0], *at)  # without a mask blur the original is untouched
    assert "Mask blur" not in info["infotexts"][0] or "Mask blur: 0" in info["infotexts"][0]


def test_poor_mans_outpainting_tiles_and_seeds():
    out, rec = run_script(PoorMansOutpainting(), img2img_request(batch_size=2, n_iter=3), [32, 4, 0, ["left",
                                                                                                      "right"]])
    # tiles of 64 overlapping by 32 at x 0, 32, 64: the middle one lies on the original and is left alone
    assert [(r.seed, r.batch_size, r.n_iter, r.mask_blur_x, r.inpainting_fill) for r in rec.requests] == [
        (11, 1, 1, 8, 0), (12, 1, 1, 8, 0)]
    assert [im.size for im in out.images] == [(128, 64)]  # one image, whatever the batch (A1111)
    mask = np.asarray(rec.requests[0].mask)
    assert (mask[:, :40] == 255).all() and (mask[:, 40:] == 0).all()  # new area, less twice the blur
    latent = np.asarray(rec.requests[0].latent_mask)  # A1111's latent mask: less half the blur
    assert (latent[:, :34] == 255).all() and (latent[:, 34:] == 0).all()


@pytest.mark.parametrize("args,size,at", [
    (["", 16, 0, ALL, 1.0, 0.05], (128, 128), (32, 32)),
    (["", 32, 0, ["down"], 1.0, 0.05], (64, 128), (0, 0)),
    (["", 32, 0, ["left"], 0.5, 0.5], (128, 64), (64, 0)),
])
def test_outpainting_mk2_grows_and_keeps(client, args, size, at):
    images, _ = post(client, "img2img", body(MK2, args))
    assert [im.size for im in images] == [size]
    assert original_at(images[0], *at)


def test_outpainting_mk2_batches_and_sides():
    out, rec = run_script(OutpaintingMk2(), img2img_request(batch_size=2, n_iter=2), ["", 16, 8, ["up", "right"]])
    # each batch: the right side, then the top; every side of a batch with the batch's seeds
    assert [(r.seed, len(r.init_images), r.width, r.height, r.mask_blur_x, r.mask_blur_y, r.inpainting_fill)
            for r in rec.requests] == [(11, 2, 64, 64, 32, 32, 1), (11, 2, 128, 64, 32, 32, 1),
                                       (13, 2, 64, 64, 32, 32, 1), (13, 2, 128, 64, 32, 32, 1)]
    assert out.grids == 1 and [im.size for im in out.images] == [(256, 256)] + [(128, 128)] * 4
    assert out.seeds[1:] == [11, 12, 13, 14]
    assert rec.requests[0].latent_mask is not None


def test_outpainting_mk2_latent_mask_keeps_the_image_less_twice_the_blur():
    from modules.scripts.outpainting_mk2 import _latent_mask, _Side

    latent = np.asarray(_latent_mask((64, 64), (80, 64), _Side("right", 16, 2, 2)).convert("L"))
    assert (latent[:, :45] == 0).all() and (latent[:, 45:] == 255).all()  # 64 - 16 - 2 * 2 (PIL: inclusive)


def test_outpainting_mk2_through_the_api_with_a_batch(client):
    images, info = post(client, "img2img", body(MK2, ["", 32, 8, ["right"], 1.0, 0.05], batch_size=2))
    assert [im.size for im in images] == [(256, 64), (128, 64), (128, 64)]  # the grid first
    assert info["all_seeds"][1:] == [11, 12] and "Mask blur x: 32" in info["infotexts"][1]


@pytest.mark.parametrize("script,args,words", [
    (POOR, [64, 4, 0, ALL], "Pixels to expand"),  # tiles of 64 cannot overlap by 64
    (POOR, [32, 4, 7, ALL], "Masked content"),
    (POOR, [32, 4, 0, ["sideways"]], "Outpainting direction"),
    (MK2, ["", 0, 8, ALL], "Pixels to expand"),
    (MK2, ["", 32, 8, "diagonal"], "Outpainting direction"),
    (MK2, ["", 32, 8, ALL, 1.0, 2.0], "Color variation"),
])
def test_bad_arguments_are_422s(client, script, args, words):
    r = client.post("/sdapi/v1/img2img", json=body(script, args))
    assert r.status_code == 422 and r.json()["field"] == "script_args" and words in r.json()["detail"], r.text


def test_matched_noise():
    image = np.asarray(init_image((96, 64)), dtype=np.float64) / 255.0
    mask = np.zeros_like(image)
    mask[:, 64:] = 1.0
    image = image * (1 - mask)
    out = matched_noise(image, mask, 1.0, 0.05)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert (out[:, :64] == image[:, :64]).all()  # the known part as it was
    assert out[:, 64:].std() > 0.05  # the new part filled with structure, not flat
    assert (matched_noise(image, mask, 1.0, 0.05) == out).all()  # deterministic
    known = np.sort(image[:, :64].reshape(-1, 3)[:, 0])
    filled = np.sort(out[:, 64:].reshape(-1, 3)[:, 0])
    assert known.min() <= filled.min() and filled.max() <= known.max()  # colours drawn from the known part

"""img2img and inpainting through the engine on tiny models and the public-domain test photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import TESTDATA, install_model
from modules.errors import ValidationError
from modules.generation import image_prep
from modules.infotext import parse_infotext
from modules.requests import Img2ImgRequest, validate_img2img

PHOTOS = TESTDATA / "photos"
SMALL = {"width": 64, "height": 64, "steps": 4, "seed": 3}
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason="../shared/testdata/photos is not present")


def photo(name: str) -> Image.Image:
    with Image.open(PHOTOS / name) as im:
        im.load()
        return im


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture
def engine(data_dir, model_store, engine_factory):
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    return engine_factory()


def rect_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


@needs_photos
def test_plain_img2img_and_infotext(engine):
    job = engine.img2img(Img2ImgRequest(prompt="a cat", init_images=(photo("chelsea.png"),), **SMALL))
    (image,) = job.result.images
    assert image.size == (64, 64)
    params = parse_infotext(job.result.infotexts[0])
    assert params["Denoising strength"] == 0.75 and "Mask blur" not in job.result.infotexts[0]


@needs_photos
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_every_resize_mode_gives_the_requested_size(engine, mode):
    req = Img2ImgRequest(prompt="x", init_images=(photo("coffee.png"),), resize_mode=mode, width=96, height=64,
                         steps=2, seed=1)
    assert engine.img2img(req).result.images[0].size == (96, 64)


def test_resize_modes_geometry():
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    assert image_prep.resize_image(0, wide, 64, 64).size == (64, 64)
    cropped = np.asarray(image_prep.resize_image(1, wide, 64, 64))
    assert (cropped[..., 0] > 200).all()  # cropped: red everywhere, no border
    filled = image_prep.resize_image(2, wide, 64, 64)
    assert filled.size == (64, 64) and (np.asarray(filled)[..., 0] > 200).all()  # edges stretched into the bars


@needs_photos
@pytest.mark.parametrize("name", ["astronaut.png", "brick.png", "logo.png", "hubble_deep_field.jpg", "chelsea.png"])
def test_images_of_any_mode(engine, name):
    job = engine.img2img(Img2ImgRequest(prompt="x", init_images=(photo(name),), steps=2, width=64, height=64))
    assert job.result.images[0].mode == "RGB"


def test_unusual_modes_are_normalised():
    sixteen = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    assert image_prep.flatten(sixteen).mode == "RGB"
    palette = Image.new("P", (8, 8))
    palette.info["transparency"] = 0
    assert image_prep.flatten(palette).mode == "RGB"
    la = Image.new("LA", (8, 8), (10, 0))
    assert np.asarray(image_prep.flatten(la)).min() == 255  # transparent: the white background
    rotated = Image.new("RGB", (20, 10))
    exif = rotated.getexif()
    exif[274] = 6  # rotated 90 degrees
    buf = io.BytesIO()
    rotated.save(buf, "JPEG", exif=exif)
    assert image_prep.normalise(Image.open(io.BytesIO(buf.getvalue()))).size == (10, 20)


def test_masks_are_binarised_like_a1111():
    gray = Image.fromarray(np.array([[0, 128, 129, 255]], dtype=np.uint8))
    assert np.asarray(image_prep.binary_mask(gray)).tolist() == [[0, 0, 255, 255]]
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 200))  # drawn strokes on a transparent layer: the alpha is the mask
    assert np.asarray(image_prep.binary_mask(rgba)).tolist() == [[0, 255]]
    rgb = Image.new("RGB", (2, 1), (255, 255, 255))
    rgb.putpixel((0, 0), (10, 10, 10))
    assert np.asarray(image_prep.binary_mask(rgb)).tolist() == [[0, 255]]


@needs_photos
@pytest.mark.parametrize("content", [0, 1, 2, 3])
def test_whole_picture_inpaint_keeps_unmasked_pixels(engine, content):
    src = photo("astronaut.png").resize((64, 64))
    mask = rect_mask((64, 64), (16, 16, 40, 40))
    req = Img2ImgRequest(prompt="x", init_images=(src,), mask=mask, inpainting_fill=content, mask_blur_x=2,
                         mask_blur_y=2, denoising_strength=0.9, **SMALL)
    out = px(engine.img2img(req).result.images[0])
    far = np.ones((64, 64), bool)
    far[10:46, 10:46] = False  # away from the mask and its blur
    assert np.abs(out - px(src))[far].max() <= 1
    assert np.abs(out - px(src))[20:36, 20:36].mean() > 5  # the masked area was regenerated
    text = engine.img2img(req).result.infotexts[0]
    # as A1111: "original" masked content and the whole-picture area are its defaults and not written
    assert (f"Masked content: {image_prep.MASKED_CONTENT[content]}" in text) == (content != 1)
    assert "Inpaint area" not in text


@needs_photos
def test_only_masked_inpaint_pastes_back_at_full_size(engine):
    src = photo("coffee.png")  # 600x400
    mask = rect_mask(src.size, (250, 150, 330, 230))
    req = Img2ImgRequest(prompt="x", init_images=(src,), mask=mask, inpaint_full_res=True,
                         inpaint_full_res_padding=16, mask_blur_x=0, mask_blur_y=0, **SMALL)
    result = engine.img2img(req).result
    out = px(result.images[0])
    assert result.images[0].size == src.size
    keep = np.asarray(mask) == 0
    assert np.abs(out - px(src))[keep].max() <= 1
    assert np.abs(out - px(src))[160:220, 260:320].mean() > 5
    assert "Inpaint area: Only masked, Masked area padding: 16" in result.infotexts[0]


@needs_photos
def test_inverted_mask_and_mask_of_another_size(engine):
    src = photo("astronaut.png").resize((64, 64))
    small_mask = rect_mask((32, 32), (8, 8, 20, 20))  # another size: resized to the image, as A1111 does
    req = Img2ImgRequest(prompt="x", init_images=(src,), mask=small_mask, inpainting_mask_invert=True,
                         mask_blur_x=0, mask_blur_y=0, **SMALL)
    result = engine.img2img(req).result
    out = px(result.images[0])
    assert np.abs(out - px(src))[24:32, 24:32].max() <= 1  # inverted: the marked square is what stays
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


@needs_photos
@pytest.mark.parametrize("family", ["sd1-inpaint", "sdxl-inpaint"])
def test_inpainting_checkpoints_take_the_9_channel_path(data_dir, model_store, engine_factory, family, monkeypatch):
    install_model(data_dir, model_store(family, "safetensors"), "inp")
    engine = engine_factory()
    src = photo("astronaut.png").resize((64, 64))
    mask = rect_mask((64, 64), (16, 16, 48, 48))
    seen = []
    engine.models.get(None)
    unet = engine.models.current.unet
    real = unet.forward
    monkeypatch.setattr(unet, "forward", lambda sample, *a, **k: seen.append(sample.shape[1]) or real(sample, *a, **k))
    result = engine.img2img(Img2ImgRequest(prompt="x", init_images=(src,), mask=mask, mask_blur_x=0,
                                           mask_blur_y=0, **SMALL)).result
    assert seen and set(seen) == {9}
    keep = np.asarray(mask) == 0
    assert np.abs(px(result.images[0]) - px(src))[keep].max() <= 1
    # the conditioning mask strength: A1111 records it for every image of an inpainting model
    assert "Conditional mask weight: 1.0" in result.infotexts[0]
    half = engine.img2img(Img2ImgRequest(prompt="x", init_images=(src,), mask=mask, mask_blur_x=0, mask_blur_y=0,
                                         inpainting_mask_weight=0.5, **SMALL)).result
    assert "Conditional mask weight: 0.5" in half.infotexts[0]
    assert np.abs(px(half.images[0]) - px(result.images[0]))[~keep].mean() > 0.5


@needs_photos
def test_batch_of_several_init_images_and_seeds(engine):
    images = (photo("astronaut.png"), photo("coffee.png"))
    result = engine.img2img(Img2ImgRequest(prompt="x", init_images=images, batch_size=2, **SMALL)).result
    assert len(result.images) == 2 and result.all_seeds == [3, 4]


def test_bad_requests_are_refused_before_work(engine):
    img = Image.new("RGB", (64, 64))
    cases = [
        (Img2ImgRequest(prompt="x", init_images=()), "init_images"),
        (Img2ImgRequest(prompt="x", init_images=(img, img, img), batch_size=2), "init_images"),
        (Img2ImgRequest(prompt="x", init_images=(img,), denoising_strength=1.5), "denoising_strength"),
        (Img2ImgRequest(prompt="x", init_images=(img,), resize_mode=7), "resize_mode"),
        (Img2ImgRequest(prompt="x", init_images=(img,), inpainting_fill=9), "inpainting_fill"),
        (Img2ImgRequest(prompt="x", init_images=(img,), mask_blur_x=100), "mask_blur"),
        (Img2ImgRequest(prompt="x", init_images=(img,), width=70), "width"),
    ]
    for req, field in cases:
        with pytest.raises(ValidationError) as err:
            validate_img2img(req)  # the check every front door makes before queueing
        assert err.value.field == field


def test_denoising_zero_returns_the_input(engine):
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out = engine.img2img(Img2ImgRequest(prompt="x", init_images=(src,), denoising_strength=0.0, **SMALL))
    assert out.result.images[0].size == (64, 64)


def test_batch_from_folder_with_masks_png_info_and_non_images(engine, tmp_path):
    from modules.batch import list_inputs, run_batch
    from modules.images import encode_image
    from modules.job_types import Img2ImgBatchJob

    inp, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    inp.mkdir()
    masks.mkdir()
    a = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    info = "an owl\nNegative prompt: blur\nSteps: 2, Sampler: DDIM, CFG scale: 5, Seed: 42, Size: 64x64"
    (inp / "a.png").write_bytes(encode_image(a, "png", info))
    a.save(inp / "b.jpg")
    (inp / "notes.txt").write_text("not an image")
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (10, 10, 30, 30))
    mask.save(masks / "b.png")
    base = Img2ImgRequest(prompt="painting of", steps=2, width=64, height=64, seed=7, mask_blur_x=0, mask_blur_y=0,
                          inpainting_fill=0)
    job = Img2ImgBatchJob(base, tuple(list_inputs(inp)), out, mask_dir=masks,
                          png_info_fields=("Prompt", "Seed", "Sampler", "Steps"))
    report = run_batch(engine, job)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert {name for name, _ in report.skipped} == {"notes.txt", "broken.png"}
    assert "not an image" in report.summary()
    a_info = parse_infotext(report.infotexts[0])
    assert a_info["Prompt"] == "painting of an owl" and a_info["Seed"] == 42 and a_info["Sampler"] == "DDIM"
    assert "Masked content" in report.infotexts[1] and "Masked content" not in report.infotexts[0]
    again = run_batch(engine, Img2ImgBatchJob(base, tuple(list_inputs(inp)), out))
    assert sorted(p.name for p in again.saved) == ["a-1.png", "b-1.png"]  # never overwritten

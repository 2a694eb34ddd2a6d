"""The img2img tab's handlers called directly (no browser): every mode, batch, bad input, paste, send-to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import TESTDATA, log_problems, running_app

PHOTOS = TESTDATA / "photos"
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason="../shared/testdata/photos is not present")


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_store):
    with running_app(tmp_path_factory.mktemp("img2img-ui-data"), model_store, ("tiny",)) as app:
        yield app


@pytest.fixture
def handlers(app):
    from webui.ui.img2img_handlers import Img2ImgHandlers

    return Img2ImgHandlers(app)


def photo(name: str = "chelsea.png", size: tuple[int, int] | None = (64, 64)) -> Image.Image:
    if not PHOTOS.is_dir():
        pytest.skip("../shared/testdata/photos is not present")
    with Image.open(PHOTOS / name) as im:
        im = im.convert("RGB")
    return im.resize(size, Image.Resampling.LANCZOS) if size else im


def stroke_layer(size: tuple[int, int], box: tuple[int, int, int, int], color=(255, 255, 255, 255)) -> Image.Image:
    """A drawn layer as gr.ImageEditor gives it: transparent, with one opaque rectangle."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle(box, fill=color)
    return layer


def editor_value(background: Image.Image, layers: list[Image.Image]) -> dict:
    composite = background.convert("RGBA")
    for layer in layers:
        composite.alpha_composite(layer)
    return {"background": background.convert("RGBA"), "layers": layers, "composite": composite.convert("RGB")}


def small(app, **changes):
    from webui.ui.img2img_handlers import default_values

    values = default_values(app)
    values.update(prompt="a cat", width=64, height=64, steps=2, seed=7)
    values.update(changes)
    return values


def run(handlers, values):
    updates = list(handlers.generate_values(values))
    return updates[-1]


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def queued(app) -> int:
    return len(app.queue.jobs())


# -- the form

def test_fields_and_defaults_follow_a1111(app):
    from webui.ui.img2img_handlers import FIELDS, default_values

    d = default_values(app)
    assert tuple(d) == FIELDS
    assert d["denoising_strength"] == 0.75 and d["mask_blur"] == 4 and d["inpaint_full_res_padding"] == 32
    assert (d["inpainting_fill"], d["inpaint_full_res"], d["inpainting_mask_invert"]) == (
        "original", "Whole picture", "Inpaint masked")
    assert d["resize_mode"] == "Just resize" and d["scale_tab"] == "Resize to"


# -- each mode

@needs_photos
def test_img2img_mode_gives_image_and_infotext(app, handlers):
    last = run(handlers, small(app, init_img=photo(size=None)))
    assert log_problems(last.log) == "" and len(last.gallery) == 1
    assert last.gallery[0].size == (64, 64)
    assert "Denoising strength: 0.75" in last.infotext and "Size: 64x64" in last.infotext
    assert "Mask blur" not in last.infotext
    assert list((app.paths.outputs_dir / "img2img-images").rglob("*.png"))


@needs_photos
def test_resize_by_scales_the_image_size(app):
    from webui.ui.img2img_handlers import build_img2img_request

    req = build_img2img_request(app, small(app, init_img=photo(size=(200, 130)), scale_tab="Resize by",
                                           scale_by=0.5))
    assert (req.width, req.height) == (96, 64)  # 100x65 rounded down to multiples of 8


@needs_photos
def test_sketch_uses_the_composite(app, handlers):
    from webui.ui.img2img_handlers import build_img2img_request

    bg = photo()
    value = editor_value(bg, [stroke_layer(bg.size, (10, 10, 30, 30), (255, 0, 0, 255))])
    req = build_img2img_request(app, small(app, mode="Sketch", sketch=value))
    assert req.mask is None
    assert tuple(px(req.init_images[0])[20, 20]) == (255, 0, 0)
    last = run(handlers, small(app, mode="Sketch", sketch=value))
    assert len(last.gallery) == 1 and "Denoising strength" in last.infotext


@needs_photos
@pytest.mark.parametrize("area", ["Whole picture", "Only masked"])
def test_inpaint_mask_comes_from_the_drawn_layer_and_keeps_unmasked_pixels(app, handlers, area):
    from webui.ui.img2img_handlers import build_img2img_request

    bg = photo()
    value = editor_value(bg, [stroke_layer(bg.size, (16, 16, 40, 40))])
    values = small(app, mode="Inpaint", init_img_with_mask=value, mask_blur=0, inpaint_full_res=area,
                   inpaint_full_res_padding=8, denoising_strength=1.0, inpainting_fill="latent noise")
    req = build_img2img_request(app, values)
    mask = np.asarray(req.mask)
    assert mask[20, 20] == 255 and mask[5, 5] == 0 and mask[50, 50] == 0
    assert req.init_images[0].getpixel((20, 20))[:3] == bg.getpixel((20, 20))  # the background, not the strokes
    last = run(handlers, values)
    assert log_problems(last.log) == ""
    out = px(last.gallery[0])
    keep = np.ones((64, 64), bool)
    keep[12:45, 12:45] = False  # the mask with a margin
    assert np.abs(out - px(bg))[keep].max() <= 2
    assert np.abs(out - px(bg))[18:39, 18:39].mean() > 1  # the masked part was regenerated
    assert "Mask blur" not in last.infotext
    assert ("Inpaint area: Only masked" in last.infotext) == (area == "Only masked")
    assert "Masked content: latent noise" in last.infotext


@needs_photos
def test_inpaint_sketch_mask_is_the_strokes_and_init_is_the_colour(app, handlers):
    from webui.ui.img2img_handlers import build_img2img_request

    bg = photo()
    value = editor_value(bg, [stroke_layer(bg.size, (8, 8, 24, 24), (0, 0, 255, 255))])
    values = small(app, mode="Inpaint sketch", inpaint_color_sketch=value, mask_blur=0)
    req = build_img2img_request(app, values)
    assert np.asarray(req.mask)[16, 16] == 255 and np.asarray(req.mask)[40, 40] == 0
    assert tuple(px(req.init_images[0])[16, 16]) == (0, 0, 255)
    assert tuple(px(req.init_images[0])[40, 40]) == tuple(px(bg)[40, 40])
    half = build_img2img_request(app, {**values, "mask_alpha": 50})
    blended = tuple(px(half.init_images[0])[16, 16])
    assert blended != (0, 0, 255) and blended != tuple(px(bg)[16, 16])  # "Mask transparency" 50%
    last = run(handlers, values)
    assert len(last.gallery) == 1 and "Mask blur" not in last.infotext


@needs_photos
def test_inpaint_upload_uses_the_separate_mask(app, handlers):
    bg = photo(size=(96, 96))
    mask = Image.new("L", (48, 48), 0)  # another size: resized to the image, as A1111 does
    mask.paste(255, (12, 12, 36, 36))
    last = run(handlers, small(app, mode="Inpaint upload", init_img_inpaint=bg, init_mask_inpaint=mask,
                               width=96, height=96))
    assert log_problems(last.log) == "" and last.gallery[0].size == (96, 96)
    out = px(last.gallery[0])
    assert np.abs(out - px(bg))[:12, :].max() <= 2  # top rows, far from the mask, unchanged
    assert "Mask blur: 4" in last.infotext and "Mask mode" not in last.infotext  # A1111 writes only the inverse


@needs_photos
def test_batch_from_a_folder_skips_non_images_with_a_message(app, handlers, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    photo("coffee.png").save(src / "a.png")
    photo("astronaut.png", (80, 64)).save(src / "b.jpg")
    (src / "notes.txt").write_text("not an image")
    last = run(handlers, small(app, mode="Batch", batch_source="From directory", batch_input_dir=str(src),
                               batch_output_dir=str(out)))
    assert len(last.gallery) == 2 and "Denoising strength" in last.infotext
    assert "notes.txt" in last.log and "not an image" in last.log
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert "2 image(s) written" in last.infotext


@needs_photos
def test_batch_from_uploaded_files_goes_to_the_default_folder(app, handlers, tmp_path):
    files = []
    for i, name in enumerate(("rocket.jpg", "camera.png")):
        path = tmp_path / f"upload{i}.png"
        photo(name).save(path)
        files.append(str(path))
    last = run(handlers, small(app, mode="Batch", batch_source="Upload", batch_files=files))
    assert log_problems(last.log) == "" and len(last.gallery) == 2
    written = {p.name for p in app.output_options("img2img").samples_dir.rglob("upload*.png")}
    assert {"upload0.png", "upload1.png"} <= written


@needs_photos
def test_batch_with_resize_by_scales_each_image(app, handlers, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    photo("coffee.png", (128, 128)).save(src / "square.png")
    photo("rocket.jpg", (160, 128)).save(src / "wide.png")
    last = run(handlers, small(app, mode="Batch", batch_source="From directory", batch_input_dir=str(src),
                               batch_output_dir=str(out), scale_tab="Resize by", scale_by=0.5))
    assert log_problems(last.log) == ""
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert sizes == {"square.png": (64, 64), "wide.png": (80, 64)}


# -- bad input: a message, nothing queued

@pytest.mark.parametrize("changes, message", [
    ({}, "Upload an image in the img2img tab first"),
    ({"mode": "Sketch"}, "Upload an image in the Sketch tab first"),
    ({"mode": "Inpaint"}, "Upload an image in the Inpaint tab first"),
    ({"mode": "Inpaint upload"}, "Upload an image in the Inpaint upload tab first"),
    ({"mode": "Batch", "batch_source": "From directory", "batch_input_dir": "/nonexistent/folder"},
     "input directory not found"),
    ({"mode": "Batch", "batch_source": "Upload"}, "upload one or more images"),
])
def test_missing_input_gives_a_message_and_queues_nothing(app, handlers, changes, message):
    before = queued(app)
    last = run(handlers, small(app, **changes))
    assert message in last.log and "sd-error" in last.log
    assert last.job_id is None and queued(app) == before


def test_undecodable_uploads_give_a_message(app, handlers, tmp_path):
    from webui.ui.img2img_inputs import UnreadableImage

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    before = queued(app)
    for values in (small(app, init_img=str(bad)), small(app, init_img=UnreadableImage("UnidentifiedImageError")),
                   small(app, mode="Inpaint", init_img_with_mask=UnreadableImage("OSError"))):
        last = run(handlers, values)
        assert "not an image that can be read" in last.log
    assert queued(app) == before


def test_image_components_pass_undecodable_uploads_on_as_a_message(app, tmp_path):
    from gradio.data_classes import ImageData

    from webui.ui import build_ui
    from webui.ui.img2img_inputs import UnreadableImage

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    demo = build_ui(app)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    value = by_id["img2img_image"].preprocess(ImageData(path=str(bad), orig_name="broken.png"))
    assert isinstance(value, UnreadableImage)
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), "red").save(good)
    assert by_id["img_inpaint_base"].preprocess(ImageData(path=str(good), orig_name="good.png")).size == (8, 8)
    # gradio writes a .pyi beside a module that subclasses a component: the tab must not
    assert not list((Path(__file__).resolve().parents[1] / "webui" / "ui").glob("*.pyi"))


@needs_photos
def test_empty_mask_and_bad_batch_mask_dir_give_messages(app, handlers, tmp_path):
    bg = photo()
    before = queued(app)
    last = run(handlers, small(app, mode="Inpaint", init_img_with_mask=editor_value(bg, [])))
    assert "the mask is empty" in last.log
    (tmp_path / "in").mkdir()
    bg.save(tmp_path / "in" / "a.png")
    last = run(handlers, small(app, mode="Batch", batch_source="From directory", batch_input_dir=str(tmp_path / "in"),
                               batch_inpaint_mask_dir=str(tmp_path / "masks")))
    assert "inpaint mask directory not found" in last.log
    assert queued(app) == before
    # "Inpaint not masked" with nothing painted regenerates everything: allowed
    from webui.ui.img2img_handlers import build_img2img_request

    req = build_img2img_request(app, small(app, mode="Inpaint", init_img_with_mask=editor_value(bg, []),
                                           inpainting_mask_invert="Inpaint not masked"))
    assert req.inpainting_mask_invert is True


def test_folders_are_refused_when_the_server_is_exposed(data_dir, tmp_path):
    from modules.app import App, StartOptions
    from modules.errors import ValidationError
    from webui.ui.img2img_handlers import plan_batch

    app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True, exposed=True))
    with pytest.raises(ValidationError, match="upload the files instead"):
        plan_batch(app, {"mode": "Batch", "batch_source": "From directory", "batch_input_dir": str(tmp_path)})


# -- ↙️ paste and send-to

def test_paste_fills_img2img_fields(app, handlers):
    text = ("a house\nNegative prompt: fog\nSteps: 12, Sampler: Euler a, Schedule type: Karras, CFG scale: 5, "
            "Seed: 99, Size: 320x256, Denoising strength: 0.4, Mask blur: 8, Masked content: latent noise, "
            "Inpaint area: Only masked, Masked area padding: 16, Clip skip: 2")
    values, message = handlers.read_parameters(text)
    assert values["prompt"] == "a house" and values["negative_prompt"] == "fog"
    assert (values["steps"], values["seed"], values["width"], values["height"]) == (12, 99, 320, 256)
    assert values["denoising_strength"] == 0.4 and values["mask_blur"] == 8
    assert values["inpainting_fill"] == "latent noise" and values["inpaint_full_res"] == "Only masked"
    assert values["inpaint_full_res_padding"] == 16 and values["clip_skip"] == 2
    assert "enable_hr" not in values


def test_send_to_carries_the_selected_image_and_parameters(app, tmp_path):
    from webui.ui.img2img_handlers import send_to
    from webui.ui.txt2img_handlers import Txt2ImgHandlers, default_values

    t2i = default_values(app)
    t2i.update(prompt="a lighthouse", negative_prompt="fog", width=64, height=64, steps=2, seed=5, batch_size=2,
               cfg_scale=4.5, sampler_name="Euler a", scheduler="Karras", clip_skip=2)
    last = list(Txt2ImgHandlers(app).generate_values(t2i))[-1]
    assert last.results["grid"] and len(last.gallery) == 3
    gallery = []  # as gr.Gallery hands it to an event: (file path, caption)
    for i, image in enumerate(last.gallery):
        path = tmp_path / f"g{i}.png"
        image.save(path)
        gallery.append((str(path), None))
    image, values, message = send_to(gallery, last.results, t2i)
    assert message == "" and image.size == (64, 64)  # the first real image, not the 128x64 grid
    assert np.array_equal(px(image), px(last.gallery[1]))
    image, _, _ = send_to(gallery, {**last.results, "selected": 2}, t2i)
    assert np.array_equal(px(image), px(last.gallery[2]))
    assert values == {"prompt": "a lighthouse", "negative_prompt": "fog", "sampler_name": "Euler a",
                      "scheduler": "Karras", "steps": 2, "cfg_scale": 4.5, "seed": 5, "width": 64, "height": 64,
                      "clip_skip": 2}
    image, values, message = send_to([], None, t2i)
    assert image is None and "Generate an image first" in message


def test_page_has_the_img2img_tab_and_a1111_ids(app):
    import gradio as gr

    from webui.ui import build_ui

    demo = build_ui(app)
    blocks = list(demo.blocks.values())
    ids = {b.elem_id for b in blocks if getattr(b, "elem_id", None)}
    for elem_id in ("tab_img2img", "img2img_prompt", "img2img_neg_prompt", "img2img_generate", "img2img_interrupt",
                    "img2img_skip", "img2img_gallery", "img2img_image", "img2img_sketch", "img2maskimg",
                    "inpaint_sketch", "img_inpaint_base", "img_inpaint_mask", "img2img_batch_input_dir",
                    "img2img_batch_output_dir", "img2img_batch_inpaint_mask_dir", "img2img_denoising_strength",
                    "img2img_mask_blur", "img2img_inpainting_fill", "img2img_inpaint_full_res", "img2img_steps",
                    "img2img_seed", "html_info_img2img", "html_log_img2img", "txt2img_send_to_img2img",
                    "txt2img_send_to_inpaint", "img2img_paste", "img2img_batch_use_png_info"):
        assert elem_id in ids, elem_id
    tab = next(b for b in blocks if isinstance(b, gr.Tab) and b.elem_id == "tab_img2img")
    assert (tab.label, tab.id) == ("img2img", "img2img")
    top = [b.label for b in blocks if isinstance(b, gr.Tab) and (b.elem_id or "").startswith("tab_")]
    assert top[:2] == ["txt2img", "img2img"]
    mode_ids = ("img2img_img2img_tab", "img2img_img2img_sketch_tab", "img2img_inpaint_tab",
                "img2img_inpaint_sketch_tab", "img2img_inpaint_upload_tab", "img2img_batch_tab")
    modes = [b.label for b in blocks if isinstance(b, gr.Tab) and b.elem_id in mode_ids]
    assert modes == ["img2img", "Sketch", "Inpaint", "Inpaint sketch", "Inpaint upload", "Batch"]
    by_id = {b.elem_id: b for b in blocks if getattr(b, "elem_id", None)}
    assert by_id["img2img_denoising_strength"].value == 0.75
    assert by_id["img2img_resize_mode"].choices[3][0] == "Just resize (latent upscale)"
    load = next(f for f in demo.fns.values() if f.name == "on_load")
    assert len(load.fn()) == len(load.outputs)
    # Generate sends only the current mode's images: one event per mode, each with its own image fields
    image_ids = {"img2img_image", "img2img_sketch", "img2maskimg", "inpaint_sketch", "img_inpaint_base",
                 "img_inpaint_mask", "img2img_batch_upload"}
    runs = [fn for fn in demo.fns.values() if fn.name == "run"
            and any(getattr(o, "elem_id", None) == "img2img_gallery" for o in fn.outputs)]
    own = [sorted(i.elem_id for i in fn.inputs if getattr(i, "elem_id", None) in image_ids) for fn in runs]
    assert own == [["img2img_image"], ["img2img_sketch"], ["img2maskimg"], ["inpaint_sketch"],
                   ["img_inpaint_base", "img_inpaint_mask"], ["img2img_batch_upload"]]

"""Checks that need images that mean something, on the shipped demo model: every sampler draws the shape it is
asked for, img2img's strength and inpainting do what they say, and a LoRA or an embedding trained on a new colour
shows it."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.models import demo
from modules.requests import GenerationRequest, Img2ImgRequest
from modules.samplers import sampler_names

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / f"{demo.DEMO_NAME}.safetensors"
pytestmark = [pytest.mark.skipif(not SHIPPED.is_file(), reason="the demo model file is not in this checkout"),
              pytest.mark.usefixtures("frozen_gc")]


@pytest.fixture(scope="module")
def demo_app(tmp_path_factory):
    from modules.app import App, StartOptions

    root = tmp_path_factory.mktemp("demo")
    target = root / "models" / "Stable-diffusion"
    target.mkdir(parents=True)
    shutil.copy2(SHIPPED, target / SHIPPED.name)
    shutil.copytree(SHIPPED.with_suffix(""), target / SHIPPED.stem)
    app = App(StartOptions(data_dir=root, device="cpu", skip_load_model=True))
    app.start()
    try:
        yield app
    finally:
        app.stop()


def _req(prompt: str, seed: int, **changes: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, seed=seed, **{**demo.DEFAULTS, **changes})  # type: ignore[arg-type]


def _img2img(prompt: str, seed: int, **changes: object) -> Img2ImgRequest:
    return Img2ImgRequest(**{**_req(prompt, seed).__dict__, **changes})  # type: ignore[arg-type]


def test_every_sampler_draws_the_shape_asked_for(demo_app):
    scene = demo.Scene("square", "yellow", "blue", (0, 0, 1, 1))
    seen = {}
    for name in sampler_names():
        image = demo_app.engine.txt2img(_req(scene.caption, 11, sampler_name=name, scheduler="Automatic")
                                        ).result.images[0]
        seen[name] = demo.judge(image)
    right_colours = [n for n, j in seen.items() if (j.background, j.colour) == ("blue", "yellow")]
    assert len(right_colours) >= len(seen) - 2, {n: j for n, j in seen.items() if n not in right_colours}
    right_shape = [n for n, j in seen.items() if j.shape == "square"]
    assert len(right_shape) >= len(seen) * 0.7, {n: j for n, j in seen.items() if n not in right_shape}


def test_img2img_strength_and_inpainting_do_what_they_say(demo_app):
    source = demo.render(demo.Scene("circle", "red", "white", (32, 32, 96, 96)))
    ask = "a green square on a black background"
    low = demo_app.engine.img2img(_img2img(ask, 5, init_images=(source,), denoising_strength=0.15)).result.images[0]
    high = demo_app.engine.img2img(_img2img(ask, 5, init_images=(source,), denoising_strength=1.0)).result.images[0]
    assert demo.judge(low).background == "white" and demo.judge(low).colour == "red"
    seen = demo.judge(high)  # follows the prompt, not the source (this model may still swap the two colours)
    assert {seen.background, seen.colour} <= {"green", "black"}, seen
    # inpainting: a circle drawn into the masked middle of a plain background; outside the mask stays as it was
    plain = Image.new("RGB", (128, 128), demo.COLOURS["blue"])
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (24, 24, 104, 104))
    out = demo_app.engine.img2img(_img2img("a yellow circle on a blue background", 3, init_images=(plain,),
                                           mask=mask, denoising_strength=1.0, mask_blur_x=0, mask_blur_y=0,
                                           inpainting_fill=1)
                                  ).result.images[0]
    arr = np.asarray(out, dtype=np.float32)
    inside = arr[40:88, 40:88].reshape(-1, 3)
    outside = np.concatenate([arr[:16].reshape(-1, 3), arr[-16:].reshape(-1, 3)])
    yellow, blue = np.array(demo.COLOURS["yellow"]), np.array(demo.COLOURS["blue"])
    assert np.median(np.linalg.norm(outside - blue, axis=1)) < 40
    assert (np.linalg.norm(inside - yellow, axis=1) < 100).mean() > 0.2


# The new colour: a dusty pink, none of the eight. It has to be one the demo model's VAE keeps, since every training
# learns the latents its encoder gives and every image is what its decoder makes of them: trained on the eight colours
# only, the VAE turns most others into one of them. A bright pink (255, 120, 200) comes back cream (238, 236, 178)
# with no pixel within 50 of pink, so a LoRA trained on it learns cream and draws cream (the reason this test once
# failed); this one comes back as (196, 116, 171), 94% of its pixels within 50.
NEW_COLOUR = (180, 120, 185)


def _new_colour_pictures(app, folder: str, caption: str) -> Path:
    """Eight pictures of shapes in the new colour on white, captioned ``caption`` (its ``{shape}`` filled in), after
    checking that the model's VAE keeps the colour (img2img at strength 0 is the VAE's round trip alone)."""
    data = app.paths.data_dir / folder
    data.mkdir()
    rng = random.Random(0)
    for i in range(8):
        scene = demo.random_scene(rng)
        arr = np.asarray(demo.render(demo.Scene(scene.shape, "red", "white", scene.box))).copy()
        arr[(arr == demo.COLOURS["red"]).all(axis=2)] = NEW_COLOUR
        Image.fromarray(arr).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(caption.format(shape=scene.shape))
    source = demo.render(demo.Scene("circle", "red", "white", (24, 24, 104, 104)))
    arr = np.asarray(source).copy()
    shape = (arr == demo.COLOURS["red"]).all(axis=2)
    arr[shape] = NEW_COLOUR
    kept = app.engine.img2img(_img2img("", 1, init_images=(Image.fromarray(arr),), denoising_strength=0.0)
                              ).result.images[0]
    near = np.linalg.norm(np.asarray(kept, dtype=np.float32) - NEW_COLOUR, axis=2) < 50
    assert near[shape].mean() > 0.8, f"the VAE does not keep {NEW_COLOUR}: no training can teach it"
    return data


def _new_colour_seen(images: list[Image.Image]) -> tuple[float, int]:
    """The share of pixels within 50 of the new colour, and how many images draw their shape in it: the median
    colour of the pixels far (> 80) from the border's is within 60 of the new colour and nearer it than any of the
    eight (the nearest of them, purple, is 81 away)."""
    palette = np.array(list(demo.COLOURS.values()), dtype=np.float32)
    share, drawn = [], 0
    for image in images:
        arr = np.asarray(image, dtype=np.float32)
        share.append(float((np.linalg.norm(arr - NEW_COLOUR, axis=2) < 50).mean()))
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        far = np.linalg.norm(arr - np.median(border, axis=0), axis=2) > 80
        if far.sum() >= 16:
            shape = np.median(arr[far], axis=0)
            distance = np.linalg.norm(shape - NEW_COLOUR)
            drawn += bool(distance < min(60, np.linalg.norm(palette - shape, axis=1).min()))
    return float(np.mean(share)), drawn


def _drawn(app, prompt: str) -> list[Image.Image]:
    return [app.engine.txt2img(_req(prompt, s)).result.images[0] for s in range(4)]


@pytest.mark.slow
def test_a_lora_teaches_a_new_colour(demo_app):
    """A UNet LoRA changes the prediction for every prompt, the empty one too, and guidance (5, the model's default)
    multiplies the difference between the two: trained on captioned pictures only, the empty prompt's change is
    untrained (it drifts towards purple here) and the same LoRA that draws the new colour at guidance 1 draws beige
    at 5. Some empty captions (kohya's caption dropout) train it too; a low rate keeps the colour from swinging
    between saves."""
    from modules.training.specs import TrainLoraJob, TrainOptions

    data = _new_colour_pictures(demo_app, "pink", "a pink {shape} on a white background")
    opts = TrainOptions(data_root=str(data), training_width=128, training_height=128, steps=100, batch_size=4,
                        learn_rate="0.001", caption_dropout=0.25, create_image_every=0, save_every=0, seed=1,
                        write_csv_every=0, template_filename="filewords.txt", log_directory="logs")
    job = demo_app.submit(TrainLoraJob(name="pink", options=opts, rank=8, alpha=8))
    assert job.wait(600) and job.result is not None, job.error
    prompt = "a pink circle on a white background"
    before = _new_colour_seen(_drawn(demo_app, prompt))
    after = _new_colour_seen(_drawn(demo_app, f"{prompt} <lora:pink:1>"))
    assert before[0] < 0.02 and before[1] == 0, before  # the word alone: a red circle
    assert after[0] > 0.08 and after[1] >= 3, (before, after)  # seeds 1-3: 0.24-0.35 of the pixels, 4 of 4


@pytest.mark.slow
def test_an_embedding_teaches_a_new_colour(demo_app):
    """Textual inversion: one vector, started at "red", learns the new colour for the word "pinky"."""
    from modules.training.specs import CreateEmbeddingJob, TrainEmbeddingJob, TrainOptions

    data = _new_colour_pictures(demo_app, "pinky", "{shape} on a white background")
    templates = demo_app.paths.data_dir / "textual_inversion_templates"
    templates.mkdir(exist_ok=True)
    (templates / "colour.txt").write_text("a [name] [filewords]\n")
    created = demo_app.submit(CreateEmbeddingJob(name="pinky", init_text="red"))
    assert created.wait(60) and created.result is not None, created.error
    prompt = "a pinky circle on a white background"
    before = _new_colour_seen(_drawn(demo_app, prompt))
    opts = TrainOptions(data_root=str(data), training_width=128, training_height=128, steps=100, batch_size=4,
                        learn_rate="0.005", create_image_every=0, save_every=0, seed=1, write_csv_every=0,
                        template_filename="colour.txt", log_directory="logs")
    job = demo_app.submit(TrainEmbeddingJob("pinky", opts))
    assert job.wait(600) and job.result is not None, job.error
    after = _new_colour_seen(_drawn(demo_app, prompt))
    assert before[0] < 0.02 and before[1] == 0, before  # the embedding as created: red
    assert after[0] > 0.08 and after[1] >= 3, (before, after)  # seeds 1-3: 0.16-0.19 of the pixels, 4 of 4

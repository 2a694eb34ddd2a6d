"""Checks that need images that mean something, on the shipped demo model: every sampler draws the shape it is
asked for, img2img's strength and inpainting do what they say, and a LoRA trained on a new colour shows it."""

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


@pytest.mark.slow
@pytest.mark.xfail(reason="on the shipped model (step 7,367) a 60- or 150-step LoRA on eight pink pictures does not "
                   "make pink (it did on the step-3,852 model: 0.002 -> 0.018); not understood yet", strict=False)
def test_a_lora_teaches_a_new_colour(demo_app):
    from modules.training.specs import TrainLoraJob, TrainOptions

    pink = (255, 120, 200)
    data = demo_app.paths.data_dir / "pink"
    data.mkdir()
    rng = random.Random(0)
    for i in range(8):
        scene = demo.random_scene(rng)
        image = demo.render(demo.Scene(scene.shape, "red", "white", scene.box))
        arr = np.asarray(image).copy()
        arr[(arr == demo.COLOURS["red"]).all(axis=2)] = pink
        Image.fromarray(arr).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a pink {scene.shape} on a white background")
    opts = TrainOptions(data_root=str(data), training_width=128, training_height=128, steps=60, batch_size=4,
                        learn_rate="0.002", create_image_every=0, save_every=0, seed=1, write_csv_every=0,
                        template_filename="filewords.txt", log_directory="logs")
    job = demo_app.submit(TrainLoraJob(name="pink", options=opts, rank=8, alpha=8))
    assert job.wait(600) and job.result is not None, job.error

    def pinkness(prompt: str) -> float:
        images = [demo_app.engine.txt2img(_req(prompt, s)).result.images[0] for s in range(4)]
        dist = [np.linalg.norm(np.asarray(im, dtype=np.float32) - np.array(pink), axis=2) for im in images]
        return float(np.mean([(d < 60).mean() for d in dist]))

    before, after = pinkness("a pink circle on a white background"), pinkness(
        "a pink circle on a white background <lora:pink:1>")
    assert after > max(0.01, before * 3), (before, after)  # step 3,852: 0.002 -> 0.018

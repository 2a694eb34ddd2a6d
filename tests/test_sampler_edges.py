"""Every sampler, from the smallest step counts up: where A1111 itself stops with an error for some (UniPC below its
order, DPM fast/adaptive on a one-step img2img), here each gives an image. This is also the test that every sampler
runs at all, gives a non-constant image and is recorded under its own name in the infotext (the hires run's first
pass has 3 steps, where the multistep samplers use their higher orders)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import install_model
from modules import samplers
from modules.requests import GenerationRequest, Img2ImgRequest


@pytest.fixture(scope="module")
def engine(tmp_path_factory, model_store):
    from modules.app import build_engine
    from modules.paths import Paths

    data = tmp_path_factory.mktemp("edges")
    install_model(data, model_store("sd1", "safetensors"), "tiny")
    return build_engine(Paths.create(data), device="cpu", precision="fp32", cache_limit=1)


def _assert_image_by(result, name: str, steps: int) -> None:
    pixels = np.asarray(result.images[0], dtype=np.float32)
    assert np.isfinite(pixels).all() and pixels.std() > 0, steps  # an image, not a flat or broken one
    assert f"Steps: {steps}, Sampler: {name}," in result.infotexts[0]


@pytest.mark.parametrize("name", samplers.sampler_names())
def test_one_two_and_three_steps_txt2img_img2img_and_hires(engine, name):
    base = {"prompt": "x", "width": 64, "height": 64, "sampler_name": name, "seed": 1, "randn_source": "CPU"}
    for steps in (1, 2):
        _assert_image_by(engine.txt2img(GenerationRequest(**base, steps=steps)).result, name, steps)
    hires = engine.txt2img(GenerationRequest(**base, steps=3, enable_hr=True, hr_scale=1.25,
                                             denoising_strength=0.3, hr_second_pass_steps=1)).result
    assert hires.images[0].size == (80, 80)
    _assert_image_by(hires, name, 3)
    init = Image.new("RGB", (64, 64), (120, 60, 30))
    for strength in (0.05, 1.0):  # no step at all (steps x strength < 1), and the whole schedule
        result = engine.img2img(Img2ImgRequest(**base, steps=2, init_images=(init,), denoising_strength=strength))
        assert result.result.images[0].size == (64, 64)

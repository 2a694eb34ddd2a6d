"""Refiner and hires checkpoint: another checkpoint takes over inside the job, as in A1111."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import install_model
from modules.models.tiny import write_tiny_model
from modules.requests import GenerationRequest

pytestmark = pytest.mark.usefixtures("frozen_gc")  # full GC passes scan only what this module makes

SMALL = {"steps": 4, "width": 64, "height": 64, "cfg_scale": 5.0, "randn_source": "CPU"}


@pytest.fixture(scope="module")
def two_models(model_store, tmp_path_factory):
    """One engine for the module (its tests only generate): two different tiny SD 1.x models, "base" and "ref"."""
    from modules.app import build_engine
    from modules.paths import Paths

    data = tmp_path_factory.mktemp("refiner")
    install_model(data, model_store("sd1", "safetensors"), "base")
    other = write_tiny_model("sd1", tmp_path_factory.mktemp("other"), fmt="safetensors", seed=1)
    install_model(data, other, "ref")
    # both models stay in RAM: switching does not reload from disk
    return build_engine(Paths.create(data), device="cpu", precision="fp32", cache_limit=2)


def _px(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _one(engine, **changes):
    req = GenerationRequest(**{"prompt": "a lighthouse", "seed": 3, "checkpoint": "base", **SMALL, **changes})
    return engine.txt2img(req).result


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
def test_refiner_switches_models_inside_the_pass(two_models, sampler):
    base = _one(two_models, sampler_name=sampler)
    ref_only = _one(two_models, sampler_name=sampler, checkpoint="ref")
    never = _one(two_models, sampler_name=sampler, refiner_checkpoint="ref", refiner_switch_at=1.0)
    at_once = _one(two_models, sampler_name=sampler, refiner_checkpoint="ref", refiner_switch_at=0.0)
    halfway = _one(two_models, sampler_name=sampler, refiner_checkpoint="ref", refiner_switch_at=0.5)
    assert np.array_equal(_px(never.images[0]), _px(base.images[0]))  # no step reaches 100% done
    # from the first step on: the refiner's UNet, text encoders and VAE, the same noise and sigmas
    assert np.abs(_px(at_once.images[0]) - _px(ref_only.images[0])).max() <= 1
    for other in (base, ref_only):
        assert np.abs(_px(halfway.images[0]) - _px(other.images[0])).mean() > 1
    assert "Refiner: ref, Refiner switch at: 0.5" in halfway.infotexts[0]
    assert "Refiner" not in base.infotexts[0]


def test_every_batch_starts_on_the_jobs_own_model(two_models):
    two = _one(two_models, n_iter=2, refiner_checkpoint="ref", refiner_switch_at=0.5)
    second_alone = _one(two_models, seed=4, refiner_checkpoint="ref", refiner_switch_at=0.5)
    assert np.abs(_px(two.images[1]) - _px(second_alone.images[0])).max() <= 1


def test_hires_checkpoint_runs_the_second_pass(two_models):
    hires = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.6}
    same = _one(two_models, **hires)
    other = _one(two_models, hr_checkpoint_name="ref", **hires)
    assert other.images[0].size == (96, 96)
    assert np.abs(_px(same.images[0]) - _px(other.images[0])).mean() > 1
    assert "Hires checkpoint: ref" in other.infotexts[0] and "Hires checkpoint" not in same.infotexts[0]
    # the refiner defaults to the second pass when hires fix is on; "Hires refiner" is written otherwise
    both = _one(two_models, refiner_checkpoint="ref", refiner_switch_at=0.5, hires_fix_refiner_pass="both passes",
                **hires)
    assert "Hires refiner: both passes" in both.infotexts[0]
    second = _one(two_models, refiner_checkpoint="ref", refiner_switch_at=0.5, **hires)
    assert "Hires refiner" not in second.infotexts[0]
    assert np.abs(_px(both.images[0]) - _px(second.images[0])).mean() > 1


def test_unknown_refiner_or_hires_checkpoint_is_a_422(api):
    for field in ("refiner_checkpoint", "hr_checkpoint_name"):
        body = {"prompt": "x", "steps": 1, "width": 64, "height": 64, field: "no-such-model", "enable_hr": True,
                "hr_scale": 1.0}
        r = api.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 422, r.text
        assert field in r.text and "no-such-model" in r.text

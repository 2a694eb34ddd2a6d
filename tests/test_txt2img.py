"""txt2img through the engine on tiny models: formats, samplers, seeds, hires fix, infotext, outputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import FAMILIES, install_model, running_app
from modules import infotext, samplers
from modules.engine import OutputOptions
from modules.errors import ValidationError
from modules.generation.control import JobControl
from modules.images import read_parameters
from modules.requests import GenerationRequest

pytestmark = pytest.mark.usefixtures("frozen_gc")  # full GC passes scan only what this module makes

SMALL = {"width": 64, "height": 64, "steps": 3}


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def fresh_sd1_engine(data_dir, model_store, engine_factory):
    """An engine of its own, nothing loaded yet: for a test that counts model loads."""
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny-sd1")
    return engine_factory()


@pytest.fixture(scope="module")
def sd1_engine(tmp_path_factory, model_store):
    """One engine for the module's tests that only generate with it (each compares images it makes itself); the
    model is loaded once, as a server keeps it."""
    from modules.app import build_engine
    from modules.paths import Paths

    data = tmp_path_factory.mktemp("txt2img")
    install_model(data, model_store("sd1", "safetensors"), "tiny-sd1")
    return build_engine(Paths.create(data), device="cpu", precision="fp32", cache_limit=1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", ["safetensors", "diffusers"])
def test_every_family_and_format_generates(data_dir, model_store, engine_factory, family, fmt):
    install_model(data_dir, model_store(family, fmt), f"m-{family}")
    engine = engine_factory()
    job = engine.txt2img(GenerationRequest(prompt="a cat", seed=3, **SMALL))
    (image,) = job.result.images
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.isfinite(_pixels(image)).all() and _pixels(image).std() > 0
    assert engine.models.current.family.name == family


def test_ckpt_generates_same_pixels_as_safetensors(data_dir, model_store, engine_factory):
    install_model(data_dir, model_store("sd1", "safetensors"), "a")
    install_model(data_dir, model_store("sd1", "ckpt"), "b")
    engine = engine_factory()
    req = GenerationRequest(prompt="a cat", seed=5, **SMALL)
    a = engine.txt2img(req.replace(checkpoint="a.safetensors")).result.images[0]
    b = engine.txt2img(req.replace(checkpoint="b.ckpt")).result.images[0]
    assert np.array_equal(_pixels(a), _pixels(b))


def test_model_stays_resident_between_generations(fresh_sd1_engine, monkeypatch):
    fresh_sd1_engine.txt2img(GenerationRequest(prompt="x", seed=1, **SMALL))
    assert fresh_sd1_engine.models.load_count == 1
    import modules.models.manager as manager

    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(manager.ModelManager, "_load", boom)
    fresh_sd1_engine.txt2img(GenerationRequest(prompt="y", seed=2, **SMALL))
    assert fresh_sd1_engine.models.load_count == 1


def test_switching_frees_the_old_model_and_ram_cache_keeps_recent(data_dir, model_store, engine_factory):
    install_model(data_dir, model_store("sd1", "safetensors"), "a")
    install_model(data_dir, model_store("sd2", "safetensors"), "b")
    engine = engine_factory(cache_limit=1)
    req = GenerationRequest(prompt="x", seed=1, **SMALL)
    engine.txt2img(req.replace(checkpoint="a"))
    engine.txt2img(req.replace(checkpoint="b"))
    assert engine.models.loaded_titles() == [engine.models.current.info.title] and engine.models.load_count == 2
    engine.txt2img(req.replace(checkpoint="a"))
    assert engine.models.load_count == 3  # limit 1: nothing kept, a was loaded again
    cached = engine_factory(cache_limit=2)
    cached.txt2img(req.replace(checkpoint="a"))
    cached.txt2img(req.replace(checkpoint="b"))
    cached.txt2img(req.replace(checkpoint="a"))
    assert cached.models.load_count == 2 and len(cached.models.loaded_titles()) == 2


def test_failed_switch_keeps_previous_model(data_dir, model_store, engine_factory):
    install_model(data_dir, model_store("sd1", "safetensors"), "good")
    bad = data_dir / "models" / "Stable-diffusion" / "broken.safetensors"
    bad.write_bytes(b"garbage")
    engine = engine_factory()
    req = GenerationRequest(prompt="x", seed=1, **SMALL)
    engine.txt2img(req.replace(checkpoint="good"))
    with pytest.raises(Exception, match="broken"):
        engine.txt2img(req.replace(checkpoint="broken"))
    assert engine.models.current.info.name == "good.safetensors"
    engine.txt2img(req)


# Every sampler runs, gives a non-constant image and is recorded by name: tests/test_sampler_edges.py (1, 2 and 3
# steps, hires, img2img).


@pytest.mark.parametrize("schedule", samplers.schedule_labels())
def test_every_schedule_type_runs(sd1_engine, schedule):
    job = sd1_engine.txt2img(GenerationRequest(prompt="x", seed=1, sampler_name="DPM++ 2M", scheduler=schedule,
                                               **SMALL))
    recorded = "Karras" if schedule == "Automatic" else schedule  # A1111 records DPM++ 2M's own default
    assert f"Schedule type: {recorded}," in job.result.infotexts[0]


def test_schedules_change_the_sigmas():
    from modules.generation.passes import get_sigmas
    from modules.sampling.schedules import ScheduleOptions, SigmaTable, scaled_linear_alphas_cumprod

    spec, _ = samplers.resolve_sampler("Euler")
    table = SigmaTable.from_alphas_cumprod(scaled_linear_alphas_cumprod())
    labels = ("Automatic", "Uniform", "Karras", "Exponential", "KL Optimal", "Align Your Steps", "Beta")
    sigmas = {label: tuple(get_sigmas(spec, label, 10, table, ScheduleOptions(), False).numpy().round(4).tolist())
              for label in labels}
    assert len(set(sigmas.values())) == len(sigmas) - 1  # every type differs; Automatic is Euler's Uniform
    assert sigmas["Automatic"] == sigmas["Uniform"]


def test_legacy_and_alias_names():
    assert samplers.resolve_sampler("DPM++ 2M Karras", None)[0].name == "DPM++ 2M"
    assert samplers.resolve_sampler("DPM++ 2M Karras", None)[1] == "Karras"
    assert samplers.resolve_sampler("DPM++ 2M SDE Karras", "Automatic")[1] == "Karras"
    assert samplers.resolve_sampler("k_euler_a", "karras") == (samplers.resolve_sampler("Euler a")[0], "Karras")
    assert samplers.resolve_sampler("Euler", "sgm_uniform")[1] == "SGM Uniform"
    with pytest.raises(ValidationError) as err:
        samplers.resolve_sampler("Euler z")
    assert "Euler a" in str(err.value) and "DPM++ 2M" in str(err.value) and err.value.field == "sampler_name"
    with pytest.raises(ValidationError, match="Karras"):
        samplers.resolve_sampler("Euler", "wobbly")


def test_every_schedule_type_runs_with_every_k_sampler_and_is_recorded(sd1_engine):
    req = GenerationRequest(prompt="x", seed=1, sampler_name="Euler a", **SMALL)
    base = _pixels(sd1_engine.txt2img(req).result.images[0])
    job = sd1_engine.txt2img(req.replace(scheduler="Karras"))
    assert "Schedule type: Karras," in job.result.infotexts[0]
    assert not np.array_equal(base, _pixels(job.result.images[0]))


def test_eta_is_honoured_by_ddim(sd1_engine):
    req = GenerationRequest(prompt="x", seed=1, sampler_name="DDIM", **SMALL)
    a = sd1_engine.txt2img(req.replace(eta=0.0)).result.images[0]
    b = sd1_engine.txt2img(req.replace(eta=1.0)).result.images[0]
    assert not np.array_equal(_pixels(a), _pixels(b))
    assert "Eta DDIM: 1" in sd1_engine.txt2img(req.replace(eta=1.0)).result.infotexts[0]  # A1111's key


def test_same_request_same_pixels_and_batch_independence(sd1_engine):
    req = GenerationRequest(prompt="a (red:1.3) fox", negative_prompt="blur", seed=42, **SMALL)
    a = sd1_engine.txt2img(req).result
    b = sd1_engine.txt2img(req).result
    assert np.array_equal(_pixels(a.images[0]), _pixels(b.images[0]))
    batch = sd1_engine.txt2img(req.replace(batch_size=2, n_iter=2)).result
    assert batch.all_seeds == [42, 43, 44, 45]
    single = sd1_engine.txt2img(req.replace(seed=44)).result
    assert np.abs(_pixels(batch.images[2]) - _pixels(single.images[0])).max() <= 1
    assert "Seed: 44," in batch.infotexts[2]


def test_random_seed_is_recorded(sd1_engine):
    result = sd1_engine.txt2img(GenerationRequest(prompt="x", seed=-1, **SMALL)).result
    seed = result.all_seeds[0]
    assert 0 <= seed < 2**32 and f"Seed: {seed}," in result.infotexts[0]
    again = sd1_engine.txt2img(GenerationRequest(prompt="x", seed=seed, **SMALL)).result
    assert np.array_equal(_pixels(result.images[0]), _pixels(again.images[0]))


def test_variation_seed(sd1_engine):
    req = GenerationRequest(prompt="x", seed=7, subseed=99, sampler_name="Euler", **SMALL)  # no sampler noise
    base = _pixels(sd1_engine.txt2img(req).result.images[0])
    zero = _pixels(sd1_engine.txt2img(req.replace(subseed_strength=0.0)).result.images[0])
    half = sd1_engine.txt2img(req.replace(subseed_strength=0.5)).result
    other = _pixels(sd1_engine.txt2img(req.replace(seed=99)).result.images[0])
    full = _pixels(sd1_engine.txt2img(req.replace(subseed_strength=1.0)).result.images[0])
    assert np.array_equal(base, zero)
    assert not np.array_equal(base, _pixels(half.images[0]))
    assert np.abs(full - other).max() <= 1  # strength 1 is the variation seed itself
    assert "Variation seed: 99, Variation seed strength: 0.5" in half.infotexts[0]


def test_seed_resize_from(sd1_engine):
    result = sd1_engine.txt2img(GenerationRequest(prompt="x", seed=7, seed_resize_from_w=128, seed_resize_from_h=64,
                                                  **SMALL)).result
    assert "Seed resize from: 128x64" in result.infotexts[0]


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic antialiased)", "Latent (nearest-exact)", "Lanczos",
                                      "Nearest"])
def test_hires_output_size(sd1_engine, upscaler):
    req = GenerationRequest(prompt="x", seed=1, enable_hr=True, hr_scale=1.5, hr_upscaler=upscaler,
                            hr_second_pass_steps=2, denoising_strength=0.5, **SMALL)
    result = sd1_engine.txt2img(req).result
    assert result.images[0].size == (96, 96)
    params = infotext.parse_infotext(result.infotexts[0])
    assert params["Hires upscale"] == 1.5 and params["Hires upscaler"] == upscaler
    assert params["Hires steps"] == 2 and params["Denoising strength"] == 0.5
    assert params["Size-1"] == 64


@pytest.mark.parametrize("rx,ry,expected", [(128, 0, (128, 128)), (0, 96, (96, 96)), (128, 96, (128, 96))])
def test_hires_resize_targets(sd1_engine, rx, ry, expected):
    req = GenerationRequest(prompt="x", seed=1, enable_hr=True, hr_resize_x=rx, hr_resize_y=ry,
                            hr_second_pass_steps=1, **SMALL)
    result = sd1_engine.txt2img(req).result
    assert result.images[0].size == expected
    assert f"Hires resize: {rx}x{ry}" in result.infotexts[0]


def test_hires_sampler_and_prompt(sd1_engine):
    req = GenerationRequest(prompt="x", seed=1, enable_hr=True, hr_scale=1.25, hr_sampler_name="DPM++ 2M",
                            hr_scheduler="Karras", hr_prompt="y, detailed", hr_second_pass_steps=2, **SMALL)
    text = sd1_engine.txt2img(req).result.infotexts[0]
    assert "Hires sampler: DPM++ 2M" in text and "Hires schedule type: Karras" in text
    assert 'Hires prompt: "y, detailed"' in text


def test_tiling_changes_output_and_is_recorded(sd1_engine):
    req = GenerationRequest(prompt="x", seed=1, **SMALL)
    plain = sd1_engine.txt2img(req).result
    tiled = sd1_engine.txt2img(req.replace(tiling=True)).result
    assert not np.array_equal(_pixels(plain.images[0]), _pixels(tiled.images[0]))
    assert "Tiling: True" in tiled.infotexts[0]
    again = sd1_engine.txt2img(req).result  # padding restored afterwards
    assert np.array_equal(_pixels(plain.images[0]), _pixels(again.images[0]))


def test_prompt_syntax_changes_conditioning(sd1_engine):
    base = GenerationRequest(seed=1, **SMALL)
    results = {}
    for prompt in ["a cat", "a (cat:1.5)", "a [cat:dog:1]", "a [cat|dog]", "a cat AND a dog:0.5", "a cat BREAK dog",
                   "a cat\n# a comment"]:
        results[prompt] = _pixels(sd1_engine.txt2img(base.replace(prompt=prompt)).result.images[0])
    assert np.array_equal(results["a cat"], results["a cat\n# a comment"])
    others = [k for k in results if k not in ("a cat", "a cat\n# a comment")]
    for key in others:
        assert not np.array_equal(results["a cat"], results[key]), key


def test_long_prompt_and_clip_skip(sd1_engine):
    long = ", ".join(["a very detailed painting of a cat"] * 30)
    req = GenerationRequest(prompt=long, negative_prompt="blurry", seed=1, **SMALL)
    a = sd1_engine.txt2img(req).result
    b = sd1_engine.txt2img(req.replace(clip_skip=2)).result
    assert not np.array_equal(_pixels(a.images[0]), _pixels(b.images[0]))
    assert "Clip skip: 2" in b.infotexts[0] and "Clip skip" not in a.infotexts[0]


def test_infotext_exact_format(sd1_engine):
    engine = sd1_engine
    result = engine.txt2img(GenerationRequest(prompt="a red fox, (snow:1.2)", negative_prompt="lowres",
                                              seed=1234, sampler_name="DPM++ 2M", scheduler="Karras", cfg_scale=7,
                                              **SMALL)).result
    info = engine.models.current.info
    assert result.infotexts[0] == (
        "a red fox, (snow:1.2)\n"
        "Negative prompt: lowres\n"
        f"Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 64x64, "
        f"Model hash: {info.shorthash}, Model: tiny-sd1, Version: sdwebui 0.1.0"
    )


def test_outputs_named_and_carry_infotext(sd1_engine, tmp_path):
    out = OutputOptions.under(tmp_path / "outputs")
    job = sd1_engine.txt2img(GenerationRequest(prompt="x", seed=10, batch_size=2, **SMALL), out=out)
    names = [p.name for p in job.saved]
    assert names == ["00000-10.png", "00001-11.png"]
    assert job.saved[0].parent.parent.name == "txt2img-images"
    assert job.grid_path is not None and job.grid_path.name == "grid-0000.png"
    assert job.grid_path.parent.parent.name == "txt2img-grids"
    with Image.open(job.saved[1]) as im:
        assert read_parameters(im) == job.result.infotexts[1]
    again = sd1_engine.txt2img(GenerationRequest(prompt="x", seed=10, **SMALL), out=out)
    assert again.saved[0].name == "00002-10.png" and again.grid_path is None
    for fmt in ("jpg", "webp"):
        job = sd1_engine.txt2img(GenerationRequest(prompt="é ünïcode", seed=3, **SMALL),
                                 out=OutputOptions.under(tmp_path / fmt, samples_format=fmt))
        with Image.open(job.saved[0]) as im:
            assert im.format in ("JPEG", "WEBP")
            assert read_parameters(im) == job.result.infotexts[0]


def test_interrupt_and_skip(sd1_engine):
    control = JobControl()
    calls = []

    def on_progress(progress):
        calls.append(progress.sampling_step)
        if progress.job_no == 0 and progress.sampling_step == 1:
            control.skip()
        if progress.job_no == 1 and progress.sampling_step == 2:
            control.interrupt()

    control.subscribe(on_progress)
    result = sd1_engine.txt2img(GenerationRequest(prompt="x", seed=1, n_iter=4, **SMALL), control).result
    assert len(result.images) == 2 and result.interrupted


@pytest.mark.parametrize("changes,field", [
    ({"width": 65}, "width"), ({"height": 4096}, "height"), ({"steps": 0}, "steps"), ({"steps": 10000}, "steps"),
    ({"batch_size": 64}, "batch_size"), ({"cfg_scale": -1}, "cfg_scale"), ({"sampler_name": "nope"}, "sampler_name"),
    ({"scheduler": "nope"}, "scheduler"), ({"enable_hr": True, "hr_upscaler": "ESRGAN_9x"}, "hr_upscaler"),
    ({"enable_hr": True, "denoising_strength": 2}, "denoising_strength"), ({"seed": -5}, "seed"),
])
def test_bad_requests_are_rejected_before_any_work(data_dir, model_store, changes, field):
    with running_app(data_dir, model_store) as app:
        with pytest.raises(ValidationError) as err:
            app.submit_txt2img(GenerationRequest(prompt="x", **changes))
        assert err.value.field == field
        assert app.queue.jobs() == [] and app.models.load_count == 0


def test_external_vae_is_used_and_recorded(data_dir, model_store, engine_factory):
    from safetensors.torch import load_file, save_file

    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    engine = engine_factory()
    base = engine.txt2img(GenerationRequest(prompt="x", seed=1, **SMALL)).result
    full = load_file(str(model_store("sd1", "safetensors")))
    vae = {k.removeprefix("first_stage_model."): v * 1.05 if v.ndim > 1 else v for k, v in full.items()
           if k.startswith("first_stage_model.")}
    vae_dir = data_dir / "models" / "VAE"
    vae_dir.mkdir(parents=True)
    save_file(vae, str(vae_dir / "alt.safetensors"))
    alt = engine.txt2img(GenerationRequest(prompt="x", seed=1, vae="alt.safetensors", **SMALL)).result
    assert "VAE: alt.safetensors" in alt.infotexts[0] and "VAE hash: " in alt.infotexts[0]
    assert not np.array_equal(_pixels(base.images[0]), _pixels(alt.images[0]))
    again = engine.txt2img(GenerationRequest(prompt="x", seed=1, vae="None", **SMALL)).result
    assert np.array_equal(_pixels(base.images[0]), _pixels(again.images[0])) and "VAE:" not in again.infotexts[0]
    save_file(dict(vae), str(data_dir / "models" / "Stable-diffusion" / "tiny.vae.safetensors"))
    auto = engine.txt2img(GenerationRequest(prompt="x", seed=1, vae="Automatic", **SMALL)).result
    assert "VAE: tiny.vae.safetensors" in auto.infotexts[0]
    assert [i.name for i in engine.models.registry.refresh()] == ["tiny.safetensors"]  # not listed as a model
    with pytest.raises(Exception, match="VAE not found"):
        engine.txt2img(GenerationRequest(prompt="x", seed=1, vae="missing.pt", **SMALL))


def test_gpu_noise_without_cuda_is_nv_and_says_so(sd1_engine):
    req = GenerationRequest(prompt="x", seed=5, sampler_name="Euler a", **{**SMALL, "randn_source": "GPU"})
    gpu = sd1_engine.txt2img(req).result
    nv = sd1_engine.txt2img(req.replace(randn_source="NV")).result
    cpu = sd1_engine.txt2img(req.replace(randn_source="CPU")).result
    assert np.array_equal(_pixels(gpu.images[0]), _pixels(nv.images[0]))
    assert not np.array_equal(_pixels(gpu.images[0]), _pixels(cpu.images[0]))
    assert any("NV" in w for w in gpu.warnings) and not any("NV" in w for w in cpu.warnings)
    assert "RNG" not in gpu.infotexts[0] and "RNG: NV" in nv.infotexts[0] and "RNG: CPU" in cpu.infotexts[0]

"""The parameter table: every request field described once, and infotext written from it reads back to the same
request (a property test over generated requests)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from modules import param_io, samplers
from modules.errors import ValidationError
from modules.params import NOT_PARAMS, PARAMS, InfotextContext, by_axis, params_for
from modules.requests import LATENT_UPSCALE_MODES, PIXEL_UPSCALERS, GenerationRequest, Img2ImgRequest
from webui.api.schemas import Img2ImgBody, Txt2ImgBody

HASH = "0123abcdef"


def test_every_request_field_is_described_once():
    fields = {f.name for f in dataclasses.fields(Img2ImgRequest)}
    described = [p.field for p in PARAMS]
    assert len(described) == len(set(described))
    assert set(described) | NOT_PARAMS == fields
    txt2img_fields = {f.name for f in dataclasses.fields(GenerationRequest)}
    assert {p.field for p in params_for("txt2img")} <= txt2img_fields


def test_api_bodies_are_derived_from_the_table():
    for body, kind in ((Txt2ImgBody, "txt2img"), (Img2ImgBody, "img2img")):
        for p in params_for(kind):
            for name in p.api_names:
                assert name in body.model_fields, (kind, name)
    assert "mask_blur" in Img2ImgBody.model_fields and "hr_scale" not in Img2ImgBody.model_fields
    values = param_io.api_values(Txt2ImgBody(sampler_index="DDIM", steps=None).model_dump(), "txt2img")
    assert values["sampler_name"] == "DDIM" and values["steps"] == 50  # A1111's API defaults
    values = param_io.api_values(Img2ImgBody(mask_blur=9, seed_resize_from_w=-1).model_dump(), "img2img")
    assert values["mask_blur_x"] == values["mask_blur_y"] == 9 and values["seed_resize_from_w"] == 0


def test_axes_and_cli_names_come_from_the_table():
    assert by_axis("CFG Scale").field == "cfg_scale" and by_axis("var. seed").field == "subseed"
    assert by_axis("no such axis") is None
    values = param_io.cli_values({"ddim_steps": 7, "H": 64, "W": 128, "scale": 5.0, "n_samples": 2})
    assert values == {"steps": 7, "height": 64, "width": 128, "cfg_scale": 5.0, "batch_size": 2}


@pytest.mark.parametrize("value", ["nan", "inf", float("nan"), "abc", [1]])
def test_coerce_refuses_what_is_not_a_finite_number(value):
    with pytest.raises(ValidationError, match="cfg_scale"):
        param_io.request_from_values(GenerationRequest, {"cfg_scale": value})


def test_bad_infotext_values_are_left_out_with_a_note():
    values, notes = param_io.read_infotext("a cat\nSteps: 20, Sampler: Euler, CFG scale: nan, Seed: x, Size: 64x64")
    assert values["steps"] == 20 and "cfg_scale" not in values and "seed" not in values
    assert any("cfg_scale" in n for n in notes) and any("seed" in n for n in notes)


def test_missing_rng_and_clip_skip_read_as_a1111s_defaults():
    values, _ = param_io.read_infotext("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64")
    assert values["randn_source"] == "GPU" and values["clip_skip"] == 1
    assert param_io.read_infotext("just a prompt")[0] == {"prompt": "just a prompt", "negative_prompt": ""}


# -- the round trip ----------------------------------------------------------------------------------------------
_words = st.from_regex(r"[a-z][a-z (),.\[\]|]{0,20}[a-z)\]]", fullmatch=True)
_prompt = st.one_of(st.just(""), st.lists(_words, min_size=1, max_size=3).map("\n".join))
_size = st.integers(8, 256).map(lambda n: n * 8)
_seed = st.integers(0, 2**32)
_unit = st.floats(0.01, 1.0, allow_nan=False)


@st.composite
def _sampler(draw: st.DrawFn) -> tuple[str, str]:
    """A sampler and a schedule type as A1111 records them ("Automatic" is written as the sampler's default)."""
    name = draw(st.sampled_from(samplers.sampler_names()))
    spec = samplers.find(name)
    schedule = draw(st.sampled_from(samplers.schedule_labels()))
    return name, spec.default_schedule if schedule == "Automatic" and spec.scheduler else schedule


@st.composite
def _hires(draw: st.DrawFn, prompt: str, negative: str) -> dict[str, object]:
    out: dict[str, object] = {"enable_hr": True, "denoising_strength": draw(_unit),
                              "hr_upscaler": draw(st.sampled_from([*LATENT_UPSCALE_MODES, *PIXEL_UPSCALERS]))}
    if draw(st.booleans()):
        out["hr_scale"] = draw(st.floats(1.0, 4.0, allow_nan=False))
    else:
        out["hr_resize_x"], out["hr_resize_y"] = draw(st.sampled_from([(0, 512), (768, 0), (1024, 768)]))
    out["hr_second_pass_steps"] = draw(st.integers(0, 40))
    if draw(st.booleans()):
        out["hr_sampler_name"], out["hr_scheduler"] = draw(_sampler())
    out["hr_prompt"] = draw(_prompt.filter(lambda t: t != prompt))
    out["hr_negative_prompt"] = draw(_prompt.filter(lambda t: t != negative))
    return out


@st.composite
def requests(draw: st.DrawFn, cls: type[GenerationRequest] = GenerationRequest) -> GenerationRequest:
    """Valid requests in the form infotext records them (what is not written stays at its default)."""
    prompt, negative = draw(_prompt), draw(_prompt)
    sampler, schedule = draw(_sampler())
    values: dict[str, object] = {
        "prompt": prompt, "negative_prompt": negative, "steps": draw(st.integers(1, 150)), "sampler_name": sampler,
        "scheduler": schedule, "cfg_scale": draw(st.floats(0, 30, allow_nan=False)), "seed": draw(_seed),
        "width": draw(_size), "height": draw(_size), "checkpoint": HASH,
        "clip_skip": draw(st.integers(1, 12)),
        # ENSD is recorded for the samplers that use it (A1111's rule)
        "eta_noise_seed_delta": draw(st.integers(0, 2**31 - 1)) if samplers.find(sampler).uses_ensd else 0,
        "randn_source": draw(st.sampled_from(["CPU", "GPU"])), "tiling": draw(st.booleans()),
    }
    if draw(st.booleans()):
        values["subseed"], values["subseed_strength"] = draw(_seed), draw(_unit)
    if draw(st.booleans()):
        values["seed_resize_from_w"], values["seed_resize_from_h"] = draw(_size), draw(_size)
    if sampler == "DDIM" and draw(st.booleans()):
        values["eta"] = draw(_unit)
    if cls is GenerationRequest and draw(st.booleans()):
        values.update(draw(_hires(prompt, negative)))
    if cls is Img2ImgRequest:
        values.update(denoising_strength=draw(_unit), mask=Image.new("L", (8, 8), 255),
                      mask_blur_x=draw(st.integers(1, 64)), mask_blur_y=draw(st.integers(0, 64)),
                      inpainting_mask_invert=draw(st.booleans()), inpainting_fill=draw(st.integers(0, 3)),
                      inpaint_full_res=draw(st.booleans()), resize_mode=draw(st.sampled_from([0, 3])),
                      initial_noise_multiplier=draw(st.floats(0.0, 1.5, allow_nan=False)))
        if values["inpaint_full_res"]:
            values["inpaint_full_res_padding"] = draw(st.integers(0, 256))
    return param_io.request_from_values(cls, values)


def _round_trip(req: GenerationRequest) -> GenerationRequest:
    ctx = InfotextContext(req.seed, req.subseed, model_hash=HASH, model_name="tiny")
    text = param_io.build_infotext(req, ctx, req.prompt, req.negative_prompt)
    values, notes = param_io.read_infotext(text, param_io.kind_of(req))
    assert not notes, (text, notes)
    values.pop("_model_name", None)
    base = type(req)(mask=req.mask) if isinstance(req, Img2ImgRequest) else type(req)()
    return param_io.request_from_values(type(req), values, base)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_infotext_round_trip_txt2img(req):
    assert _round_trip(req) == req


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(Img2ImgRequest))
def test_infotext_round_trip_img2img(req):
    assert _round_trip(req) == req

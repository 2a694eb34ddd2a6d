"""The X/Y/Z plot: A1111's axes and arguments, its value syntax, the plan (seeds, dropdowns, loop order), a run with
an interrupt, and through the HTTP API: grids with legends whose cells are the single generations, Z sub-grids,
a checkpoint axis, and bad arguments refused with a 422 naming ``script_args``."""

from __future__ import annotations

import base64
import io
import json
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from modules.engine import JobOutput
from modules.errors import GenerationError, ValidationError
from modules.generation.control import JobControl
from modules.generation.result import GenerationResult
from modules.requests import GenerationRequest
from modules.scripts.base import RunContext
from modules.scripts.grids import GridAnnotation, draw_grid_annotations, image_grid
from modules.scripts.prompt_matrix import PromptMatrix
from modules.scripts.xyz import XYZPlot
from modules.scripts.xyz_axes import Catalog, axes_for
from modules.scripts.xyz_plan import read_plan
from modules.scripts.xyz_run import with_params
from modules.scripts.xyz_values import csv_text, csv_values, float_values, int_values, orderings

SMALL = {"prompt": "a house", "steps": 1, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}
TXT2IMG_AXES = [
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R", "Prompt order",
    "Sampler", "Hires sampler", "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min",
    "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma", "Schedule rho",
    "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising", "Initial noise multiplier",
    "Extra noise", "Hires upscaler", "VAE", "Styles", "UniPC Order", "Face restore", "Token merging ratio",
    "Token merging ratio high-res", "Always discard next-to-last sigma", "SGM noise multiplier", "Refiner checkpoint",
    "Refiner switch at", "RNG source", "FP8 mode", "Size"]
STEPS, CFG, SAMPLER, CHECKPOINT, UNIPC = 4, 6, 9, 11, 31  # txt2img indices, as A1111's API clients send them


def args(x=STEPS, xv="", xd=None, y=0, yv="", yd=None, z=0, zv="", zd=None, legend=True, lone=False, sub=False,
         keep=False, vary=(False, False, False), margin=0, csv=False) -> list:
    return [x, xv, xd, y, yv, yd, z, zv, zd, legend, lone, sub, keep, *vary, margin, csv]


# -- arguments, axes, values --------------------------------------------------------------------------------------
def test_axes_and_controls_are_a1111s():
    assert [a.label for a in axes_for("txt2img")] == TXT2IMG_AXES
    img2img = [a.label for a in axes_for("img2img")]
    assert len(img2img) == 41 and img2img[5:8] == ["CFG Scale", "Image CFG Scale", "Prompt S/R"]
    assert img2img[27] == "Cond. Image Mask Weight" and "Hires steps" not in img2img
    info = XYZPlot().api_info("txt2img")["args"]
    assert [a["label"] for a in info] == [
        "X type", "X values", "X values", "Y type", "Y values", "Y values", "Z type", "Z values", "Z values",
        "Draw legend", "Include Sub Images", "Include Sub Grids", "Keep -1 for seeds", "Vary seeds for X",
        "Vary seeds for Y", "Vary seeds for Z", "Grid margins (px)", "Use text inputs instead of dropdowns"]
    assert [a["value"] for a in info[:4]] == ["Seed", "", None, "Nothing"]
    assert info[0]["choices"] == TXT2IMG_AXES and info[2]["choices"] == []
    assert info[16] == {"label": "Grid margins (px)", "value": 0, "minimum": 0, "maximum": 500, "step": 2,
                        "choices": None}


@pytest.mark.parametrize("text,expected", [
    ("1-5", [1, 2, 3, 4, 5]), ("1-5 (+2)", [1, 3, 5]), ("8-2 (-2)", [8, 6, 4]), ("1-10 [5]", [1, 3, 5, 7, 10]),
    ("5-1", []), ("-1, 5, 2-3", [-1, 5, 2, 3]), (" 3 ,, 4", [3, 4]),
])
def test_integer_ranges(text, expected):
    assert int_values(csv_values(text)) == expected


@pytest.mark.parametrize("text,expected", [
    ("1-2 (+0.5)", [1.0, 1.5, 2.0]), ("0-1 [3]", [0.0, 0.5, 1.0]), ("2.5-1 [3]", [2.5, 1.75, 1.0]),
    ("7, 3.5", [7.0, 3.5]), ("0-1 (+0.3)", [0.0, 0.3, 0.6, 0.8999999999999999, 1.2]),
])
def test_decimal_ranges(text, expected):
    assert float_values(csv_values(text)) == pytest.approx(expected, abs=1e-12)


def test_csv_quoting_and_bad_values():
    assert csv_values('red, blue, "green, dark"') == ["red", "blue", "green, dark"]
    assert csv_text(["Euler", "a, b"]) == 'Euler,"a, b"' and csv_values("") == []
    assert orderings(["a", "b"]) == [("a", "b"), ("b", "a")]
    for bad in (["1.5"], ["1-5 (0)"], ["1-100000"], ["x"]):
        with pytest.raises(ValueError):
            int_values(bad)
    with pytest.raises(ValueError, match="at most"):
        orderings(list("abcdefgh"))


def _plan(req=None, **kw):
    return read_plan(req or GenerationRequest(**SMALL), args(**kw), "txt2img", Catalog())


def test_plan_reads_dropdowns_labels_and_seeds():
    assert _plan(x=SAMPLER, xv="DDIM", xd=["Euler", "LMS"]).axes[0].values == ["Euler", "LMS"]
    assert _plan(x=SAMPLER, xv="DDIM", xd=["Euler"], csv=True).axes[0].values == ["DDIM"]
    assert _plan(x=SAMPLER, xv="DDIM, Heun", xd=[]).axes[0].text == "DDIM, Heun"  # no dropdown: the text
    plan = _plan(x="cfg scale", xv="3, 7.5")
    assert plan.axes[0].labels == ["CFG Scale: 3.0", "CFG Scale: 7.5"] and plan.axes[1].labels == [""]
    random = GenerationRequest(**{**SMALL, "seed": -1})
    plan = _plan(random, x=1, xv="-1, 5", y=STEPS, yv="1,2")
    assert plan.base.seed >= 0 and plan.axes[0].values[1] == 5 and plan.axes[0].values[0] >= 0
    kept = _plan(random, x=1, xv="-1, 5", keep=True, vary=(True, False, False))
    assert kept.base.seed == -1 and kept.axes[0].values == [-1, 5] and kept.request(0, 0, 0).seed == -1
    varied = _plan(xv="1,2", y=CFG, yv="3,7", vary=(True, True, False))
    assert [varied.request(ix, iy, 0).seed for iy in range(2) for ix in range(2)] == [11, 12, 13, 14]


def test_cells_apply_each_axis():
    req = GenerationRequest(**{**SMALL, "prompt": "a red cat, sunny", "negative_prompt": "red"})
    plan = _plan(req, x=7, xv='red, "blue, dark"', y=8, yv="cat, sunny", z=41, zv="64x64, 128x64")
    cell = plan.request(1, 1, 1)
    assert cell.prompt == "a blue, dark sunny, cat" and cell.negative_prompt == "blue, dark"
    assert (cell.width, cell.height) == (128, 64)
    assert plan.axes[1].labels == ["cat, sunny", "sunny, cat"]
    faces = _plan(x=32, xv="False, CodeFormer, gfpgan")
    assert [(faces.request(i, 0, 0).restore_faces, faces.request(i, 0, 0).face_restoration_model)
            for i in range(3)] == [(False, "CodeFormer"), (True, "CodeFormer"), (True, "GFPGAN")]
    assert _plan(x=CHECKPOINT, xv="a, b", y=STEPS, yv="1,2").order()[:2] == [(0, 0, 0), (0, 1, 0)]  # models outer
    assert _plan(xv="1,2", y=CFG, yv="3,7").order()[:2] == [(0, 0, 0), (1, 0, 0)]


class _Styles:
    def names(self):
        return ["warm", "Dark"]

    def apply(self, names, prompt, negative):
        return prompt + "".join(f", {n}" for n in names), negative


class _App:
    """The parts of the application the axes look names up in."""

    def __init__(self, vae_dir):
        from types import SimpleNamespace

        from modules.requests import Limits

        self.styles = _Styles()
        self.paths = SimpleNamespace(vae_dir=vae_dir)
        self.registry = SimpleNamespace(list=lambda: [], find=lambda name: None)
        self.models = SimpleNamespace(current=None)
        self.upscalers = SimpleNamespace(names=lambda: ["None", "Lanczos"])
        self.limits = Limits


def test_names_are_checked_against_the_application(tmp_path):
    (tmp_path / "soft.vae.safetensors").write_bytes(b"")
    app = _App(tmp_path)
    plotted = args(x=30, xd=["warm", "warm,Dark"], y=29, yv="auto, SOFT.vae.safetensors")
    plan = read_plan(GenerationRequest(**SMALL), plotted, "txt2img", Catalog(app))
    cell = plan.request(1, 1, 0)
    assert cell.prompt == "a house, warm, Dark" and cell.styles == ("warm", "Dark")
    assert cell.vae == "soft.vae.safetensors"
    assert plan.request(0, 0, 0).vae is None and plan.axes[1].text == "auto, SOFT.vae.safetensors"
    for kw, message in [({"x": 30, "xd": ["cold"]}, "unknown style 'cold'; valid styles: warm, Dark"),
                        ({"x": 29, "xv": "hard"}, "unknown VAE 'hard'; valid VAEs: Automatic, None, soft.vae"),
                        ({"x": CHECKPOINT, "xv": "a", "csv": True}, "unknown checkpoint 'a'; valid checkpoints: none"),
                        ({"x": 28, "xv": "Latent, ESRGAN", "csv": True}, "unknown upscaler 'ESRGAN'")]:
        with pytest.raises(ValidationError, match=re.escape(message)):
            XYZPlot(app).check(GenerationRequest(**SMALL), args(**kw), "txt2img")


@pytest.mark.parametrize("kw,message", [
    ({"x": UNIPC, "xv": "1,2"}, "X type: UniPC Order cannot be plotted"),
    ({"x": 99, "xv": "1"}, "X type: 99 is not an axis index"),
    ({"x": SAMPLER, "xv": "Euler, Nope", "csv": True}, "unknown sampler 'Nope'; valid samplers: DPM++ 2M"),
    ({"xv": "1, 500"}, "X values: Steps: 500: steps: must be between"),
    ({"xv": ""}, "X values: no values for Steps"),
    ({"xv": "1", "y": 7, "yv": "purple, red"}, "Y values: Prompt S/R did not find purple"),
    ({"xv": "1", "margin": 600}, "Grid margins"),
])
def test_bad_arguments_are_refused(kw, message):
    with pytest.raises(ValidationError, match="^script_args: X/Y/Z plot: .*" + re.escape(message)) as exc:
        XYZPlot().check(GenerationRequest(**SMALL), args(**kw), "txt2img")
    assert exc.value.field == "script_args"


def test_grid_infotext_gets_the_axes_before_version():
    text = "a cat\nSteps: 2, Seed: 3, Version: v1"
    assert with_params(text, {"Script": "X/Y/Z plot", "X Values": "1,2"}) == \
        'a cat\nSteps: 2, Seed: 3, Script: X/Y/Z plot, X Values: "1,2", Version: v1'


def test_grids_center_cells_and_add_legend_bands():
    grid = image_grid([Image.new("RGB", (64, 64), "red"), Image.new("RGB", (32, 64), "blue")], rows=1)
    assert grid.size == (128, 64) and grid.getpixel((64, 0)) == (255, 255, 255) and grid.getpixel((80, 0))[2] == 255
    four = image_grid([Image.new("RGB", (64, 64), "red")] * 4, rows=2)
    legend = draw_grid_annotations(four, 64, 64, [[GridAnnotation("a")], [GridAnnotation("b")]],
                                   [[GridAnnotation("c")], [GridAnnotation("d")]], margin=10)
    top = legend.height - 138
    assert legend.width == 48 + 138 and top > 0 and legend.getpixel((48, top)) == (255, 0, 0)
    with pytest.raises(ValueError):
        draw_grid_annotations(four, 64, 64, [[GridAnnotation("a")]], [[GridAnnotation("c")]])


# -- a run with a stand-in engine ---------------------------------------------------------------------------------
def _fake_job(req: GenerationRequest) -> JobOutput:
    image = Image.new("RGB", (req.width, req.height), (req.steps * 40, 0, 0))
    info = f"{req.prompt}\nSteps: {req.steps}, Seed: {req.seed}, Version: v1"
    return JobOutput(GenerationResult(req, [image], [info], [req.prompt], [req.negative_prompt], [req.seed],
                                      [req.subseed]))


def test_interrupt_between_cells_keeps_what_was_made():
    control, phases = JobControl(), []
    control.subscribe(lambda p: phases.append(p.phase))
    calls = []

    def process(req, save=True):
        calls.append(req)
        if len(calls) == 2:
            raise GenerationError("out of memory")
        if len(calls) == 3:
            control.interrupt()
        return _fake_job(req)

    ctx = RunContext("txt2img", process, control, lambda image, info, req, basename: None)
    out = XYZPlot().run(ctx, GenerationRequest(**SMALL), args(xv="1-4", lone=True))
    assert phases[:3] == ["X/Y/Z plot: 1 out of 4", "X/Y/Z plot: 2 out of 4", "X/Y/Z plot: 3 out of 4"]
    assert out.grids == 1 and len(out.images) == 3  # the grid, then the two cells that were made
    grid = out.images[0]
    assert [grid.getpixel((32 + 64 * i, grid.height - 32))[0] for i in range(4)] == [40, 0, 120, 0]
    assert "Steps: 2" not in "".join(out.infotexts) and out.infotexts[0].startswith("a house\nSteps: 1, Seed: 11")
    assert any("was not made: out of memory" in w for w in control.warnings)


# -- through the HTTP API -----------------------------------------------------------------------------------------
def _register(app):
    for script in (XYZPlot(app), PromptMatrix(app)):
        if app.scripts.find(script.title, "txt2img") is None:
            app.scripts.add(script)


@pytest.fixture
def server(api):
    _register(api.server.app)
    return api


def _images(body: dict) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB") for i in body["images"]]


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def _single(client, **changes) -> Image.Image:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, **changes})
    assert r.status_code == 200, r.text
    return _images(r.json())[0]


def test_steps_by_cfg_grid(server):
    r = server.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "X/Y/Z plot",
                                               "script_args": args(xv="1,2", y=CFG, yv="3, 7", lone=True)})
    assert r.status_code == 200, r.text
    images, info = _images(r.json()), json.loads(r.json()["info"])
    grid, cells = images[0], images[1:]
    assert len(cells) == 4 and grid.width == 48 + 128 and grid.height > 128
    top = grid.height - 128
    assert grid.getpixel((0, 0)) == (255, 255, 255)
    for i, cell in enumerate(cells):  # row by row: X fastest
        assert _same(grid.crop((48 + 64 * (i % 2), top + 64 * (i // 2), 112 + 64 * (i % 2), top + 64 + 64 * (i // 2))),
                     cell)
    assert _same(cells[0], _single(server, steps=1, cfg_scale=3)) and _same(cells[3], _single(server, steps=2))
    texts = info["infotexts"]
    assert ["Steps: 1" in texts[1], "CFG scale: 3" in texts[1], "Steps: 2" in texts[4], "CFG scale: 7" in texts[4]] \
        == [True] * 4
    assert 'Script: X/Y/Z plot, X Type: Steps, X Values: "1,2", Y Type: CFG Scale, Y Values: "3, 7", Version' \
        in texts[0] and texts[0].startswith("a house\nSteps: 1")
    assert "X Type" not in texts[1] and info["all_seeds"][1:] == [11] * 4


def test_z_sub_grids_and_seed_by_sampler(server):
    body = {**SMALL, "seed": -1, "script_name": "x/y/z plot",
            "script_args": args(x=1, xv="-1, 7", z=SAMPLER, zd=["Euler", "DDIM"], lone=True, sub=True)}
    r = server.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    images, info = _images(r.json()), json.loads(r.json()["info"])
    main, subs, cells = images[0], images[1:3], images[3:]
    assert len(cells) == 4 and subs[0].size == subs[1].size and subs[0].width == 128
    assert main.width == 2 * subs[0].width and main.height > subs[0].height
    seeds = info["all_seeds"][3:]
    assert seeds[1] == seeds[3] == 7 and seeds[0] == seeds[2] != -1
    texts = info["infotexts"]
    assert f"Fixed X Values: \"{seeds[0]}, 7\"" in texts[0] and 'Z Type: Sampler, Z Values: "Euler,DDIM"' in texts[0]
    assert "Z Type" not in texts[1] and "Sampler: DDIM" in texts[2] and "Sampler: DDIM" in texts[5]
    assert _same(cells[3], _single(server, seed=7, sampler_name="DDIM"))


def test_bad_arguments_are_422s(server):
    for script_args, message in [
        (args(x=UNIPC, xv="1"), "UniPC Order cannot be plotted"),
        (args(x=SAMPLER, xv="Nope", csv=True), "unknown sampler"),
        (args(x=CHECKPOINT, xd=["missing.safetensors"]), "unknown checkpoint 'missing.safetensors'; valid checkpoints"),
        (args(x=41, xv="64x68"), "must be a multiple of 8"),
        (args(x="no such axis"), "unknown axis 'no such axis'"),
    ]:
        r = server.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "x/y/z plot", "script_args": script_args})
        assert r.status_code == 422 and "script_args" in r.text and message in r.text, r.text
    assert server.server.app.queue.wait_idle(1)


def test_checkpoint_axis_switches_models(live_server):
    server = live_server(models=("sd1", "sd2"))
    _register(server.app)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
        r = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "x/y/z plot",
                                                   "script_args": args(x=CHECKPOINT, xd=titles, lone=True)})
        assert r.status_code == 200, r.text
        images, info = _images(r.json()), json.loads(r.json()["info"])
        names = [t.split("Model: ")[1].split(",")[0] for t in info["infotexts"][1:]]
        assert names == [t.split(".safetensors")[0] for t in titles] and len(set(names)) == 2
        assert not _same(images[1], images[2])
        assert _same(images[2], _single(client, override_settings={"sd_model_checkpoint": titles[1]}))

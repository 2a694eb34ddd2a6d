"""A1111's built-in scripts Prompts from file or textbox, SD upscale and Loopback: their controls in A1111's order,
their runs through the API with a tiny model (sizes, seeds, infotexts, as A1111 1.10 gives them), bad arguments
refused naming ``script_args``, and their logic over a stand-in generation (tile counts, seeds, curves)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from modules.engine import JobOutput
from modules.generation.control import JobControl
from modules.generation.result import GenerationResult
from modules.scripts.base import RunContext
from modules.scripts.loopback import Loopback, denoising_strength
from modules.scripts.prompts_from_file import PromptsFromFile, parse_lines
from modules.scripts.sd_upscale import SDUpscale, combine_tiles, split_tiles, with_params
from tests.conftest import install_model

SMALL = {"prompt": "a house", "steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}
PFF = "prompts from file or textbox"


def script_objects() -> list:
    from modules.scripts.outpainting import PoorMansOutpainting
    from modules.scripts.outpainting_mk2 import OutpaintingMk2

    return [PromptsFromFile(), SDUpscale(), Loopback(), OutpaintingMk2(), PoorMansOutpainting()]


@contextlib.contextmanager
def scripts_server(tmp_path_factory, model_store):
    """A live API server with a tiny SD 1.x model and the built-in scripts (added where not registered yet)."""
    import httpx

    from modules.app import App, StartOptions
    from tests.conftest import LiveServer
    from webui.launch_options import ServerConfig

    data = tmp_path_factory.mktemp("scripts-data")
    install_model(data, model_store("sd1", "safetensors"), "tiny")
    app = App(StartOptions(data_dir=data, device="cpu"))
    for script in script_objects():
        if app.scripts.find(script.name, "img2img") is None:
            if isinstance(script, SDUpscale):
                script.upscaler_names = app.upscalers.names
            app.scripts.add(script)
    config = ServerConfig("127.0.0.1", 0, True, {}, {}, False, {})
    app.launch_flags = config.flags
    server = LiveServer(app, config)
    try:
        app.queue.wait_idle(60)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            yield client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(tmp_path_factory, model_store):
    with scripts_server(tmp_path_factory, model_store) as c:
        yield c


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def init_image(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A gradient with a red square: easy to see kept or changed."""
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    image = np.stack([x, y, 255 - x], axis=2).astype(np.uint8)
    image[h // 4:h // 2, w // 4:w // 2] = (220, 30, 30)
    return Image.fromarray(image)


def post(client, kind: str, body: dict) -> tuple[list[Image.Image], dict]:
    r = client.post(f"/sdapi/v1/{kind}", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return [Image.open(io.BytesIO(base64.b64decode(i))) for i in data["images"]], json.loads(data["info"])


def pixels_equal(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and bool((np.asarray(a.convert("RGB")) == np.asarray(b.convert("RGB"))).all())


# -- a stand-in generation: img2img gives its init images back, txt2img grey images ----------------------------------
class Recorder:
    def __init__(self) -> None:
        self.requests: list = []

    def __call__(self, req, save: bool = True) -> JobOutput:
        self.requests.append(req)
        count = req.batch_size * req.n_iter
        inits = list(getattr(req, "init_images", ()))
        images = [(inits[i] if len(inits) > 1 else inits[0]).resize((req.width, req.height)) if inits
                  else Image.new("RGB", (req.width, req.height), "grey") for i in range(count)]
        seeds = [req.seed + i for i in range(count)]
        infos = [f"{req.prompt}\nSteps: {req.steps}, Seed: {s}, Size: {req.width}x{req.height}, Version: t"
                 for s in seeds]
        return JobOutput(GenerationResult(req, images, infos, [req.prompt] * count, [""] * count, seeds,
                                          [req.subseed] * count))


def run_script(script, req, args: list, kind: str = "img2img") -> tuple[object, Recorder]:
    recorder = Recorder()
    ctx = RunContext(kind, recorder, JobControl(), lambda image, info, r, basename: None, None)
    return script.run(ctx, req, script.args_with_defaults(args, kind)), recorder


def img2img_request(**changes):
    from modules.requests import Img2ImgRequest

    return Img2ImgRequest(**{**SMALL, "init_images": (init_image(),), "denoising_strength": 0.5, **changes})


# -- controls --------------------------------------------------------------------------------------------------------
def test_controls_are_a1111s(client):
    """Labels, defaults and order as A1111 1.10's /script-info gives them (an HTML block takes a place too)."""
    info = {(s["name"], s["is_img2img"]): s["args"] for s in client.get("/sdapi/v1/script-info").json()}
    assert [(a["label"], a["value"]) for a in info[(PFF, False)]] == [
        ("Iterate seed every line", False), ("Use same random seed for all lines", False),
        ("Insert prompts at the", "start"), ("List of prompt inputs", "")]
    assert info[(PFF, True)] == info[(PFF, False)]
    upscale = info[("sd upscale", True)]
    assert [a["label"] for a in upscale] == ["", "Tile overlap", "Upscaler", "Scale Factor"]
    assert upscale[0]["value"].startswith("<p") and upscale[1]["value"] == 64 and upscale[3]["value"] == 2.0
    assert upscale[2]["choices"][:3] == ["None", "Lanczos", "Nearest"] and upscale[2]["value"] == "None"
    assert [(a["label"], a["value"], a["minimum"], a["maximum"]) for a in info[("loopback", True)]] == [
        ("Loops", 4, 1, 32, ), ("Final denoising strength", 0.5, 0, 1), ("Denoising strength curve", "Linear", None,
                                                                          None),
        ("Append interrogated prompt at each iteration", "None", None, None)]
    assert ("sd upscale", False) not in info and ("loopback", False) not in info


# -- Prompts from file or textbox ------------------------------------------------------------------------------------
LINES = ('a cat\n--prompt "a dog" --steps 1 --seed 5 --width 128\n'
         '--prompt red --negative_prompt blue --cfg_scale 3.5 --sampler_name "DPM++ 2M" --n_iter 2')


def test_prompts_from_file_lines_with_options(client):
    images, info = post(client, "txt2img", {**SMALL, "script_name": PFF, "script_args": [False, False, "start", LINES]})
    assert [im.size for im in images] == [(64, 64), (128, 64), (64, 64), (64, 64)]  # no grid, as A1111
    assert info["all_prompts"] == ["a cat a house", "a dog a house", "red a house", "red a house"]
    assert info["all_seeds"] == [11, 5, 11, 12] and info["index_of_first_image"] == 0
    texts = info["infotexts"]
    assert "Steps: 1," in texts[1] and "Seed: 5," in texts[1] and "Size: 128x64" in texts[1]
    assert texts[2].startswith("red a house\nNegative prompt: blue\n")
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 3.5" in texts[3] and "Seed: 12," in texts[3]
    plain, _ = post(client, "txt2img", {**SMALL, "prompt": "a cat a house"})
    assert pixels_equal(images[0], plain[0])


def test_prompts_from_file_seed_options(client):
    body = {**SMALL, "script_name": PFF}
    _, info = post(client, "txt2img", {**body, "batch_size": 2, "script_args": [True, False, "end", "one\ntwo"]})
    assert info["all_prompts"] == ["a house one"] * 2 + ["a house two"] * 2
    assert info["all_seeds"] == [11, 12, 13, 14]  # each line starts the job's image count further on
    _, info = post(client, "txt2img", {**body, "seed": -1, "script_args": [False, True, "start", "one\ntwo\n\n"]})
    assert len(set(info["all_seeds"])) == 1 and info["all_seeds"][0] >= 0
    _, info = post(client, "txt2img", {**body, "seed": -1, "script_args": [True, False, "start", "one\ntwo"]})
    assert info["all_seeds"][1] == info["all_seeds"][0] + 1
    images, info = post(client, "img2img", {**body, "init_images": [b64(init_image())],
                                            "script_args": [False, False, "start", "--prompt x --steps 1\ny"]})
    assert info["all_prompts"] == ["x a house", "y a house"] and len(images) == 2


@pytest.mark.parametrize("text,words", [
    ("--bogus 3", "unknown option --bogus"),
    ("a cat\n--steps x", "line 2: --steps: 'x' is not an integer"),
    ("--sampler_name nope", "unknown sampler"),
    ('--prompt "unclosed', "line 1"),
    ("--steps", "missing argument"),
    ("--steps 0", "line 1: steps: must be between"),  # a value out of bounds: refused before anything is made
    ("ok\n--width 100", "line 2: width: must be a multiple of 8"),
])
def test_prompts_from_file_bad_lines_are_422s(client, text, words):
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": PFF, "script_args": [False, False, "start",
                                                                                           text]})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "script_args" and words in r.json()["detail"], r.text


def test_prompts_from_file_parsing():
    lines = parse_lines('  a cat -- sitting  \n\n--prompt a "b c" --negative_prompt x y --styles One "Two B" '
                        '--tiling true --restore_faces false --sampler_name "DPM++ 2M Karras" --outpath_samples /x\n'
                        'no "quote -- here')
    assert lines[0].prompt == "a cat -- sitting" and lines[0].changes == {}  # a prompt, as A1111 reads it
    assert lines[1].prompt == "a b c" and lines[1].negative_prompt == "x y"
    assert lines[1].changes == {"styles": ("One", "Two B"), "tiling": True, "restore_faces": False,
                                "sampler_name": "DPM++ 2M", "scheduler": "Karras"}
    assert lines[1].warnings and "outpath_samples" in lines[1].warnings[0]
    assert lines[2].prompt == 'no "quote -- here'
    out, rec = run_script(PromptsFromFile(), img2img_request(prompt=""), [False, False, "end", "--prompt p\nq"],
                          "txt2img")
    assert [r.prompt for r in rec.requests] == ["p", "q"]  # an empty request prompt: the line's alone


# -- SD upscale ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,tile,overlap,count", [
    ((128, 128), 64, 16, 9), ((128, 128), 64, 8, 9), ((96, 96), 64, 16, 4), ((192, 64), 64, 32, 5),
    ((64, 64), 64, 0, 1), ((300, 200), 96, 16, 12)])
def test_tiles_count_and_blend_back(size, tile, overlap, count):
    image = init_image(size)
    grid = split_tiles(image, tile, tile, overlap)
    assert len(grid.tiles) == count and all(t.image.size == (tile, tile) for _, _, t in grid.tiles)
    assert pixels_equal(combine_tiles(grid), image)  # unchanged tiles give the image back


def test_sd_upscale_tiles_and_seeds():
    script = SDUpscale()
    out, rec = run_script(script, img2img_request(batch_size=2, n_iter=2), ["", 16, "Lanczos", 1.5])
    assert [im.size for im in out.images] == [(96, 96), (96, 96)]
    # 4 tiles of 64 in batches of 2; each batch's seed is one more than the last batch's first (A1111)
    assert [(len(r.init_images), r.seed) for r in rec.requests] == [(2, 11), (2, 12), (2, 12), (2, 13)]
    assert all(r.mask is None and (r.width, r.height) == (64, 64) for r in rec.requests)
    assert out.infotexts[0].endswith("SD upscale overlap: 16, SD upscale upscaler: Lanczos, Version: t")
    out, rec = run_script(script, img2img_request(), ["", 16, 0, 2.0])
    assert out.images[0].size == (64, 64) and len(rec.requests) == 1  # "None": A1111 tiles the image unscaled


def test_sd_upscale_through_the_api(client):
    body = {**SMALL, "init_images": [b64(init_image())], "denoising_strength": 0.3, "script_name": "SD upscale"}
    images, info = post(client, "img2img", {**body, "script_args": ["", 16, "Lanczos", 2.0]})
    assert [im.size for im in images] == [(128, 128)]
    assert "SD upscale overlap: 16, SD upscale upscaler: Lanczos" in info["infotexts"][0]
    assert info["extra_generation_params"]["SD upscale upscaler"] == "Lanczos"
    first = init_image().resize((128, 128), Image.Resampling.LANCZOS).crop((0, 0, 64, 64))
    tile, _ = post(client, "img2img", {**SMALL, "denoising_strength": 0.3, "init_images": [b64(first)]})
    assert pixels_equal(images[0].crop((0, 0, 16, 16)), tile[0].crop((0, 0, 16, 16)))  # the first tile's corner
    images, _ = post(client, "img2img", {**body, "script_args": ["", 8, 2, 1.5]})  # an index: Nearest
    assert images[0].size == (96, 96)


@pytest.mark.parametrize("args,words", [
    (["", 64, "Lanczos", 2.0], "Tile overlap"), (["", 8, "Nope", 2.0], "unknown upscaler"),
    (["", 8, 99, 2.0], "out of range"), (["", 8, "Lanczos", 0], "Scale Factor"), (["", "x", "Lanczos", 2], "number")])
def test_sd_upscale_bad_arguments_are_422s(client, args, words):
    r = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(init_image())],
                                               "script_name": "sd upscale", "script_args": args})
    assert r.status_code == 422 and r.json()["field"] == "script_args" and words in r.json()["detail"], r.text


def test_with_params_goes_before_version():
    text = 'p\nNegative prompt: n\nSteps: 2, Sampler: Euler, Lora hashes: "a: 1, b: 2", Version: v, User: u'
    assert with_params(text, {"K": 0.5, "L": "x, y", "M": 1.0}) == (
        'p\nNegative prompt: n\nSteps: 2, Sampler: Euler, Lora hashes: "a: 1, b: 2", K: 0.5, L: "x, y", M: 1.0, '
        'Version: v, User: u')


# -- Loopback --------------------------------------------------------------------------------------------------------
def test_loopback_curves():
    assert denoising_strength(0.5, 0.2, "Linear", 1, 3) == pytest.approx(0.35)
    assert denoising_strength(0.5, 0.9, "Aggressive", 1, 4) == pytest.approx(0.5 + 0.4 * math.sin(math.pi / 6))
    assert denoising_strength(0.5, 0.9, "Lazy", 1, 4) == pytest.approx(0.5 + 0.4 * (1 - math.cos(math.pi / 6)))
    assert denoising_strength(0.5, 0.9, "Lazy", 3, 4) == pytest.approx(0.9)
    assert denoising_strength(0.5, 0.9, "Linear", 0, 1) == 0.5  # one loop: the request's strength
    out, rec = run_script(Loopback(), img2img_request(n_iter=2, batch_size=3, inpainting_fill=0), [3, 0.2, "Lazy"])
    assert [(r.seed, r.batch_size, r.inpainting_fill) for r in rec.requests] == [
        (11, 1, 0), (12, 1, 1), (13, 1, 1), (14, 1, 0), (15, 1, 1), (16, 1, 1)]  # seeds go on across batches
    assert out.grids == 1 and out.seeds == [13, 13, 16]  # the strip of each batch's last image, then those


def test_loopback_through_the_api(client):
    body = {**SMALL, "init_images": [b64(init_image())], "denoising_strength": 0.5, "script_name": "loopback"}
    images, info = post(client, "img2img", {**body, "script_args": [3, 0.2, "Linear", "None"]})
    assert [im.size for im in images] == [(192, 64), (64, 64), (64, 64), (64, 64)]  # the strip first
    assert info["all_seeds"][1:] == [11, 12, 13]
    strengths = [t.split("Denoising strength: ")[1].split(",")[0] for t in info["infotexts"][1:]]
    assert strengths == ["0.5", "0.35", "0.2"]
    assert all("Final denoising strength: 0.2, Denoising curve: Linear" in t for t in info["infotexts"])
    plain, _ = post(client, "img2img", {**SMALL, "init_images": [b64(init_image())], "denoising_strength": 0.5})
    assert pixels_equal(images[1], plain[0]) and pixels_equal(images[0].crop((0, 0, 64, 64)), plain[0])
    images, info = post(client, "img2img", {**body, "script_args": [1]})
    assert len(images) == 1 and "Denoising strength: 0.5" in info["infotexts"][0]


@pytest.mark.parametrize("args,words", [
    ([0], "Loops"), ([2, 1.5], "Final denoising strength"), ([2, 0.5, "Fast"], "curve"), ([2, 0.5, "Linear", "X"],
                                                                                         "interrogated")])
def test_loopback_bad_arguments_are_422s(client, args, words):
    r = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(init_image())],
                                               "script_name": "loopback", "script_args": args})
    assert r.status_code == 422 and r.json()["field"] == "script_args" and words in r.json()["detail"], r.text


def test_loopback_interrogation_needs_its_model(client):
    r = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(init_image())],
                                               "script_name": "loopback", "script_args": [2, 0.5, "Linear", "CLIP"]})
    assert r.status_code == 422 and "BLIP" in r.json()["detail"], r.text

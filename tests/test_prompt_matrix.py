"""The prompt matrix: A1111's controls, the prompts it makes from ``|`` parts, the grid's layout with its struck-out
legends, and through the HTTP API: one image per combination (each the single generation of its prompt) after the
grid, the negative prompt variant, different seeds, and bad arguments refused with a 422 naming ``script_args``."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from modules.errors import ValidationError
from modules.requests import GenerationRequest
from modules.scripts.grids import draw_prompt_matrix, image_grid
from modules.scripts.prompt_matrix import PromptMatrix, matrix_prompts
from modules.scripts.xyz import XYZPlot

SMALL = {"steps": 1, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}


def test_controls_are_a1111s():
    info = PromptMatrix().api_info("img2img")
    assert info["name"] == "prompt matrix" and info["is_img2img"]
    assert [(a["label"], a["value"], a["choices"]) for a in info["args"]] == [
        ("Put variable parts at start of prompt", False, None), ("Use different seed for each picture", False, None),
        ("Select prompt", "positive", ["positive", "negative"]), ("Select joining char", "comma", ["comma", "space"]),
        ("Grid margins (px)", 0, None)]


def test_prompts_of_every_combination():
    assert matrix_prompts("a house|red|sunny, |old", False, ", ") == [
        "a house", "a house, red", "a house, sunny", "a house, red, sunny", "a house, old", "a house, red, old",
        "a house, sunny, old", "a house, red, sunny, old"]
    assert matrix_prompts("a house|red|sunny", True, " ") == ["a house", "red a house", "sunny a house",
                                                             "red sunny a house"]
    assert matrix_prompts("plain", False, ", ") == ["plain"]


def test_grid_layout():
    cells = [Image.new("RGB", (64, 64), (30 * i, 0, 0)) for i in range(8)]
    grid = image_grid(cells, rows=2)
    assert grid.size == (256, 128)
    matrix = draw_prompt_matrix(grid, 64, 64, ["a house", "red", "sunny", "old"], margin=6)
    top = matrix.height - 134
    assert matrix.width == 48 + 256 + 18 and top > 0  # "old" labels the rows: a band of 3/4 of a cell
    assert matrix.getpixel((48 + 70 * 3 + 5, top + 70 + 5)) == (7 * 30, 0, 0)  # the last cell: every part
    alone = draw_prompt_matrix(image_grid(cells[:1]), 64, 64, ["plain"])
    assert alone.width == 64 and alone.height > 64  # no variable part: an empty band, as A1111 draws it


@pytest.mark.parametrize("args,message", [
    ([False, False, "both"], "Select prompt: unknown prompt type 'both'"),
    ([False, False, "positive", "tab"], "Select joining char: unknown delimiter 'tab'"),
    ([False, False, "positive", "comma", 900], "Grid margins (px): must be between 0 and 500"),
])
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(ValidationError) as exc:
        PromptMatrix().check(GenerationRequest(prompt="a|b", **SMALL), args, "txt2img")
    assert exc.value.field == "script_args" and str(exc.value).startswith(f"script_args: Prompt matrix: {message}")


# -- through the HTTP API -----------------------------------------------------------------------------------------
@pytest.fixture
def server(api):
    app = api.server.app
    for script in (XYZPlot(app), PromptMatrix(app)):
        if app.scripts.find(script.title, "txt2img") is None:
            app.scripts.add(script)
    return api


def _post(client, **body):
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert r.status_code == 200, r.text
    images = [Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB") for i in r.json()["images"]]
    return images, json.loads(r.json()["info"])


def test_matrix_through_the_api(server):
    images, info = _post(server, prompt="a house|red|sunny", script_name="Prompt matrix",
                         script_args=[False, True, "positive", "comma", 4])
    grid, cells = images[0], images[1:]
    assert len(cells) == 4 and info["index_of_first_image"] == 1
    assert info["all_prompts"] == ["a house", "a house", "a house, red", "a house, sunny", "a house, red, sunny"]
    assert info["all_seeds"] == [11, 11, 12, 13, 14] and info["infotexts"][0] == info["infotexts"][1]
    assert grid.width == 48 + 128 + 4 and grid.height > 128 + 4  # one part across, one down: 2x2, a margin
    top = grid.height - 132
    assert np.array_equal(np.asarray(grid.crop((48, top, 112, top + 64))), np.asarray(cells[0]))
    assert np.array_equal(np.asarray(grid.crop((116, top + 68, 180, top + 132))), np.asarray(cells[3]))
    single, _ = _post(server, prompt="a house, red, sunny", seed=14)
    assert np.array_equal(np.asarray(single[0]), np.asarray(cells[3]))

    images, info = _post(server, prompt="a cat", negative_prompt="ugly|dark", script_name="prompt matrix",
                         script_args=[True, False, "negative", "space"])
    assert info["all_negative_prompts"][1:] == ["ugly", "dark ugly"] and info["all_seeds"][1:] == [11, 11]
    assert info["all_prompts"][1:] == ["a cat", "a cat"] and len(images) == 3

    r = server.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a|b", "script_name": "prompt matrix",
                                               "script_args": [False, False, "sideways"]})
    assert r.status_code == 422 and "script_args: Prompt matrix: Select prompt" in r.text

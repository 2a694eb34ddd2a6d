"""The script system: scripts listed and described as A1111's API lists them, selected by ``script_name`` with
``script_args`` in their controls' order (defaults for what is left out), always-on scripts changing the request,
and a script's grids coming first in the result."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from modules.scripts.base import Control, Script, ScriptOutput

SMALL = {"prompt": "a house", "steps": 2, "width": 64, "height": 64, "seed": 11}


class TwoSeeds(Script):
    """A selectable script: the request with its seed and the next, side by side in a grid."""

    title = "Two seeds"
    tabs = frozenset({"txt2img"})

    def controls(self, kind):
        return [Control("Seed step", "number", 1), Control("Label", "textbox", "pair")]

    def run(self, ctx, req, args):
        out = ScriptOutput()
        for k in range(2):
            out.add_job(ctx.process(req.replace(seed=req.seed + k * int(args[0]))))
        grid = Image.new("RGB", (128, 64))
        for k in range(2):
            grid.paste(out.images[k], (64 * k, 0))
        out.add(grid, f"grid {args[1]}", grid=True)
        return out


class Suffix(Script):
    """An always-on script that appends its argument to the prompt."""

    title = "Suffix"
    alwayson = True

    def controls(self, kind):
        return [Control("Text", "textbox", ", sunny")]

    def before(self, req, args):
        return req.replace(prompt=req.prompt + args[0])


@pytest.fixture
def server(api):
    app = api.server.app
    for script in (TwoSeeds(), Suffix()):
        app.scripts.add(script)
    return api


def test_scripts_are_listed_selected_and_run(server):
    listed = server.get("/sdapi/v1/scripts").json()
    assert "two seeds" in listed["txt2img"] and "two seeds" not in listed["img2img"]
    assert "suffix" in listed["txt2img"] and "suffix" in listed["img2img"]
    info = [s for s in server.get("/sdapi/v1/script-info").json() if s["name"] == "two seeds"]
    assert info == [{"name": "two seeds", "is_alwayson": False, "is_img2img": False,
                     "args": [{"label": "Seed step", "value": 1, "minimum": None, "maximum": None, "step": None,
                               "choices": None},
                              {"label": "Label", "value": "pair", "minimum": None, "maximum": None, "step": None,
                               "choices": None}]}]

    r = server.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "Two Seeds", "script_args": [5]})
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    images = [Image.open(io.BytesIO(base64.b64decode(i))) for i in body["images"]]
    assert [im.size for im in images] == [(128, 64), (64, 64), (64, 64)]  # the grid first
    assert info["index_of_first_image"] == 1 and info["all_seeds"] == [-1, 11, 16]
    assert info["infotexts"][0] == "grid pair"  # the second argument left out: its default
    plain = server.post("/sdapi/v1/txt2img", json={**SMALL, "seed": 16}).json()
    assert plain["images"][0] == body["images"][2]

    r = server.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"Suffix": {"args": [", at night"]}}})
    assert json.loads(r.json()["info"])["prompt"] == "a house, at night"


@pytest.mark.parametrize("body,field", [
    ({"script_name": "no such script"}, "script_name"),
    ({"script_name": "suffix"}, "script_name"),  # always-on scripts are not selectable
    ({"alwayson_scripts": {"nope": {}}}, "alwayson_scripts"),
    ({"alwayson_scripts": {"two seeds": {"args": []}}}, "alwayson_scripts"),
    ({"alwayson_scripts": {"suffix": {"args": "text"}}}, "alwayson_scripts"),
])
def test_bad_script_requests_are_422s(server, body, field):
    r = server.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert r.status_code == 422 and field in r.text, r.text


def test_the_script_dropdown_runs_the_selected_script(server):
    import gradio as gr

    from webui.ui.common import TokenCounter
    from webui.ui.txt2img import build_txt2img_tab
    from webui.ui.txt2img_handlers import Txt2ImgHandlers, default_values

    app = server.server.app
    with gr.Blocks():
        ui = build_txt2img_tab(app, TokenCounter())
    titles = [title for title, _ in ui.fields["script_name"].choices]
    assert titles == ["None", "Prompt matrix", "Prompts from file or textbox", "X/Y/Z plot", "Two seeds"]
    assert ui.script_fields[0] == "script_name"
    assert ui.script_fields[-2:] == ["script:two seeds:0", "script:two seeds:1"]
    handlers = Txt2ImgHandlers(app)
    values = {**default_values(app), **SMALL, "script_name": "Two seeds", "script:two seeds:0": 2,
              "script:two seeds:1": "from the form"}
    job = handlers.submit(values)
    job.wait()
    assert job.result.first_image == 1 and job.result.images[0].infotext == "grid from the form"
    assert [i.seed for i in job.result.images[1:]] == [11, 13]


def test_xyz_value_dropdowns_follow_the_axis_type():
    from modules import samplers
    from modules.scripts.xyz import XYZPlot

    xyz = XYZPlot()
    assert xyz.linked_choices("txt2img") == [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
    labels = list(xyz.controls("txt2img")[0].choice_list() or [])
    assert xyz.choices_for("txt2img", 0, labels.index("Sampler")) == samplers.sampler_names()
    assert xyz.choices_for("txt2img", 0, "Schedule type") == samplers.schedule_labels()
    assert xyz.choices_for("txt2img", 0, labels.index("Steps")) is None  # typed as text
    assert xyz.choices_for("txt2img", 0, 999) is None

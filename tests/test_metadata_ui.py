"""The PNG Info tab's handlers called directly: reading files, messages, and "Send to txt2img"."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from modules.images import encode_image
from tests.conftest import running_app
from tests.test_metadata import INFOTEXT, png, text_chunk


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_store):
    with running_app(tmp_path_factory.mktemp("pnginfo-ui"), model_store, ("tiny", "other")) as app:
        yield app


@pytest.fixture
def handlers(app):
    from webui.ui.pnginfo import PngInfoHandlers

    return PngInfoHandlers(app)


def _file(tmp_path, data: bytes, name: str = "x.png") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_read_file_shows_table_items_and_tool(handlers, tmp_path):
    text = INFOTEXT.replace("a red fox", "<b>a red fox</b>")
    view = handlers.read_file(_file(tmp_path, png(before=[text_chunk("parameters", text),
                                                          text_chunk("Comment", "<script>x</script>")])))
    assert view.infotext == text and view.preview and "A1111" in view.tool and "PNG, 8x8" in view.tool
    assert "&lt;b&gt;a red fox&lt;/b&gt;" in view.parameters and "<b>a red fox" not in view.parameters
    assert "<th>Hires upscaler</th><td>Latent</td>" in view.parameters
    assert "&lt;script&gt;" in view.items and view.log == ""
    # the text the parameters came from stays among the raw items, to copy as written
    assert "<th>parameters</th>" in view.items and "&lt;b&gt;a red fox&lt;/b&gt;" in view.items


def test_read_file_messages(handlers, tmp_path, monkeypatch):
    import webui.ui.pnginfo as pnginfo

    assert handlers.read_file(None).log == ""
    bad = handlers.read_file(_file(tmp_path, b"not an image", "a.txt"))
    assert "not an image" in bad.log and "sd-error" in bad.log and bad.infotext == ""
    assert "Cannot read" in handlers.read_file(str(tmp_path / "missing.png")).log
    plain = handlers.read_file(_file(tmp_path, png()))
    assert "no generation parameters" in plain.tool and plain.parameters == ""
    truncated = handlers.read_file(_file(tmp_path, png(before=[text_chunk("parameters", INFOTEXT)])[:-30]))
    assert truncated.infotext == INFOTEXT and "truncated" in truncated.log and truncated.preview is None
    monkeypatch.setattr(pnginfo, "MAX_FILE_BYTES", 10)
    assert "too large" in handlers.read_file(_file(tmp_path, png())).log


def test_send_to_txt2img_fills_fields_and_switches_checkpoint(app, handlers):
    text = INFOTEXT.replace("6ce0161689", "0000000000").replace("v1-5-pruned-emaonly", "other")
    values, message, checkpoint = handlers.send_to_txt2img(text)
    assert values["prompt"] == "a red fox in the snow, (detailed fur:1.2)" and values["negative_prompt"]
    assert (values["steps"], values["seed"], values["width"], values["height"], values["cfg_scale"]) == \
        (25, 1234567890, 512, 768, 7.0)
    assert (values["sampler_name"], values["scheduler"], values["clip_skip"]) == ("DPM++ 2M", "Karras", 2)
    assert values["enable_hr"] is True and values["hr_scale"] == 2.0 and values["denoising_strength"] == 0.45
    assert "choose it in the checkpoint list" not in message
    assert checkpoint["value"] == app.registry.find("other").title
    assert app.settings["sd_model_checkpoint"] == app.registry.find("other").title
    app.queue.wait_idle(60)


def test_send_to_txt2img_notes(handlers):
    values, message, _ = handlers.send_to_txt2img(INFOTEXT)
    assert values and "v1-5-pruned-emaonly is not installed" in message
    values, message, _ = handlers.send_to_txt2img("")
    assert values == {} and "Drop an image" in message
    comfy = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 6, "cfg": 3, "sampler_name": "dpmpp_sde",
                                                         "scheduler": "normal", "positive": ["6", 0],
                                                         "negative": ["7", 0], "latent_image": ["5", 0]}},
             "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 96, "batch_size": 1}},
             "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bird"}},
             "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cage"}}}
    from modules.metadata import read_metadata

    md = read_metadata(png(after=[text_chunk("prompt", json.dumps(comfy))]))
    values, message, _ = handlers.send_to_txt2img(md.infotext)
    assert (values["prompt"], values["negative_prompt"], values["sampler_name"], values["height"]) == \
        ("a bird", "a cage", "DPM++ SDE", 96)
    assert values["scheduler"] == "Normal" and "Unknown scheduler" not in message


def test_paste_other_tools_json_into_the_prompt(app):
    from webui.ui.txt2img_handlers import Txt2ImgHandlers

    graph = {"3": {"class_type": "KSampler", "inputs": {"seed": 8, "steps": 7, "cfg": 4, "sampler_name": "euler",
                                                         "scheduler": "karras", "positive": ["6", 0],
                                                         "negative": ["6", 0], "latent_image": ["5", 0]}},
             "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fish"}}}
    values, _ = Txt2ImgHandlers(app).read_parameters(json.dumps(graph))
    assert (values["prompt"], values["steps"], values["seed"], values["scheduler"]) == ("a fish", 7, 8, "Karras")


def test_product_jpeg_through_the_tab(handlers, tmp_path):
    data = encode_image(Image.new("RGB", (32, 32), "blue"), "jpg", INFOTEXT)
    view = handlers.read_file(_file(tmp_path, data, "x.jpg"))
    assert view.infotext == INFOTEXT and "JPEG, 32x32" in view.tool


def test_civitai_hires_size_and_ruined_fooocus_through_the_tab(handlers, tmp_path):
    from tests.test_metadata_savers import CIVITAI, RUINED

    text = CIVITAI.format(size="1248x1824", hires="Hires upscale: 1.5, Hires resize: 1248x1824, ")
    view = handlers.read_file(_file(tmp_path, png(before=[text_chunk("parameters", text)])))
    assert "hires-fixed" in view.log and "<th>Size</th><td>832x1216</td>" in view.parameters
    assert "Size: 1248x1824" in view.items  # the raw text, as written
    values, _, _ = handlers.send_to_txt2img(view.infotext)
    assert (values["width"], values["height"], values["hr_resize_x"], values["hr_resize_y"]) == (832, 1216, 1248, 1824)
    view = handlers.read_file(_file(tmp_path, png(before=[text_chunk("parameters", json.dumps(RUINED))]), "r.png"))
    assert "Ruined Fooocus" in view.tool and "<th>parameters</th>" in view.items
    values, _, _ = handlers.send_to_txt2img(view.infotext)
    assert (values["seed"], values["steps"], values["width"], values["sampler_name"]) == \
        (3864674281, 30, 1152, "DPM++ 2M SDE")

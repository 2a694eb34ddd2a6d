"""Images from ComfyUI save nodes (Image Saver's A1111 text, SaveImage Plus and other JPEG/WebP savers with the graph
in EXIF), Ruined Fooocus, Civitai texts whose Size is the hires-fixed size, and raw items always kept."""

from __future__ import annotations

import io
import json

import piexif
import piexif.helper
import pytest
from PIL import Image

from modules.metadata import read_metadata, text_to_infotext
from modules.metadata.a1111 import repair
from modules.param_io import read_infotext
from tests.test_metadata import INFOTEXT, png, text_chunk

GRAPH = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "SDXL/juggernautXL_v9.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a harbour at dusk", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "people", "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 896, "height": 1152, "batch_size": 1}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 123456, "steps": 26, "cfg": 5.5, "sampler_name": "dpmpp_2m",
                                               "scheduler": "karras", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0],
                                               "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImagePlus", "inputs": {"images": ["8", 0], "file_type": "JPEG"}},
}
WORKFLOW = {"nodes": [{"id": 1, "type": "KSampler", "widgets_values": [1, "fixed", 2, 3, "euler", "normal", 1]}],
            "links": []}
IMAGE_SAVER = ("a harbour at dusk\nNegative prompt: people\nSteps: 26, Sampler: {sampler}, CFG scale: 5.5, "
               "Seed: 123456, Size: 896x1152, Clip skip: 2, Model hash: 1b2c3d4e5f, Model: juggernautXL_v9, "
               'Hashes: {{"model":"1b2c3d4e5f","lora:detail":"aa11bb22cc"}}, Version: ComfyUI')


def _expect_harbour(p: dict, model: str = "juggernautXL_v9") -> None:
    assert (p["Prompt"], p["Negative prompt"], p["Seed"], p["Steps"], p["CFG scale"]) == \
        ("a harbour at dusk", "people", 123456, 26, 5.5)
    assert (p["Sampler"], p["Schedule type"], p["Size-1"], p["Size-2"], p["Model"]) == \
        ("DPM++ 2M", "Karras", 896, 1152, model)


def _saved(fmt: str, exif: bytes) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "gray").save(buf, fmt, exif=exif)
    return buf.getvalue()


def test_image_saver_png_text_wins_and_every_item_stays():
    text = IMAGE_SAVER.format(sampler="DPM++ 2M Karras")
    md = read_metadata(png(before=[text_chunk("parameters", text), text_chunk("prompt", json.dumps(GRAPH)),
                                   text_chunk("workflow", json.dumps(WORKFLOW))]))
    assert md.tool == "ComfyUI" and md.source == "parameters" and md.infotext == repair(text)
    _expect_harbour(md.parameters)
    assert md.parameters["Clip skip"] == 2 and json.loads(md.parameters["Hashes"])["lora:detail"] == "aa11bb22cc"
    assert set(md.items) == {"parameters", "prompt", "workflow"} and md.items["parameters"] == text


def test_image_saver_comfy_sampler_name_is_split():
    md = read_metadata(png(before=[text_chunk("parameters", IMAGE_SAVER.format(sampler="res_multistep_beta"))]))
    p = md.parameters
    assert (p["Sampler"], p["Schedule type"]) == ("res_multistep", "Beta")
    assert "Sampler: res_multistep, " in md.infotext and "Schedule type: Beta" in md.infotext
    assert any("res_multistep_beta" in w for w in md.warnings)
    assert md.items["parameters"].count("res_multistep_beta") == 1
    pasted = text_to_infotext(IMAGE_SAVER.format(sampler="euler_ancestral_sgm_uniform"))
    assert "Sampler: Euler a, " in pasted and "Schedule type: SGM Uniform" in pasted


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_image_saver_jpeg_webp_user_comment_wins_over_the_graph(fmt):
    other = json.loads(json.dumps(GRAPH))
    other["3"]["inputs"]["seed"] = 1
    exif = piexif.dump({"0th": {piexif.ImageIFD.ImageDescription: ("Workflow:" + json.dumps(WORKFLOW)).encode(),
                                piexif.ImageIFD.Make: ("Prompt:" + json.dumps(other)).encode()},
                        "Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(
                            IMAGE_SAVER.format(sampler="DPM++ 2M Karras"), encoding="unicode")}})
    md = read_metadata(_saved(fmt, exif))
    assert md.tool == "ComfyUI" and md.source == "UserComment"
    _expect_harbour(md.parameters)
    assert {"prompt", "workflow", "UserComment"} <= set(md.items)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_save_image_plus_graph_in_user_comment(fmt):
    exif = Image.Exif()
    exif[0x9286] = json.dumps({"prompt": GRAPH, "workflow": WORKFLOW})  # Pillow puts it in IFD0
    md = read_metadata(_saved(fmt, exif.tobytes()))
    assert md.tool == "ComfyUI" and md.source == "UserComment"
    _expect_harbour(md.parameters)


def test_extended_formats_unicode_user_comment_and_workflow_only():
    exif = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(
        json.dumps({"prompt": GRAPH}), encoding="unicode")}})
    _expect_harbour(read_metadata(_saved("JPEG", exif)).parameters)
    nodes = [{"id": 1, "type": "CheckpointLoaderSimple", "widgets_values": ["a.safetensors"]},
             {"id": 2, "type": "CLIPTextEncode", "widgets_values": ["a boat"]},
             {"id": 3, "type": "EmptyLatentImage", "widgets_values": [640, 384, 1]},
             {"id": 4, "type": "KSampler", "widgets_values": [9, "fixed", 12, 4, "euler", "normal", 1],
              "inputs": [{"name": "model", "link": 1}, {"name": "positive", "link": 2},
                         {"name": "latent_image", "link": 3}]}]
    links = [[1, 1, 0, 4, 0, "MODEL"], [2, 2, 0, 4, 1, "CONDITIONING"], [3, 3, 0, 4, 3, "LATENT"]]
    exif = Image.Exif()
    exif[0x010E] = "Workflow:" + json.dumps({"nodes": nodes, "links": links})
    p = read_metadata(_saved("WEBP", exif.tobytes())).parameters
    assert (p["Prompt"], p["Seed"], p["Steps"], p["Size-1"], p["Model"]) == ("a boat", 9, 12, 640, "a")


RUINED = {"Prompt": "cinematic film still, a sunflower field", "Negative": "anime, cartoon", "steps": 30,
          "cfg": 8.5, "width": 1152, "height": 896, "seed": 3864674281, "sampler_name": "dpmpp_2m_sde_gpu",
          "scheduler": "karras", "base_model_name": "sd_xl_base_1.0_0.9vae.safetensors",
          "base_model_hash": "be9edd61", "loras": [["4852686128", "0.1 - sd_xl_offset_example-lora_1.0.safetensors"],
                                                   ["BFA3BB4FBE", "0.6 - moi\\helios-beasts.safetensors"]],
          "start_step": 0, "denoise": None, "clip_skip": 1, "software": "RuinedFooocus"}


def test_ruined_fooocus():
    md = read_metadata(png(before=[text_chunk("parameters", json.dumps(RUINED))]))
    p = md.parameters
    assert md.tool == "Ruined Fooocus" and md.items["parameters"] == json.dumps(RUINED)
    assert p["Prompt"] == ("cinematic film still, a sunflower field <lora:sd_xl_offset_example-lora_1.0:0.1> "
                           "<lora:helios-beasts:0.6>")
    assert (p["Negative prompt"], p["Seed"], p["Steps"], p["CFG scale"], p["Sampler"], p["Schedule type"]) == \
        ("anime, cartoon", 3864674281, 30, 8.5, "DPM++ 2M SDE", "Karras")
    assert (p["Size-1"], p["Size-2"], p["Model"], p["Model hash"]) == (1152, 896, "sd_xl_base_1.0_0.9vae", "be9edd61")
    assert p["Lora hashes"] == "sd_xl_offset_example-lora_1.0: 4852686128, helios-beasts: BFA3BB4FBE"
    assert p["Clip skip"] == 1 and "Denoising strength" not in p
    old = {**RUINED, "loras": "Loras:<add_detail:0.5>", "denoise": 0.6, "clip_skip": 2}
    del old["base_model_hash"]
    pasted = text_to_infotext(json.dumps(old))
    assert pasted.startswith("cinematic film still, a sunflower field <lora:add_detail:0.5>\nNegative prompt: anime")
    assert "Denoising strength: 0.6" in pasted and "Clip skip: 2" in pasted


CIVITAI = ("a knight\nNegative prompt: lowres\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, "
           "Seed: 42, Size: {size}, Denoising strength: 0.4, {hires}Hires upscaler: 4x-UltraSharp, "
           'Civitai resources: [{{"type":"checkpoint","modelVersionId":1}}]')


def test_civitai_size_recorded_as_the_hires_target():
    text = CIVITAI.format(size="1248x1824", hires="Hires upscale: 1.5, Hires resize: 1248x1824, ")
    md = read_metadata(png(before=[text_chunk("parameters", text)]))
    p = md.parameters
    assert (p["Size-1"], p["Size-2"], p["Hires resize-1"], p["Hires resize-2"]) == (832, 1216, 1248, 1824)
    assert "Size: 832x1216" in md.infotext and md.items["parameters"] == text
    assert any("hires-fixed" in w for w in md.warnings)
    fields, _ = read_infotext(md.infotext)
    assert (fields["width"], fields["height"], fields["hr_resize_x"], fields["enable_hr"]) == (832, 1216, 1248, True)
    assert "Size: 832x1216" in text_to_infotext(text)


def test_civitai_size_proved_final_by_the_image_only():
    text = CIVITAI.format(size="96x64", hires="Hires upscale: 2, ")
    md = read_metadata(png(before=[text_chunk("parameters", text)], image=Image.new("RGB", (96, 64))))
    assert (md.parameters["Size-1"], md.parameters["Size-2"], md.parameters["Hires upscale"]) == (48, 32, 2)
    same = read_metadata(png(before=[text_chunk("parameters", text)], image=Image.new("RGB", (192, 128))))
    assert same.infotext == repair(text) and same.parameters["Size-1"] == 96  # A1111's own meaning
    assert text_to_infotext(text) == text  # no image: nothing proves it


def test_civitai_hires_target_without_a_first_pass_and_a1111_untouched():
    text = CIVITAI.format(size="1024x1536", hires="Hires resize: 1024x1536, ")
    md = read_metadata(png(before=[text_chunk("parameters", text)]))
    assert md.infotext == repair(text) and any("not recorded" in w for w in md.warnings)
    plain = read_metadata(png(before=[text_chunk("parameters", INFOTEXT)], image=Image.new("RGB", (1024, 1536))))
    assert plain.infotext == INFOTEXT and plain.parameters["Size-1"] == 512 and not plain.warnings
    assert plain.items == {"parameters": INFOTEXT}


@pytest.mark.parametrize("factor", ["1e400", "nan", "-2", "1e308", "0", "abc"])
def test_hostile_hires_factors_never_break_reading(factor):
    text = f"a\nSteps: 3, Seed: 1, Size: 64x64, Hires upscale: {factor}, Denoising strength: 0.5"
    md = read_metadata(png(before=[text_chunk("parameters", text)], image=Image.new("RGB", (64, 64))))
    assert not md.errors and md.parameters["Size-1"] == 64 and md.items["parameters"] == text
    assert text_to_infotext(text) == text

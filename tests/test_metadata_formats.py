"""Format parsers on metadata built here: ComfyUI graph shapes, workflow-only graphs, NovelAI v4, InvokeAI 3,
Fooocus's A1111 scheme, SwarmUI, Easy Diffusion, Draw Things, Civitai's JSON values, forks' versions, pasted text."""

from __future__ import annotations

import json

import pytest

from modules.metadata import read_metadata, text_to_infotext
from modules.metadata.names import sampler
from tests.test_metadata import INFOTEXT, exif_user_comment, jpeg, png, text_chunk


def _png(**items: str):
    return read_metadata(png(before=[text_chunk(k, v, "iTXt") for k, v in items.items()]))


def _comfy(graph: dict, **extra: str):
    return _png(prompt=json.dumps(graph), **extra)


BASE = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl/juggernautXL_v9.safetensors"}},
    "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "detail.safetensors", "strength_model": 0.8,
                                                  "strength_clip": 1, "model": ["4", 0], "clip": ["4", 1]}},
    "11": {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["10", 1]}},
    "6": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": "a castle", "text_l": "a castle",
                                                         "clip": ["11", 0], "width": 1024, "height": 1024}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": ["12", 0], "clip": ["11", 0]}},
    "12": {"class_type": "PrimitiveString", "inputs": {"value": "blurry"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 832, "height": 1216, "batch_size": 1}},
    "13": {"class_type": "PrimitiveInt", "inputs": {"value": 424242}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
}


def test_comfyui_ksampler_advanced_lora_clip_skip_and_primitives():
    graph = {**BASE, "3": {"class_type": "KSamplerAdvanced", "inputs": {
        "add_noise": "enable", "noise_seed": ["13", 0], "steps": 30, "cfg": 6.5, "sampler_name": "dpmpp_2m_sde_gpu",
        "scheduler": "karras", "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable",
        "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}}}
    p = _comfy(graph).parameters
    assert p["Prompt"] == "a castle <lora:detail:0.8>" and p["Negative prompt"] == "blurry"
    assert (p["Sampler"], p["Schedule type"], p["Steps"], p["CFG scale"], p["Seed"]) == \
        ("DPM++ 2M SDE", "Karras", 30, 6.5, 424242)
    assert (p["Size-1"], p["Size-2"], p["Model"], p["Clip skip"]) == (832, 1216, "juggernautXL_v9", 2)


def test_comfyui_sampler_custom_advanced():
    graph = {**BASE,
             "20": {"class_type": "RandomNoise", "inputs": {"noise_seed": 99}},
             "21": {"class_type": "CFGGuider", "inputs": {"cfg": 3.5, "model": ["4", 0], "positive": ["6", 0],
                                                          "negative": ["7", 0]}},
             "22": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
             "23": {"class_type": "BasicScheduler", "inputs": {"scheduler": "sgm_uniform", "steps": 12,
                                                               "denoise": 1.0, "model": ["4", 0]}},
             "3": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["20", 0], "guider": ["21", 0],
                                                                     "sampler": ["22", 0], "sigmas": ["23", 0],
                                                                     "latent_image": ["5", 0]}}}
    p = _comfy(graph).parameters
    assert (p["Sampler"], p["Schedule type"], p["Steps"], p["CFG scale"], p["Seed"]) == \
        ("Euler a", "SGM Uniform", 12, 3.5, 99)
    assert p["Prompt"] == "a castle" and p["Model"] == "juggernautXL_v9"


def test_comfyui_pixel_space_second_pass_reads_as_hires():
    graph = {**BASE,
             "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7, "sampler_name": "euler",
                                                        "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                                        "positive": ["6", 0], "negative": ["7", 0],
                                                        "latent_image": ["5", 0]}},
             "30": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
             "31": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x-UltraSharp.pth"}},
             "32": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["31", 0], "image": ["30", 0]}},
             "33": {"class_type": "ImageScaleBy", "inputs": {"upscale_method": "lanczos", "scale_by": 0.5,
                                                             "image": ["32", 0]}},
             "34": {"class_type": "VAEEncode", "inputs": {"pixels": ["33", 0], "vae": ["4", 2]}},
             "35": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 8, "cfg": 7, "sampler_name": "euler",
                                                         "scheduler": "normal", "denoise": 0.35, "model": ["4", 0],
                                                         "positive": ["6", 0], "negative": ["7", 0],
                                                         "latent_image": ["34", 0]}},
             "8": {"class_type": "VAEDecode", "inputs": {"samples": ["35", 0], "vae": ["4", 2]}}}
    p = _comfy(graph).parameters
    assert (p["Steps"], p["Hires steps"], p["Denoising strength"], p["Hires upscale"], p["Hires upscaler"]) == \
        (20, 8, 0.35, 2.0, "4x-UltraSharp")
    assert p["Hires sampler"] == "Use same sampler" and p["Size-1"] == 832


def test_comfyui_workflow_only_with_reroute_and_primitive():
    nodes = [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets_values": ["v1-5-pruned-emaonly.safetensors"]},
        {"id": 2, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "link": 1}], "widgets_values": ["a tree"]},
        {"id": 3, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "link": 2}], "widgets_values": ["ugly"]},
        {"id": 4, "type": "EmptyLatentImage", "widgets_values": [512, 640, 1]},
        {"id": 5, "type": "Reroute", "inputs": [{"name": "", "link": 3}]},
        {"id": 6, "type": "PrimitiveNode", "widgets_values": [31337, "fixed"]},
        {"id": 7, "type": "KSampler", "mode": 0, "widgets_values": [0, "fixed", 25, 5.5, "dpmpp_2m", "karras", 1],
         "inputs": [{"name": "model", "link": 4}, {"name": "positive", "link": 5}, {"name": "negative", "link": 6},
                    {"name": "latent_image", "link": 7}, {"name": "seed", "link": 8, "widget": {"name": "seed"}}]},
        {"id": 8, "type": "SaveImage", "inputs": [{"name": "images", "link": 9}], "widgets_values": ["x"]},
        {"id": 9, "type": "KSampler", "mode": 2, "widgets_values": [5, "fixed", 99, 1, "euler", "normal", 1]},
    ]
    links = [[1, 1, 1, 2, 0, "CLIP"], [2, 1, 1, 3, 0, "CLIP"], [3, 2, 0, 5, 0, "*"], [4, 1, 0, 7, 0, "MODEL"],
             [5, 5, 0, 7, 1, "CONDITIONING"], [6, 3, 0, 7, 2, "CONDITIONING"], [7, 4, 0, 7, 3, "LATENT"],
             [8, 6, 0, 7, 4, "INT"], {"id": 9, "origin_id": 7, "origin_slot": 0, "target_id": 8, "target_slot": 0}]
    md = _png(workflow=json.dumps({"nodes": nodes, "links": links}))
    p = md.parameters
    assert md.tool == "ComfyUI" and md.source == "workflow"
    assert (p["Prompt"], p["Negative prompt"], p["Steps"], p["Seed"], p["Sampler"], p["Schedule type"]) == \
        ("a tree", "ugly", 25, 31337, "DPM++ 2M", "Karras")
    assert (p["Size-1"], p["Size-2"], p["Model"]) == (512, 640, "v1-5-pruned-emaonly")


def test_comfyui_graph_without_sampler_and_bad_graphs():
    md = _comfy({"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}})
    assert md.tool == "ComfyUI" and "prompt" in md.items
    for junk in ('{"1": {"class_type": "KSampler", "inputs": {"positive": ["1", 0], "latent_image": ["1", 0]}}}',
                 '{"1": {"class_type": "KSampler", "inputs": "nope"}}', "[1, 2, 3]", '{"a": 1}', "{oops"):
        md = _png(prompt=junk)
        assert not md.errors or "interpreted" not in " ".join(md.errors), junk
    assert any("invalid JSON" in w for w in _png(prompt="{oops").warnings)


def test_novelai_v4_character_prompts():
    comment = {"prompt": "2girls, park", "steps": 28, "height": 1216, "width": 832, "scale": 5.0, "seed": 77,
               "noise_schedule": "karras", "sampler": "k_dpmpp_2m", "uc": "lowres",
               "v4_prompt": {"caption": {"base_caption": "2girls, park", "char_captions": [
                   {"char_caption": "girl, red hair", "centers": [{"x": 0.3, "y": 0.5}]},
                   {"char_caption": "girl, blue hair", "centers": [{"x": 0.7, "y": 0.5}]}]}, "use_coords": True},
               "v4_negative_prompt": {"caption": {"base_caption": "lowres", "char_captions": [
                   {"char_caption": "hat", "centers": [{"x": 0.3, "y": 0.5}]}, {"char_caption": "", "centers": []}]}}}
    md = _png(Software="NovelAI", Source="NovelAI Diffusion V4.5 1229B44F", Comment=json.dumps(comment))
    p = md.parameters
    assert md.tool == "NovelAI" and p["Prompt"] == "2girls, park" and p["Negative prompt"] == "lowres"
    assert (p["Sampler"], p["Schedule type"], p["Size-1"], p["Size-2"]) == ("DPM++ 2M", "Karras", 832, 1216)
    assert p["Character 1 prompt"] == "girl, red hair" and p["Character 2 prompt"] == "girl, blue hair"
    assert p["Character 1 negative prompt"] == "hat" and "Character 2 negative prompt" not in p
    assert p["Character 1 center"] == "0.3 0.5" and p["Model hash"] == "1229B44F"


def test_invokeai_3_with_loras_and_clip_skip():
    meta = {"positive_prompt": "a ship", "negative_prompt": "", "width": 768, "height": 512, "seed": 5,
            "cfg_scale": 6, "steps": 22, "scheduler": "dpmpp_2m_k", "clip_skip": 1, "rand_device": "cpu",
            "model": {"name": "dreamshaper_8", "base": "sd-1", "hash": "blake3:abc"},
            "loras": [{"model": {"name": "film_grain", "base": "sd-1"}, "weight": 0.6}], "app_version": "5.4.0"}
    p = _png(invokeai_metadata=json.dumps(meta)).parameters
    assert (p["Sampler"], p["Schedule type"], p["Clip skip"], p["RNG"], p["Model"]) == \
        ("DPM++ 2M", "Karras", 2, "CPU", "dreamshaper_8")
    assert p["Prompt"] == "a ship <lora:film_grain:0.6>" and p["Version"] == "InvokeAI 5.4.0"


def test_fooocus_a1111_scheme_and_jpeg_json():
    text = ("a cat, cinematic\nNegative prompt: ugly\nSteps: 30, Sampler: DPM++ 2M SDE Karras, Seed: 12, "
            "Size: 1152x896, CFG scale: 4, Sharpness: 2, Model: juggernautXL, Model hash: aeb7e9e689, "
            "Scheduler: karras, Version: Fooocus v2.5.5")
    md = _png(parameters=text, fooocus_scheme="a1111")
    assert md.tool == "Fooocus" and md.infotext == text
    assert (md.parameters["Sampler"], md.parameters["Schedule type"]) == ("DPM++ 2M SDE", "Karras")
    data = {"prompt": "a dog", "negative_prompt": "", "steps": 30, "guidance_scale": 4, "sampler": "dpmpp_2m_sde_gpu",
            "scheduler": "karras", "seed": "3", "resolution": "(896, 1152)",
            "base_model": "juggernautXL_v8.safetensors",
            "base_model_hash": "aeb7e9e689", "loras": [["add_detail", 0.5, "7c6bad76eb"]], "version": "Fooocus v2.5.5"}
    exif = exif_user_comment(json.dumps(data), Software=b"Fooocus v2.5.5")
    p = read_metadata(jpeg(exif)).parameters
    assert p["Prompt"] == "a dog <lora:add_detail:0.5>" and p["Lora hashes"] == "add_detail: 7c6bad76eb"
    assert (p["Size-1"], p["Size-2"], p["Seed"], p["Model"]) == (896, 1152, 3, "juggernautXL_v8")


@pytest.mark.parametrize("container", ["png", "jpeg"])
def test_swarmui(container):
    data = {"sui_image_params": {"prompt": "a cat", "negativeprompt": "dog", "model": "OfficialStableDiffusion/"
            "sd_xl_base_1.0", "seed": "1", "steps": 20, "cfgscale": 7.0, "width": 1024, "height": 1024,
            "sampler": "dpmpp_2m", "scheduler": "karras", "clipstopatlayer": -2, "loras": "a,b",
            "loraweights": "0.5,1", "swarm_version": "0.9.3.1"}, "sui_models": []}
    text = json.dumps(data, indent=2)
    md = _png(parameters=text) if container == "png" else read_metadata(jpeg(exif_user_comment(text)))
    p = md.parameters
    assert md.tool == "SwarmUI" and p["Prompt"] == "a cat <lora:a:0.5> <lora:b:1>"
    assert (p["Model"], p["Seed"], p["Sampler"], p["Schedule type"], p["Clip skip"]) == \
        ("sd_xl_base_1.0", 1, "DPM++ 2M", "Karras", 2)


@pytest.mark.parametrize("style", ["snake", "title"])
def test_easy_diffusion(style):
    keys = {"snake": ("prompt", "negative_prompt", "num_inference_steps", "sampler_name", "guidance_scale", "seed",
                      "width", "height", "use_stable_diffusion_model"),
            "title": ("Prompt", "Negative Prompt", "Steps", "Sampler", "Guidance Scale", "Seed", "Width", "Height",
                      "Stable Diffusion model")}[style]
    values = ("a hill", "fog", "25", "euler_a", "7.5", "42", "512", "768", "sd-v1-5.safetensors")
    p = _png(**dict(zip(keys, values, strict=True))).parameters
    assert (p["Prompt"], p["Negative prompt"], p["Steps"], p["Sampler"], p["CFG scale"], p["Seed"]) == \
        ("a hill", "fog", 25, "Euler a", 7.5, 42)
    assert (p["Size-1"], p["Size-2"], p["Model"]) == (512, 768, "sd-v1-5")


def test_draw_things_xmp():
    data = {"c": "a lake", "uc": "dark", "seed": 8, "steps": 30, "scale": 4.5, "sampler": "DPM++ 2M Karras",
            "model": "sd_xl_base_1.0_f16.ckpt", "size": "1024x768", "strength": 1}
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description><xmp:CreatorTool>Draw Things'
           '</xmp:CreatorTool><exif:UserComment><rdf:Alt><rdf:li xml:lang="x-default">'
           + json.dumps(data).replace('"', "&quot;") + "</rdf:li></rdf:Alt></exif:UserComment></rdf:Description>"
           "</rdf:RDF></x:xmpmeta>")
    md = _png(**{"XML:com.adobe.xmp": xmp})
    p = md.parameters
    assert md.tool == "Draw Things" and p["Prompt"] == "a lake" and p["Negative prompt"] == "dark"
    assert (p["Sampler"], p["Schedule type"], p["Size-1"], p["Size-2"], p["Model"]) == \
        ("DPM++ 2M", "Karras", 1024, 768, "sd_xl_base_1.0_f16")


def test_civitai_json_values_and_fork_versions():
    text = (INFOTEXT.rsplit(", Version", 1)[0] + ', Hashes: {"vae": "c6a580b13a", "model": "c0d1994c73"}, '
            'Civitai resources: [{"type": "checkpoint", "modelVersionId": 1}], Version: v1.10.1')
    md = _png(parameters=text)
    assert md.tool == "Civitai" and json.loads(md.parameters["Hashes"]) == {"vae": "c6a580b13a",
                                                                           "model": "c0d1994c73"}
    assert md.parameters["Hires steps"] == 10 and md.parameters["Version"] == "v1.10.1"
    assert json.loads(md.parameters["Civitai resources"])[0]["modelVersionId"] == 1
    forge = _png(parameters=INFOTEXT.replace("v1.10.1", "f2.0.1v1.10.1-previous-313-g8a042934"))
    assert forge.tool == "Forge"


@pytest.mark.parametrize("name,scheduler,expected", [
    ("dpmpp_2m", "karras", ("DPM++ 2M", "Karras")), ("sample_euler_ancestral", None, ("Euler a", None)),
    ("dpmpp_3m_sde_gpu", "exponential", ("DPM++ 3M SDE", "Exponential")), ("kdpm_2_a_k", None, ("DPM2 a", "Karras")),
    ("uni_pc_bh2", "ddim_uniform", ("UniPC", "DDIM")), ("res_multistep", "beta", ("res_multistep", "Beta")),
    ("DPM++ 2M SDE Karras", None, ("DPM++ 2M SDE", "Karras")), ("k_dpmpp_2s_ancestral", "native",
                                                                  ("DPM++ 2S a", "native")),
])
def test_sampler_crosswalk(name, scheduler, expected):
    assert sampler(name, scheduler) == expected


def test_pasted_other_tool_text_becomes_infotext():
    graph = {**BASE, "3": {"class_type": "KSampler", "inputs": {
        "seed": 3, "steps": 9, "cfg": 5, "sampler_name": "euler", "scheduler": "karras", "denoise": 1,
        "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}}}
    text = text_to_infotext(json.dumps(graph))
    assert text.startswith("a castle <lora:detail:0.8>\nNegative prompt: blurry\nSteps: 9, Sampler: Euler")
    dream = '"a cat [ugly]" -s 30 -S 5 -W 512 -H 512 -C 7.5 -A k_euler_a'
    assert text_to_infotext(dream) == ("a cat\nNegative prompt: ugly\nSteps: 30, Sampler: Euler a, CFG scale: 7.5, "
                                       "Seed: 5, Size: 512x512")
    for same in (INFOTEXT, "[cat:dog:5] a prompt", '{"not": "metadata"}', ""):
        assert text_to_infotext(same) == same

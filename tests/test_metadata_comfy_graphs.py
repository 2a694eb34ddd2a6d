"""Newer ComfyUI graphs: values reaching the sampler and the encoders through primitive, literal, converter and
text-joining nodes, newer loaders (pysssss, UNET, Efficient Loader, ImpactWildcardEncode), SamplerCustomAdvanced
with a basic guider, conditioning concat/zero-out, detailers after the sampler, and hostile graphs (cycles, depth).
"""

from __future__ import annotations

import json
import time

from modules.metadata import read_metadata
from tests.test_metadata import png, text_chunk


def _read(graph: dict | None = None, workflow: dict | None = None):
    items = {}
    if graph is not None:
        items["prompt"] = json.dumps(graph)
    if workflow is not None:
        items["workflow"] = json.dumps(workflow)
    return read_metadata(png(before=[text_chunk(k, v, "iTXt") for k, v in items.items()]))


def _node(kind: str, **inputs) -> dict:
    return {"class_type": kind, "inputs": inputs}


SAVE = {"90": _node("VAEDecode", samples=["3", 0], vae=["4", 2]), "91": _node("SaveImage", images=["90", 0])}


def test_primitives_literals_converters_and_text_joiners():
    graph = {
        **SAVE,
        "4": _node("CheckpointLoader|pysssss", ckpt_name="sdxl/dreamshaperXL_v21.safetensors"),
        "20": _node("Seed (rgthree)", seed=8675309),
        "21": _node("Int Literal", int=28),
        "22": _node("String to Float", String=["33", 0]),
        "33": _node("CR String To Number", text="6.5", round_integer="round"),
        "23": _node("Sampler Selector", sampler_name="dpmpp_2m"),
        "24": _node("Scheduler Selector", scheduler="karras"),
        "25": _node("PrimitiveInt", value=832),
        "26": _node("PrimitiveInt", value=1216),
        "30": _node("PrimitiveStringMultiline", value="a castle"),
        "31": _node("Text Concatenate", text_a=["30", 0], text_b="on a hill", delimiter=", ",
                    clean_whitespace="true"),
        "32": _node("StringFunction|pysssss", action="append", tidy_tags="yes", text_a="blurry", text_b="lowres",
                    text_c=""),
        "6": _node("CLIPTextEncode", text=["31", 0], clip=["4", 1]),
        "7": _node("CLIPTextEncode", text=["32", 0], clip=["4", 1]),
        "5": _node("EmptyLatentImage", width=["25", 0], height=["26", 0], batch_size=1),
        "3": _node("KSampler", seed=["20", 0], steps=["21", 0], cfg=["22", 0], sampler_name=["23", 0],
                   scheduler=["24", 0], denoise=1.0, model=["4", 0], positive=["6", 0], negative=["7", 0],
                   latent_image=["5", 0]),
    }
    md = _read(graph)
    p = md.parameters
    assert md.tool == "ComfyUI" and not md.errors
    assert (p["Prompt"], p["Negative prompt"]) == ("a castle, on a hill", "blurry, lowres")
    assert (p["Seed"], p["Steps"], p["CFG scale"], p["Sampler"], p["Schedule type"]) == \
        (8675309, 28, 6.5, "DPM++ 2M", "Karras")
    assert (p["Size-1"], p["Size-2"], p["Model"]) == (832, 1216, "dreamshaperXL_v21")


def test_flux_sampler_custom_advanced_with_basic_guider():
    graph = {
        **SAVE,
        "4": _node("VAELoader", vae_name="ae.safetensors"),
        "10": _node("UNETLoader", unet_name="flux1-dev.safetensors", weight_dtype="default"),
        "11": _node("DualCLIPLoader", clip_name1="t5xxl_fp16.safetensors", clip_name2="clip_l.safetensors",
                    type="flux"),
        "12": _node("LoraLoaderModelOnly", lora_name="flux/detailer.safetensors", strength_model=0.7,
                    model=["10", 0]),
        "13": _node("ModelSamplingFlux", max_shift=1.15, base_shift=0.5, width=1024, height=768, model=["12", 0]),
        "6": _node("CLIPTextEncode", text="a red fox in the snow", clip=["11", 0]),
        "14": _node("FluxGuidance", guidance=3.5, conditioning=["6", 0]),
        "15": _node("BasicGuider", model=["13", 0], conditioning=["14", 0]),
        "16": _node("easy seed", seed=77),
        "17": _node("RandomNoise", noise_seed=["16", 0]),
        "18": _node("KSamplerSelect", sampler_name="euler"),
        "19": _node("BasicScheduler", scheduler="simple", steps=20, denoise=1.0, model=["13", 0]),
        "5": _node("EmptySD3LatentImage", width=1024, height=768, batch_size=1),
        "3": _node("SamplerCustomAdvanced", noise=["17", 0], guider=["15", 0], sampler=["18", 0],
                   sigmas=["19", 0], latent_image=["5", 0]),
    }
    p = _read(graph).parameters
    assert (p["Prompt"], p["Negative prompt"]) == ("a red fox in the snow <lora:detailer:0.7>", "")
    assert (p["Steps"], p["Sampler"], p["Schedule type"], p["Seed"], p["CFG scale"]) == \
        (20, "Euler", "Simple", 77, 1.0)
    assert (p["Size-1"], p["Size-2"], p["Model"]) == (1024, 768, "flux1-dev")


def test_efficient_loader_and_a_detailer_after_the_sampler():
    graph = {
        "4": _node("Efficient Loader", ckpt_name="realisticVision_v51.safetensors", vae_name="Baked VAE",
                   clip_skip=-2, lora_name="None", lora_model_strength=1, lora_clip_strength=1, positive="a dog",
                   negative="a cat", token_normalization="none", weight_interpretation="comfy",
                   empty_latent_width=512, empty_latent_height=768, batch_size=1),
        "3": _node("KSampler (Efficient)", seed=5, steps=25, cfg=7.0, sampler_name="euler_ancestral",
                   scheduler="normal", denoise=1.0, preview_method="auto", vae_decode="true", model=["4", 0],
                   positive=["4", 1], negative=["4", 2], latent_image=["4", 3], optional_vae=["4", 4]),
        "8": _node("FaceDetailer", image=["3", 5], model=["4", 0], clip=["4", 5], vae=["4", 4], positive=["4", 1],
                   negative=["4", 2], seed=99, steps=12, cfg=4.0, sampler_name="dpmpp_2m", scheduler="karras",
                   denoise=0.4, guide_size=512),
        "9": _node("SaveImage", images=["8", 0]),
    }
    md = _read(graph)
    p = md.parameters
    assert (p["Prompt"], p["Negative prompt"], p["Seed"], p["Steps"], p["CFG scale"], p["Sampler"]) == \
        ("a dog", "a cat", 5, 25, 7.0, "Euler a")
    assert (p["Size-1"], p["Size-2"], p["Model"], p["Clip skip"]) == (512, 768, "realisticVision_v51", 2)
    assert "Denoising strength" not in md.infotext and "<lora:None" not in p["Prompt"]
    assert any("other sampler" in w for w in md.warnings)


def test_wildcard_encode_and_conditioning_concat_zero_out():
    graph = {
        **SAVE,
        "4": _node("CheckpointLoaderSimple", ckpt_name="ponyXL.safetensors"),
        "10": _node("ImpactWildcardEncode", model=["4", 0], clip=["4", 1], wildcard_text="a __animal__",
                    populated_text="a cat <lora:whiskers:0.5>", mode="populate", seed=3),
        "11": _node("CLIPTextEncode", text="sharp focus", clip=["10", 1]),
        "12": _node("ConditioningConcat", conditioning_to=["10", 2], conditioning_from=["11", 0]),
        "13": _node("ConditioningZeroOut", conditioning=["10", 2]),
        "5": _node("EmptyLatentImage", width=1024, height=1024, batch_size=1),
        "3": _node("KSamplerAdvanced", add_noise="enable", noise_seed=11, steps=30, cfg=5.0, sampler_name="euler",
                   scheduler="normal", start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable",
                   model=["10", 0], positive=["12", 0], negative=["13", 0], latent_image=["5", 0]),
    }
    p = _read(graph).parameters
    assert p["Prompt"] == "a cat <lora:whiskers:0.5> BREAK sharp focus" and p["Negative prompt"] == ""
    assert (p["Seed"], p["Steps"], p["CFG scale"], p["Model"], p["Size-1"]) == (11, 30, 5.0, "ponyXL", 1024)


def test_workflow_only_with_newer_nodes():
    nodes = [
        {"id": 1, "type": "CheckpointLoader|pysssss", "widgets_values": [{"content": "sd15/anything-v5.ckpt",
                                                                          "image": None}]},
        {"id": 2, "type": "PrimitiveStringMultiline", "widgets_values": ["a lighthouse"]},
        {"id": 3, "type": "CLIPTextEncode", "widgets_values": [""],
         "inputs": [{"name": "clip", "link": 1}, {"name": "text", "link": 2, "widget": {"name": "text"}}]},
        {"id": 4, "type": "CLIPTextEncode", "widgets_values": ["fog"], "inputs": [{"name": "clip", "link": 3}]},
        {"id": 5, "type": "EmptyLatentImage", "widgets_values": [512, 512, 1]},
        {"id": 6, "type": "Int Literal", "widgets_values": [4242]},
        {"id": 7, "type": "KSampler", "widgets_values": [0, "fixed", 22, 6, "dpmpp_sde", "karras", 1],
         "inputs": [{"name": "model", "link": 4}, {"name": "positive", "link": 5}, {"name": "negative", "link": 6},
                    {"name": "latent_image", "link": 7}, {"name": "seed", "link": 8, "widget": {"name": "seed"}}]},
        {"id": 8, "type": "SaveImage", "inputs": [{"name": "images", "link": 9}], "widgets_values": ["x"]},
    ]
    links = [[1, 1, 1, 3, 0, "CLIP"], [2, 2, 0, 3, 1, "STRING"], [3, 1, 1, 4, 0, "CLIP"], [4, 1, 0, 7, 0, "MODEL"],
             [5, 3, 0, 7, 1, "CONDITIONING"], [6, 4, 0, 7, 2, "CONDITIONING"], [7, 5, 0, 7, 3, "LATENT"],
             [8, 6, 0, 7, 4, "INT"], [9, 7, 0, 8, 0, "LATENT"]]
    md = _read(workflow={"nodes": nodes, "links": links})
    p = md.parameters
    assert md.source == "workflow"
    assert (p["Prompt"], p["Negative prompt"], p["Seed"], p["Steps"], p["Sampler"], p["Schedule type"]) == \
        ("a lighthouse", "fog", 4242, 22, "DPM++ SDE", "Karras")
    assert (p["Size-1"], p["Model"]) == (512, "anything-v5")


def test_cycles_and_deep_chains_stay_cheap():
    graph = {
        **SAVE,
        "a": _node("PrimitiveInt", value=["b", 0]),
        "b": _node("PrimitiveInt", value=["a", 0]),
        "c1": _node("ConditioningCombine", conditioning_1=["c2", 0], conditioning_2=["t", 0]),
        "c2": _node("ConditioningCombine", conditioning_1=["c1", 0], conditioning_2=["t", 0]),
        "t": _node("CLIPTextEncode", text=["s0", 0]),
        "5": _node("EmptyLatentImage", width=["w0", 0], height=64, batch_size=1),
        "3": _node("KSampler", seed=["a", 0], steps=4, cfg=2, sampler_name="euler", scheduler="normal",
                   positive=["c1", 0], negative=["t", 0], latent_image=["5", 0]),
    }
    for i in range(3000):  # long chains of joiners and converters
        graph[f"s{i}"] = _node("Text Concatenate", text_a=[f"s{i + 1}", 0], text_b=[f"s{i + 1}", 0])
        graph[f"w{i}"] = _node("Float to Int", a=[f"w{i + 1}", 0])
    graph["s3000"] = _node("PrimitiveString", value="deep")
    graph["w3000"] = _node("PrimitiveInt", value=64)
    start = time.perf_counter()
    md = _read(graph)
    assert time.perf_counter() - start < 5
    assert md.tool == "ComfyUI" and not md.errors and md.parameters["Steps"] == 4
    assert "Seed" not in md.infotext

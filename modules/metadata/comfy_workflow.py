"""ComfyUI's ``workflow`` chunk (the editor's LiteGraph graph) turned into an API graph, for images that carry only
the workflow. Widget values are positional, so they are named from a table of the core nodes; other nodes keep their
links and, when their type looks like a text node, their first text widget as ``text``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

_SEED = ("seed", "control_after_generate")
_LATENT = ("width", "height", "batch_size")
WIDGETS = MappingProxyType({
    "KSampler": (*_SEED, "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed", "control_after_generate", "steps", "cfg", "sampler_name",
                         "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise"),
    "SamplerCustom": ("add_noise", "noise_seed", "control_after_generate", "cfg"),
    "RandomNoise": ("noise_seed", "control_after_generate"),
    "KSamplerSelect": ("sampler_name",),
    "BasicScheduler": ("scheduler", "steps", "denoise"),
    "KarrasScheduler": ("steps", "sigma_max", "sigma_min", "rho"),
    "ExponentialScheduler": ("steps", "sigma_max", "sigma_min"),
    "AlignYourStepsScheduler": ("model_type", "steps", "denoise"),
    "CFGGuider": ("cfg",),
    "CLIPTextEncode": ("text",),
    "CLIPTextEncodeSDXL": ("width", "height", "crop_w", "crop_h", "target_width", "target_height", "text_g",
                           "text_l"),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CheckpointLoader": ("config_name", "ckpt_name"),
    "unCLIPCheckpointLoader": ("ckpt_name",),
    "ImageOnlyCheckpointLoader": ("ckpt_name",),
    "UNETLoader": ("unet_name", "weight_dtype"),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "CLIPSetLastLayer": ("stop_at_clip_layer",),
    "EmptyLatentImage": _LATENT,
    "EmptySD3LatentImage": _LATENT,
    "LatentUpscale": ("upscale_method", "width", "height", "crop"),
    "LatentUpscaleBy": ("upscale_method", "scale_by"),
    "ImageScale": ("upscale_method", "width", "height", "crop"),
    "ImageScaleBy": ("upscale_method", "scale_by"),
    "UpscaleModelLoader": ("model_name",),
    "LoadImage": ("image", "upload"),
    "PrimitiveNode": ("value", "control_after_generate"),
    "ConditioningSetArea": ("width", "height", "x", "y", "strength"),
    # newer core nodes
    "PrimitiveInt": ("value", "control_after_generate"),
    "PrimitiveFloat": ("value",),
    "PrimitiveString": ("value",),
    "PrimitiveStringMultiline": ("value",),
    "StringConcatenate": ("string_a", "string_b", "delimiter"),
    "CLIPTextEncodeFlux": ("clip_l", "t5xxl", "guidance"),
    "CLIPTextEncodeSD3": ("clip_l", "clip_g", "t5xxl", "empty_padding"),
    "FluxGuidance": ("guidance",),
    "DualCFGGuider": ("cfg_conds", "cfg_cond2_negative"),
    "SDTurboScheduler": ("steps", "denoise"),
    "BetaSamplingScheduler": ("steps", "alpha", "beta"),
    # popular custom nodes
    "CheckpointLoader|pysssss": ("ckpt_name",),
    "UnetLoaderGGUF": ("unet_name",),
    "Efficient Loader": ("ckpt_name", "vae_name", "clip_skip", "lora_name", "lora_model_strength",
                         "lora_clip_strength", "positive", "negative", "token_normalization", "weight_interpretation",
                         "empty_latent_width", "empty_latent_height", "batch_size"),
    "KSampler (Efficient)": (*_SEED, "steps", "cfg", "sampler_name", "scheduler", "denoise", "preview_method",
                             "vae_decode"),
    "ImpactWildcardEncode": ("wildcard_text", "populated_text", "mode", "Select to add LoRA",
                             "Select to add Wildcard", *_SEED),
    "Int Literal": ("int",),
    "Float Literal": ("float",),
    "String Literal": ("string",),
    "Cfg Literal": ("cfg",),
    "Sampler Selector": ("sampler_name",),
    "Scheduler Selector": ("scheduler",),
    "Checkpoint Selector": ("ckpt_name",),
    "CR Seed": _SEED,
    "Seed (rgthree)": ("seed",),
    "easy seed": ("seed",),
})
_TEXTISH = ("Text", "Prompt", "String")
_MUTED = 2
_MAX_REROUTES = 64


def _links(workflow: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """link id -> (source node id, source slot), from the list or the dict form of ``links``."""
    out: dict[int, tuple[int, int]] = {}
    for link in workflow.get("links") or []:
        try:
            if isinstance(link, dict):
                out[int(link["id"])] = (int(link["origin_id"]), int(link["origin_slot"]))
            elif isinstance(link, list) and len(link) >= 5:
                out[int(link[0])] = (int(link[1]), int(link[2]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _widget_names(kind: str, values: list[Any]) -> tuple[str, ...]:
    names = WIDGETS.get(kind, ())
    if "control_after_generate" in names and len(values) == len(names) - 1:
        names = tuple(n for n in names if n != "control_after_generate")  # saved before that widget existed
    return names


def workflow_to_graph(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An API-format graph (``{id: {"class_type", "inputs"}}``) equivalent to a LiteGraph ``workflow``."""
    nodes = {n.get("id"): n for n in workflow.get("nodes") or [] if isinstance(n, dict)}
    links = _links(workflow)

    def source(link_id: Any) -> list[Any] | None:
        for _ in range(_MAX_REROUTES):
            try:
                node_id, slot = links[int(link_id)]
            except (KeyError, TypeError, ValueError):
                return None
            node = nodes.get(node_id)
            if node is None or node.get("type") != "Reroute":
                return [str(node_id), slot]
            inputs = node.get("inputs") or []
            link_id = inputs[0].get("link") if inputs and isinstance(inputs[0], dict) else None
        return None

    graph: dict[str, dict[str, Any]] = {}
    for node_id, node in nodes.items():
        kind = str(node.get("type", ""))
        if node.get("mode") == _MUTED or kind == "Reroute":
            continue
        inputs: dict[str, Any] = {}
        for entry in node.get("inputs") or []:
            if isinstance(entry, dict) and entry.get("link") is not None and isinstance(entry.get("name"), str):
                linked = source(entry["link"])
                if linked is not None:
                    inputs[entry["name"]] = linked
        values = node.get("widgets_values")
        if isinstance(values, dict):
            for key, value in values.items():
                inputs.setdefault(str(key), value)
        elif isinstance(values, list):
            names = _widget_names(kind, values)
            for name, value in zip(names, values, strict=False):
                inputs.setdefault(name, value)
            if not names and any(t in kind for t in _TEXTISH):
                text = next((v for v in values if isinstance(v, str)), None)
                if text is not None:
                    inputs.setdefault("text", text)
        graph[str(node_id)] = {"class_type": kind, "inputs": inputs}
    return graph

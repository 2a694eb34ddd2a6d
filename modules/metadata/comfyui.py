"""ComfyUI's ``prompt`` chunk (the executed API graph) read as A1111 parameters.

The graph is ``{node_id: {"class_type": ..., "inputs": {name: value or [source_id, output_index]}}}``. The sampler
that produced the saved image is found (KSampler, KSamplerAdvanced, SamplerCustom(Advanced) or any node with a
sampler name, steps and CFG), then its links are followed: ``positive``/``negative`` to the text encoders, ``model``
to the checkpoint loader (through LoRA loaders), ``latent_image`` to the empty latent (size), an upscale and an
earlier sampler (a second pass reads as A1111's hires fix) or an encoded image (img2img).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from modules.metadata import names
from modules.metadata.comfy_graph import Graph, Node, number
from modules.metadata.model import Parsed

_LATENT_KEYS = ("samples", "latent", "latent_image", "pixels", "image", "images", "samples_to", "destination")
_SIGMA_SCHEDULERS = MappingProxyType({
    "KarrasScheduler": "karras", "ExponentialScheduler": "exponential", "PolyexponentialScheduler": "polyexponential",
    "AlignYourStepsScheduler": "align_your_steps", "BetaSamplingScheduler": "beta",
})
_LATENT_MODES = MappingProxyType({"nearest-exact": "Latent (nearest-exact)", "bilinear": "Latent",
                                  "bicubic": "Latent (bicubic)", "nearest": "Latent (nearest)"})
_DIMENSIONS = re.compile(r"(\d{1,5})\s*[x\u00d7]\s*(\d{1,5})")
_MAX_SAMPLERS = 64  # sampler nodes examined in one graph


@dataclass
class _Pass:
    node_id: str
    seed: Any = None
    steps: Any = None
    cfg: Any = None
    sampler: str | None = None
    scheduler: str | None = None
    denoise: Any = None
    model: str | None = None
    loras: list[tuple[str, Any]] = field(default_factory=list)
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)
    clip_skip: int | None = None
    chain: list[tuple[str, Node]] = field(default_factory=list)  # latent_image back to a source or sampler


def _num(value: Any) -> Any:
    """Numbers as numbers (a converter may pass ``"7.5"``); other values unchanged."""
    found = number(value)
    return value if found is None else found


def _read_pass(g: Graph, node_id: str, node: Node) -> _Pass:
    inputs = g.inputs(node)
    guider = g.target(inputs.get("guider"))
    guider_node = guider[1] if guider else None
    sigmas = g.target(inputs.get("sigmas"))
    sigmas_node = sigmas[1] if sigmas else None
    sampler_node = g.target(inputs.get("sampler"))
    noise = g.target(inputs.get("noise"))
    p = _Pass(node_id)
    p.seed = _num(g.literal(node, "seed", "noise_seed"))
    if p.seed is None and noise:
        p.seed = _num(g.literal(noise[1], "noise_seed", "seed"))
    p.steps = _num(g.literal(node, "steps") if "steps" in inputs else g.literal(sigmas_node, "steps"))
    p.cfg = _num(g.literal(node, "cfg") if "cfg" in inputs else g.literal(guider_node, "cfg", "cfg_conds"))
    if p.cfg is None and g.kind(guider_node) == "BasicGuider":
        p.cfg = 1.0  # no negative conditioning: what CFG 1 does
    sampler = g.literal(node, "sampler_name")
    if sampler is None and sampler_node:
        sampler = g.literal(sampler_node[1], "sampler_name") or g.kind(sampler_node[1])
    p.sampler = sampler if isinstance(sampler, str) else None
    scheduler = g.literal(node, "scheduler")
    if scheduler is None and sigmas_node is not None:
        scheduler = g.literal(sigmas_node, "scheduler") or _SIGMA_SCHEDULERS.get(g.kind(sigmas_node))
    p.scheduler = scheduler if isinstance(scheduler, str) else None
    p.denoise = _num(g.literal(node, "denoise") if "denoise" in inputs else g.literal(sigmas_node, "denoise"))
    source = g.inputs(guider_node) if guider_node is not None and "model" not in inputs else inputs
    p.model = g.model(source.get("model"), p.loras)
    encoders: list[Node] = []
    positive = next((source[k] for k in ("positive", "conditioning", "cond1") if k in source), None)
    p.positive = g.texts(positive, "positive", encoders)
    p.negative = g.texts(source.get("negative"), "negative", [])
    p.clip_skip = next((s for s in (g.clip_skip(e) for e in encoders) if s), None)
    p.chain = g.latent_chain(inputs.get("latent_image"), _LATENT_KEYS)
    return p


def _output_order(g: Graph) -> list[str]:
    """Node ids met walking back from the output nodes (SaveImage, PreviewImage...), nearest first."""
    starts = [i for i, n in g.nodes.items() if "Save" in g.kind(n) or "Preview" in g.kind(n)]
    order, seen, todo = [], set(starts), list(starts)
    while todo:
        node_id = todo.pop(0)
        order.append(node_id)
        for value in g.inputs(g.nodes[node_id]).values():
            found = g.target(value)
            if found and found[0] not in seen:
                seen.add(found[0])
                todo.append(found[0])
    return order


def _pick_passes(g: Graph) -> tuple[list[_Pass], int]:
    """The passes that made the saved image, first pass first, and how many other samplers the graph holds."""
    samplers = [i for i, n in g.nodes.items() if g.is_sampler(n)]
    order = _output_order(g)
    sampler_set = set(samplers)
    near_output = [i for i in order if i in sampler_set]
    picked = list(dict.fromkeys([*near_output, *samplers]))[:_MAX_SAMPLERS]
    passes = {i: _read_pass(g, i, g.nodes[i]) for i in picked}
    if not passes:
        return [], 0
    upstream = {nid for p in passes.values() for nid, node in p.chain if nid in passes}
    finals = [i for i in passes if i not in upstream]
    ranked = [i for i in order if i in finals]
    # a node that samples a latent (not a detailer or tiled upscaler working on pixels) made the image
    final = next((i for i in [*ranked, *finals] if "latent_image" in g.inputs(g.nodes[i])),
                 (ranked or finals or list(passes))[0])
    chain = [passes[final]]
    while chain[0].chain and chain[0].chain[-1][0] in passes and len(chain) <= len(passes):
        previous = passes[chain[0].chain[-1][0]]
        if previous in chain:
            break
        chain.insert(0, previous)
    return chain, len(samplers) - len(chain)


def _joined(texts: list[str], positive: bool) -> str:
    return ("\nAND\n" if positive else ", ").join(texts)


def _number(value: Any) -> Any:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _latent_size(g: Graph, node: Node) -> tuple[int, int] | None:
    """The size an empty-latent node makes: ``width``/``height`` (Efficient Loader: ``empty_latent_*``) or a
    ``dimensions`` text such as ``"832 x 1216 (portrait)"``."""
    inputs = g.inputs(node)
    width = number(g.literal(node, "width", "empty_latent_width"))
    height = number(g.literal(node, "height", "empty_latent_height"))
    if width and height and ("batch_size" in inputs or "Empty" in g.kind(node)):
        return int(width), int(height)
    match = _DIMENSIONS.search(str(g.literal(node, "dimensions", "resolution") or "")[:64])
    return (int(match.group(1)), int(match.group(2))) if match else None


def _size_and_upscale(g: Graph, chain: list[tuple[str, Node]]) -> dict[str, Any]:
    """Size of the empty latent, upscale target or factor, upscaler and init image along a latent chain."""
    out: dict[str, Any] = {}
    scale = 1.0
    for _, node in chain:
        kind, inputs = g.kind(node), g.inputs(node)
        width, height = number(g.literal(node, "width")), number(g.literal(node, "height"))
        method = inputs.get("upscale_method")
        size = _latent_size(g, node)
        if size is not None:
            out["size"] = size
        elif kind in ("LatentUpscale", "ImageScale") and width and height:
            out.setdefault("resize", (int(width), int(height)))
            if kind == "LatentUpscale":
                out.setdefault("upscaler", _LATENT_MODES.get(str(method), f"Latent ({method})"))
        elif kind in ("LatentUpscaleBy", "ImageScaleBy") and number(g.literal(node, "scale_by")):
            scale *= number(g.literal(node, "scale_by")) or 1
            if kind == "LatentUpscaleBy":
                out.setdefault("upscaler", _LATENT_MODES.get(str(method), f"Latent ({method})"))
        elif kind == "ImageUpscaleWithModel":
            loader = g.target(inputs.get("upscale_model"))
            model = names.model_name(g.literal(loader[1] if loader else None, "model_name"))
            factor = re.search(r"(\d+)x", model or "", re.I)
            scale *= int(factor.group(1)) if factor else 1
            if model:
                out.setdefault("upscaler", model)
        elif kind == "LoadImage":
            out["init_image"] = inputs.get("image")
        if g.is_sampler(node):
            break
    if scale != 1.0:
        out["scale"] = scale
    return out


def parse_prompt_graph(graph: dict[Any, Any], source: str = "prompt") -> Parsed:
    """A1111 parameters of a ComfyUI API graph (``prompt`` chunk)."""
    g = Graph(graph)
    passes, others = _pick_passes(g)
    parsed = Parsed("ComfyUI", source=source)
    if not passes:
        parsed.warnings.append("ComfyUI graph without a sampler node: no generation parameters")
        return parsed
    base, last = passes[0], passes[-1]
    sampler, schedule = names.sampler(base.sampler, base.scheduler)
    parsed.prompt = _joined(base.positive, True)
    parsed.negative = _joined(base.negative, False)
    if base.loras:
        tags = " ".join(f"<lora:{name}:{_number(w) if _number(w) is not None else 1}>" for name, w in base.loras)
        parsed.prompt = f"{parsed.prompt} {tags}".strip()
    first = _size_and_upscale(g, base.chain)
    p: dict[str, Any] = {"Steps": base.steps, "Sampler": sampler, "Schedule type": schedule, "CFG scale": base.cfg,
                         "Seed": base.seed, "Size": "{}x{}".format(*first["size"]) if "size" in first else None,
                         "Model": base.model, "Clip skip": base.clip_skip}
    if "init_image" in first or (_number(base.denoise) is not None and base.denoise < 1 and len(passes) == 1):
        p["Denoising strength"] = base.denoise
        if first.get("init_image"):
            parsed.warnings.append(f"img2img: the source image was {first['init_image']!r}")
    if len(passes) > 1:
        up = _size_and_upscale(g, last.chain)
        hr_sampler, hr_schedule = names.sampler(last.sampler, last.scheduler)
        p["Denoising strength"] = last.denoise
        p["Hires upscale"] = up.get("scale") if "resize" not in up else None
        p["Hires resize"] = "{}x{}".format(*up["resize"]) if "resize" in up else None
        p["Hires steps"] = last.steps
        p["Hires upscaler"] = up.get("upscaler")
        p["Hires sampler"] = hr_sampler if hr_sampler != sampler else None
        p["Hires schedule type"] = hr_schedule if hr_schedule != schedule else None
        p["Hires CFG scale"] = last.cfg if last.cfg != base.cfg else None
        p["Hires checkpoint"] = last.model if last.model != base.model else None
        p["Hires prompt"] = _joined(last.positive, True) if last.positive != base.positive else None
        p["Hires negative prompt"] = _joined(last.negative, False) if last.negative != base.negative else None
        p["Hires seed"] = last.seed if last.seed != base.seed else None
        if len(passes) > 2:
            parsed.warnings.append(f"{len(passes)} sampling passes: shown as the first and the last (hires)")
    if others:
        parsed.warnings.append(f"{others} other sampler node(s) in the graph are not shown")
    if len(base.positive) > 1:
        parsed.warnings.append(f"{len(base.positive)} positive prompts (combined or area conditioning) joined "
                               "with AND")
    parsed.params = {k: v for k, v in p.items() if v is not None}
    return parsed

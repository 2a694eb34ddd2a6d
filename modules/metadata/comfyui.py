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
from modules.metadata.model import Parsed

SAMPLER_TYPES = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"})
_NOT_TEXT = frozenset({"clip", "model", "vae", "control_net", "image", "clip_vision", "clip_vision_output",
                       "style_model", "mask", "pixels", "samples", "latent", "latent_image", "upscale_model",
                       "ipadapter", "unet", "noise", "sigmas", "sampler"})
_TEXT_KEYS = MappingProxyType({
    "positive": ("populated_text", "text", "text_g", "positive", "prompt", "string", "value"),
    "negative": ("populated_text", "text", "text_g", "negative", "prompt", "string", "value"),
})
_LATENT_KEYS = ("samples", "latent", "latent_image", "pixels", "image", "images", "samples_to", "destination")
_SIGMA_SCHEDULERS = MappingProxyType({
    "KarrasScheduler": "karras", "ExponentialScheduler": "exponential", "PolyexponentialScheduler": "polyexponential",
    "AlignYourStepsScheduler": "align_your_steps", "BetaSamplingScheduler": "beta",
})
_LATENT_MODES = MappingProxyType({"nearest-exact": "Latent (nearest-exact)", "bilinear": "Latent",
                                  "bicubic": "Latent (bicubic)", "nearest": "Latent (nearest)"})
_MAX_DEPTH = 64
_MAX_SAMPLERS = 64  # sampler nodes examined in one graph
_MAX_VISITS = 4096  # nodes one prompt search visits


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and isinstance(value[1], int) and not isinstance(value[1], bool)


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
    chain: list[tuple[str, dict]] = field(default_factory=list)  # latent_image back to a source or sampler


class Graph:
    """Look-ups over one API graph; every walk is bounded in depth and never revisits a node."""

    def __init__(self, nodes: dict[Any, Any]) -> None:
        self.nodes = {str(k): v for k, v in nodes.items() if isinstance(v, dict)}

    @staticmethod
    def inputs(node: dict | None) -> dict[str, Any]:
        value = node.get("inputs") if isinstance(node, dict) else None
        return value if isinstance(value, dict) else {}

    @staticmethod
    def kind(node: dict | None) -> str:
        return str(node.get("class_type", "")) if isinstance(node, dict) else ""

    def target(self, value: Any) -> tuple[str, dict] | None:
        if not is_link(value):
            return None
        node = self.nodes.get(str(value[0]))
        return (str(value[0]), node) if node is not None else None

    def literal(self, node: dict | None, *keys: str, depth: int = 0) -> Any:
        """The first of ``keys`` set on ``node``; a link is followed to a primitive/value node."""
        inputs = self.inputs(node)
        for key in keys:
            value = inputs.get(key)
            if value is None:
                continue
            if not is_link(value):
                return value
            found = self.target(value)
            if found is not None and depth < 8:
                resolved = self.literal(found[1], key, "value", "seed", "noise_seed", "int", "float", "number",
                                        "string", "text", depth=depth + 1)
                if resolved is not None:
                    return resolved
        return None

    def is_sampler(self, node: dict) -> bool:
        keys = self.inputs(node).keys()
        return self.kind(node) in SAMPLER_TYPES or {"sampler_name", "steps", "cfg"} <= keys \
            or {"sampler", "sigmas"} <= keys or {"guider", "sigmas"} <= keys

    def texts(self, ref: Any, role: str, encoders: list[dict]) -> list[str]:
        """Prompt texts reachable from a conditioning link (through combine/area/ControlNet nodes)."""
        out: list[str] = []
        seen: set[str] = set()
        todo = [(ref, 0)]
        while todo:
            value, depth = todo.pop(0)
            found = self.target(value)
            if found is None or found[0] in seen or depth > _MAX_DEPTH or len(seen) >= _MAX_VISITS:
                continue
            seen.add(found[0])
            node = found[1]
            text = self.literal(node, *_TEXT_KEYS[role])
            if isinstance(text, str):
                if text.strip() and text.strip() not in out:
                    out.append(text.strip())
                encoders.append(node)
                continue
            todo += [(v, depth + 1) for k, v in self.inputs(node).items() if is_link(v) and k not in _NOT_TEXT]
        return out

    def clip_skip(self, encoder: dict) -> int | None:
        value, depth = self.inputs(encoder).get("clip"), 0
        while (found := self.target(value)) is not None and depth < _MAX_DEPTH:
            layer = self.literal(found[1], "stop_at_clip_layer")
            if isinstance(layer, int) and not isinstance(layer, bool):
                return abs(layer)
            value, depth = self.inputs(found[1]).get("clip"), depth + 1
        return None

    def model(self, ref: Any, loras: list[tuple[str, Any]]) -> str | None:
        value, depth = ref, 0
        while (found := self.target(value)) is not None and depth < _MAX_DEPTH:
            inputs = self.inputs(found[1])
            name = self.literal(found[1], "ckpt_name", "unet_name")
            if name is not None:
                return names.model_name(name)
            lora = inputs.get("lora_name")
            if isinstance(lora, str):
                loras.insert(0, (names.model_name(lora) or lora, inputs.get("strength_model", 1.0)))
            value, depth = inputs.get("model"), depth + 1
        return None

    def latent_chain(self, ref: Any) -> list[tuple[str, dict]]:
        chain: list[tuple[str, dict]] = []
        value = ref
        while (found := self.target(value)) is not None and len(chain) < _MAX_DEPTH:
            if any(found[0] == n for n, _ in chain):
                break
            chain.append(found)
            if self.is_sampler(found[1]):
                break
            inputs = self.inputs(found[1])
            value = next((inputs[k] for k in _LATENT_KEYS if is_link(inputs.get(k))), None)
        return chain


def _read_pass(g: Graph, node_id: str, node: dict) -> _Pass:
    inputs = g.inputs(node)
    guider = g.target(inputs.get("guider"))
    guider_node = guider[1] if guider else None
    sigmas = g.target(inputs.get("sigmas"))
    sigmas_node = sigmas[1] if sigmas else None
    sampler_node = g.target(inputs.get("sampler"))
    noise = g.target(inputs.get("noise"))
    p = _Pass(node_id)
    p.seed = g.literal(node, "seed", "noise_seed")
    if p.seed is None and noise:
        p.seed = g.literal(noise[1], "noise_seed", "seed")
    p.steps = g.literal(node, "steps") if "steps" in inputs else g.literal(sigmas_node, "steps")
    p.cfg = g.literal(node, "cfg") if "cfg" in inputs else g.literal(guider_node, "cfg")
    sampler = g.literal(node, "sampler_name")
    if sampler is None and sampler_node:
        sampler = g.literal(sampler_node[1], "sampler_name") or g.kind(sampler_node[1])
    p.sampler = sampler if isinstance(sampler, str) else None
    scheduler = g.literal(node, "scheduler")
    if scheduler is None and sigmas_node is not None:
        scheduler = g.literal(sigmas_node, "scheduler") or _SIGMA_SCHEDULERS.get(g.kind(sigmas_node))
    p.scheduler = scheduler if isinstance(scheduler, str) else None
    p.denoise = g.literal(node, "denoise") if "denoise" in inputs else g.literal(sigmas_node, "denoise")
    source = g.inputs(guider_node) if guider_node is not None and "model" not in inputs else inputs
    p.model = g.model(source.get("model"), p.loras)
    encoders: list[dict] = []
    positive = source.get("positive", source.get("conditioning"))
    p.positive = g.texts(positive, "positive", encoders)
    p.negative = g.texts(source.get("negative"), "negative", [])
    p.clip_skip = next((s for s in (g.clip_skip(e) for e in encoders) if s), None)
    p.chain = g.latent_chain(inputs.get("latent_image"))
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
    final = ranked[0] if ranked else (finals or list(passes))[0]
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


def _size_and_upscale(g: Graph, chain: list[tuple[str, dict]]) -> dict[str, Any]:
    """Size of the empty latent, upscale target or factor, upscaler and init image along a latent chain."""
    out: dict[str, Any] = {}
    scale = 1.0
    for _, node in chain:
        kind, inputs = g.kind(node), g.inputs(node)
        width, height = _number(g.literal(node, "width")), _number(g.literal(node, "height"))
        method = inputs.get("upscale_method")
        if "batch_size" in inputs and width and height:
            out["size"] = (int(width), int(height))
        elif kind in ("LatentUpscale", "ImageScale") and width and height:
            out.setdefault("resize", (int(width), int(height)))
            if kind == "LatentUpscale":
                out.setdefault("upscaler", _LATENT_MODES.get(method, f"Latent ({method})"))
        elif kind in ("LatentUpscaleBy", "ImageScaleBy") and _number(inputs.get("scale_by")):
            scale *= inputs["scale_by"]
            if kind == "LatentUpscaleBy":
                out.setdefault("upscaler", _LATENT_MODES.get(method, f"Latent ({method})"))
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

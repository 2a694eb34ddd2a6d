"""Look-ups over one ComfyUI API graph (``{node_id: {"class_type", "inputs"}}``), for :mod:`comfyui`.

Values often reach a sampler or a text encoder through other nodes: primitives (``PrimitiveNode``,
``PrimitiveInt``/``PrimitiveString``, ``Int Literal``, ``CR Seed``, ``Seed (rgthree)``, ``easy seed``...),
converters (``String to Float``, ``CR String To Number``...), text joiners (``Text Concatenate``,
``StringConcatenate``, ``StringFunction|pysssss``), wildcard and style nodes. Links (``[node_id, output_index]``)
are followed generically: the same input name or a value-like one (``value``, ``seed``, ``int``, ``string``,
``text``...) on the linked node, else its only input. Every walk is bounded in depth and in nodes visited, so
cycles and huge graphs cost little.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

from modules.metadata import names

SAMPLER_TYPES = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"})
NOT_TEXT = frozenset({"clip", "model", "vae", "control_net", "image", "clip_vision", "clip_vision_output",
                      "style_model", "mask", "pixels", "samples", "latent", "latent_image", "upscale_model",
                      "ipadapter", "unet", "noise", "sigmas", "sampler", "guider", "seed", "image_embeds"})
_COMMON_TEXT = ("populated_text", "text", "text_g", "t5xxl", "clip_g", "clip_l")
TEXT_KEYS = MappingProxyType({
    "positive": (*_COMMON_TEXT, "text_positive", "positive", "prompt", "wildcard_text", "string", "value"),
    "negative": (*_COMMON_TEXT, "text_negative", "negative", "prompt", "wildcard_text", "string", "value"),
})
_VALUE_KEYS = ("value", "seed", "noise_seed", "int", "float", "number", "string", "text", "a", "_int", "_float",
               "input")
_JOINED = re.compile(r"^(?:text|string)_?(?:[a-f]|\d{1,2})$")
_SEPARATORS = ("delimiter", "separator", "delimiter_text")
MAX_DEPTH = 64
_MAX_VALUE_DEPTH = 12
_BUDGET = 512  # nodes one value or text look-up may visit


Node = dict[str, Any]  # one node of an API graph: {"class_type": ..., "inputs": {...}}


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and isinstance(value[1], int) and not isinstance(value[1], bool)


def number(value: Any) -> int | float | None:
    """A number, from a number or numeric text (converter nodes pass numbers as strings); else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                continue
    return None


class Graph:
    """Look-ups over one API graph; every walk is bounded in depth and in nodes visited."""

    def __init__(self, nodes: dict[Any, Any]) -> None:
        self.nodes = {str(k): v for k, v in nodes.items() if isinstance(v, dict)}

    @staticmethod
    def inputs(node: Node | None) -> dict[str, Any]:
        value = node.get("inputs") if isinstance(node, dict) else None
        return value if isinstance(value, dict) else {}

    @staticmethod
    def kind(node: Node | None) -> str:
        return str(node.get("class_type", "")) if isinstance(node, dict) else ""

    def target(self, value: Any) -> tuple[str, Node] | None:
        if not is_link(value):
            return None
        node = self.nodes.get(str(value[0]))
        return (str(value[0]), node) if node is not None else None

    def literal(self, node: Node | None, *keys: str) -> Any:
        """The first of ``keys`` set on ``node``, links followed to the node that holds the value."""
        return self._literal(node, keys, 0, [_BUDGET])

    def _literal(self, node: Node | None, keys: tuple[str, ...], depth: int, budget: list[int]) -> Any:
        inputs = self.inputs(node)
        for key in keys:
            value = inputs.get(key)
            if value is None:
                continue
            if not is_link(value):
                return value
            resolved = self._follow(value, key, depth + 1, budget)
            if resolved is not None:
                return resolved
        return None

    def _follow(self, link: Any, key: str, depth: int, budget: list[int]) -> Any:
        found = self.target(link)
        budget[0] -= 1
        if found is None or depth > _MAX_VALUE_DEPTH or budget[0] < 0:
            return None
        value = self._literal(found[1], (key, *_VALUE_KEYS), depth, budget)
        inputs = self.inputs(found[1])
        if value is None and len(inputs) == 1:  # a converter with one input: pass it through
            only = next(iter(inputs.values()))
            value = self._follow(only, key, depth + 1, budget) if is_link(only) else only
        return value

    def text(self, value: Any, role: str) -> str | None:
        """The prompt text a text input holds or a link produces (through primitives, joiners, wildcards)."""
        return self._text(value, role, 0, [_BUDGET])

    def _text(self, value: Any, role: str, depth: int, budget: list[int]) -> str | None:
        if isinstance(value, str):
            return value
        found = self.target(value)
        budget[0] -= 1
        if found is None or depth > _MAX_VALUE_DEPTH or budget[0] < 0:
            return None
        inputs = self.inputs(found[1])
        for key in TEXT_KEYS[role]:
            if key in inputs:
                text = self._text(inputs[key], role, depth + 1, budget)
                if text is not None:
                    return text
        parts = sorted(k for k in inputs if _JOINED.match(k))
        if parts and str(inputs.get("action", "append")) == "append":
            texts = [t for t in (self._text(inputs[k], role, depth + 1, budget) for k in parts) if t]
            sep = next((inputs[k] for k in _SEPARATORS if isinstance(inputs.get(k), str)), None)
            if sep is None:
                sep = ", " if str(inputs.get("tidy_tags", "")).lower() == "yes" else ""
            return sep.join(texts) if texts else None
        links = [v for k, v in inputs.items() if is_link(v) and k not in NOT_TEXT]
        return self._text(links[0], role, depth + 1, budget) if len(links) == 1 else None

    def is_sampler(self, node: Node) -> bool:
        kind = self.kind(node)
        if "Save" in kind or "Preview" in kind:
            return False
        keys = self.inputs(node).keys()
        return kind in SAMPLER_TYPES or {"sampler_name", "steps", "cfg"} <= keys \
            or {"sampler", "sigmas"} <= keys or {"guider", "sigmas"} <= keys

    def texts(self, ref: Any, role: str, encoders: list[Node]) -> list[str]:
        """Prompt texts reachable from a conditioning link: combined/area/ControlNet conditioning gives several
        (A1111's ``AND``), ``ConditioningConcat`` one joined with ``BREAK``, ``ConditioningZeroOut`` none."""
        out: list[str] = []
        for text in self._cond(ref, role, encoders, set(), 0):
            if text not in out:
                out.append(text)
        return out

    def _cond(self, ref: Any, role: str, encoders: list[Node], seen: set[str], depth: int) -> list[str]:
        found = self.target(ref)
        if found is None or found[0] in seen or depth > MAX_DEPTH or len(seen) >= _BUDGET:
            return []
        seen.add(found[0])
        node, kind = found[1], self.kind(found[1])
        inputs = self.inputs(node)
        if kind == "ConditioningZeroOut":
            return []
        for key in TEXT_KEYS[role]:
            if key in inputs:
                text = self.text(inputs[key], role)
                if text is not None:
                    encoders.append(node)
                    return [text.strip()] if text.strip() else []
        if kind == "ConditioningConcat":
            halves = [" AND ".join(self._cond(inputs.get(k), role, encoders, seen, depth + 1))
                      for k in ("conditioning_to", "conditioning_from")]
            joined = " BREAK ".join(h for h in halves if h)
            return [joined] if joined else []
        out: list[str] = []
        for key, value in inputs.items():
            if is_link(value) and key not in NOT_TEXT:
                out += self._cond(value, role, encoders, seen, depth + 1)
        return out

    def clip_skip(self, encoder: Node) -> int | None:
        """CLIP skip of an encoder: its own ``clip_skip`` (Efficient Loader) or a ``CLIPSetLastLayer`` upstream."""
        node: Node | None = encoder
        depth = 0
        while node is not None and depth < MAX_DEPTH:
            layer = number(self.literal(node, "stop_at_clip_layer", "clip_skip"))
            if isinstance(layer, int) and layer:
                return abs(layer)
            depth += 1
            found = self.target(self.inputs(node).get("clip"))
            node = found[1] if found else None
        return None

    def model(self, ref: Any, loras: list[tuple[str, Any]]) -> str | None:
        """The checkpoint (or diffusion model) name behind a model link; LoRA loaders on the way go to ``loras``."""
        value, depth = ref, 0
        while (found := self.target(value)) is not None and depth < MAX_DEPTH:
            inputs = self.inputs(found[1])
            lora = self.literal(found[1], "lora_name")
            if isinstance(lora, str) and lora.strip() not in ("", "None"):
                weight = self.literal(found[1], "strength_model", "lora_model_strength", "strength")
                loras.insert(0, (names.model_name(lora) or lora, 1.0 if weight is None else weight))
            name = self.literal(found[1], "ckpt_name", "unet_name", "base_ckpt_name", "model_path")
            if isinstance(name, (str, dict)):
                return names.model_name(name)
            value = next((inputs[k] for k in ("model", "model1", "base_model", "unet") if is_link(inputs.get(k))),
                         None)
            depth += 1
        return None

    def latent_chain(self, ref: Any, latent_keys: tuple[str, ...]) -> list[tuple[str, Node]]:
        chain: list[tuple[str, Node]] = []
        value = ref
        while (found := self.target(value)) is not None and len(chain) < MAX_DEPTH:
            if any(found[0] == n for n, _ in chain):
                break
            chain.append(found)
            if self.is_sampler(found[1]):
                break
            inputs = self.inputs(found[1])
            value = next((inputs[k] for k in latent_keys if is_link(inputs.get(k))), None)
        return chain

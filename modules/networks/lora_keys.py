"""Which layer of the loaded model each module of a LoRA file patches.

A network file names its layers in one of several layouts, all read here:

- kohya (sd-scripts): ``lora_unet_<diffusers path>`` for SD 1.x/2.x, ``lora_unet_<original (LDM/SGM) path>`` for
  SDXL and in A1111's own CompVis naming, ``lora_te_<HF CLIP path>`` (``lora_te1_``/``lora_te2_`` for SDXL's two
  text encoders), dots written as underscores; LyCORIS files use the same names;
- diffusers and peft: ``unet.<path>``, ``text_encoder.<path>``, ``text_encoder_2.<path>`` with ``lora_A``/``lora_B``
  (peft), ``lora.down``/``lora.up`` or the older attention-processor names (``processor.to_q_lora.down``).

The model's own module names (diffusers UNet, transformers CLIP) are turned into every spelling a file may use, so
a file's module is found by a dictionary look-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from modules.models.convert import UNET_PREFIX, unet_to_ldm
from modules.models.loader import ModelParts

Tensor = torch.Tensor

# the parameter names of every supported module type, as kohya and LyCORIS write them
KNOWN_PARAMS = frozenset({
    "lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "scale", "dora_scale",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "diff", "diff_b", "weight", "on_input", "w_norm", "b_norm", "oft_blocks", "oft_diag", "rescale",
    "a1.weight", "a2.weight", "b1.weight", "b2.weight", "bias_indices", "bias_values", "bias_size",
})

# diffusers / peft spellings -> kohya parameter names
_DIFFUSERS_PARAMS = [
    (re.compile(r"^(?P<m>.+?)\.(?:processor\.)?(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<p>down|up)\.weight$"), None),
    (re.compile(r"^(?P<m>.+)\.lora_A(?:\.[^.]+)?\.weight$"), "lora_down.weight"),
    (re.compile(r"^(?P<m>.+)\.lora_B(?:\.[^.]+)?\.weight$"), "lora_up.weight"),
    (re.compile(r"^(?P<m>.+)\.lora(?:_linear_layer)?\.down\.weight$"), "lora_down.weight"),
    (re.compile(r"^(?P<m>.+)\.lora(?:_linear_layer)?\.up\.weight$"), "lora_up.weight"),
    (re.compile(r"^(?P<m>.+)\.alpha$"), "alpha"),
]
_COMPONENTS = ("unet.", "text_encoder.", "text_encoder_2.")


@dataclass
class Target:
    """A layer of the loaded model a network module patches; ``text`` for the text encoders (which take the
    ``te`` multiplier)."""

    module: torch.nn.Module
    name: str  # "<component>.<module path>", for messages
    text: bool


def group_modules(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    """The file's tensors grouped by module name: ``{module: {param: tensor}}``, and the keys that fit no layout."""
    groups: dict[str, dict[str, Tensor]] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(_COMPONENTS):
            found = _diffusers_key(key)
            if found is None:
                unknown.append(key)
                continue
            module, param = found
        else:
            module, _, param = key.partition(".")
            if param not in KNOWN_PARAMS:
                unknown.append(key)
                continue
        groups.setdefault(module, {})[param] = value
    return groups, unknown


def _diffusers_key(key: str) -> tuple[str, str] | None:
    for pattern, param in _DIFFUSERS_PARAMS:
        match = pattern.match(key)
        if match is None:
            continue
        if param is None:  # the attention processor form: the projection is named in the parameter
            proj = match["proj"] + (".0" if match["proj"] == "to_out" else "")
            return f"{match['m']}.{proj}", f"lora_{match['p']}.weight"
        return match["m"], param
    return None


def _underscored(path: str) -> str:
    return path.replace(".", "_")


def _patchable(modules: Iterable[tuple[str, torch.nn.Module]]) -> Iterable[tuple[str, torch.nn.Module]]:
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    return ((n, m) for n, m in modules if n and isinstance(m, kinds))


def _unet_targets(unet: torch.nn.Module, config: Mapping[str, object]) -> dict[str, Target]:
    out: dict[str, Target] = {}
    layers = dict(_patchable(unet.named_modules()))
    names: dict[str, Any] = {f"{n}.weight": n for n in layers}  # the converter moves keys; the value rides along
    try:
        ldm = unet_to_ldm(names, config)
    except (ValueError, KeyError):  # a layer the converter does not know: the others keep their original names
        ldm = {}
        for key, name in names.items():
            try:
                ldm.update(unet_to_ldm({key: name}, config))
            except (ValueError, KeyError):
                continue
    for ldm_key, name in ldm.items():  # the original layout's names (SDXL kohya files, A1111's CompVis naming)
        path = ldm_key[len(UNET_PREFIX):-len(".weight")]
        out["lora_unet_" + _underscored(path)] = Target(layers[name], f"unet.{name}", False)
    for name, module in layers.items():
        target = Target(module, f"unet.{name}", False)
        out["lora_unet_" + _underscored(name)] = target
        out[f"unet.{name}"] = target
    return out


def _text_targets(encoder: torch.nn.Module, kohya_prefix: str, component: str) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for name, module in _patchable(encoder.named_modules()):
        hf = name if name.startswith("text_model.") else f"text_model.{name}"
        target = Target(module, f"{component}.{hf}", True)
        out[kohya_prefix + _underscored(hf)] = target
        out[f"{component}.{hf}"] = target
    return out


def model_targets(parts: ModelParts) -> dict[str, Target]:
    """Every name a network file may give each patchable layer of ``parts`` (Linear, Conv2d and norm layers)."""
    targets = _unet_targets(parts.unet, parts.unet.config)
    if parts.text_encoder_2 is not None:
        targets.update(_text_targets(parts.text_encoder, "lora_te1_", "text_encoder"))
        targets.update(_text_targets(parts.text_encoder_2, "lora_te2_", "text_encoder_2"))
    else:
        targets.update(_text_targets(parts.text_encoder, "lora_te_", "text_encoder"))
    return targets

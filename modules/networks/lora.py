"""LoRA and LyCORIS networks named in a prompt, applied to the loaded model for one job and taken off after it.

A ``<lora:name:te:unet:dyn>`` tag (also ``<lora:name:unet=0.5:te=1>`` and ``<lyco:...>``) names a file of the LoRA
folders by file name or alias. Each network's change is added to the layers' weights, text encoder layers times the
``te`` multiplier, UNet layers times ``unet`` (``te`` when not given), the way A1111 merges them; the layers' own
weights are kept aside first and put back after the job, so the model in the cache stays as loaded. Weight 0 (both
multipliers) means the network is not loaded at all.

Files are read with safetensors or ``torch.load(weights_only=True)``; what cannot be used (a broken file, a pickle
asking for code, a network for another model family, a module type not supported here) is reported in the job's
warnings, naming the file, and the job goes on without it.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modules.models.loader import ModelParts
from modules.networks import lora_deltas
from modules.networks.file_cache import FileVersionCache
from modules.networks.lora_files import LoraInfo, LoraRegistry
from modules.networks.lora_keys import Target, group_modules, model_targets
from modules.networks.tags import collect_tags

log = logging.getLogger(__name__)
Tensor = torch.Tensor
Warn = Callable[[str], None]
TAG_KINDS = ("lora", "lyco")
_REMOVE_FROM_NAME = str.maketrans("", "", ":,")


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:...>`` of a prompt, as A1111 reads its arguments."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn_dim: int | None = None


def parse_tag(args: Sequence[str]) -> LoraTag:
    """``[name, te, unet, dyn]`` positionally, or ``te=``, ``unet=``, ``dyn=`` by name; ``ValueError`` for a value
    that is not a number."""
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    if not positional or not positional[0].strip():
        raise ValueError("a LoRA tag needs a name")
    try:
        te = float(named.get("te", positional[1] if len(positional) > 1 else 1.0))
        unet = float(named.get("unet", positional[2] if len(positional) > 2 else te))
        dyn_raw = named.get("dyn", positional[3] if len(positional) > 3 else None)
        dyn = int(dyn_raw) if dyn_raw not in (None, "") else None
    except ValueError:
        raise ValueError(f"<lora:{':'.join(args)}>: the weights must be numbers") from None
    return LoraTag(positional[0].strip(), te, unet, dyn)


def lora_tags(networks: Sequence[tuple[str, list[str]]], warn: Warn) -> list[LoraTag]:
    return collect_tags(networks, TAG_KINDS, parse_tag, warn)


def lora_hashes(used: Mapping[str, str]) -> str | None:
    """A1111's ``Lora hashes`` infotext value: ``name: hash`` pairs, ``:`` and ``,`` taken out of the names."""
    return ", ".join(f"{name.translate(_REMOVE_FROM_NAME)}: {h}" for name, h in used.items()) or None


def parse_lora_hashes(value: object) -> dict[str, str]:
    """``{name: shorthash}`` from an infotext's ``Lora hashes`` value (``name: hash, name2: hash2``)."""
    out: dict[str, str] = {}
    for item in str(value or "").split(","):
        name, sep, short = item.partition(":")
        if sep and name.strip() and short.strip():
            out[name.strip()] = short.strip()
    return out


_TAG_NAME = re.compile(r"<(lora|lyco):([^:>]+)(?=[:>])")


# --- reading files ------------------------------------------------------------------------------------------------

def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A network file's tensors on the CPU; ``ValueError`` naming the reason for anything unusable."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported the same way
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ValueError(f"unreadable ({reason})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError("not a network file (no tensors)")
    return {str(k): v for k, v in data.items()}


def _read_modules(path: Path) -> dict[str, dict[str, Tensor]]:
    groups, unknown = group_modules(read_state_dict(path))
    if unknown:
        log.debug("LoRA %s: %d keys in no known layout, e.g. %s", path, len(unknown), unknown[0])
    return groups


# --- applying -----------------------------------------------------------------------------------------------------

def _param(module: torch.nn.Module, name: str) -> Tensor | None:
    value = getattr(module, name, None)
    return value if isinstance(value, Tensor) else None


@dataclass
class AppliedNetworks:
    """What one job applied: the infotext hashes, and the layers' own weights to put back."""

    hashes: dict[str, str] = field(default_factory=dict)  # name as written in the prompt -> short hash
    backups: dict[int, tuple[torch.nn.Module, Tensor, Tensor | None]] = field(default_factory=dict)

    def keep(self, module: torch.nn.Module) -> None:
        weight, bias = _param(module, "weight"), _param(module, "bias")
        if id(module) not in self.backups and weight is not None:
            self.backups[id(module)] = (module, weight.detach().clone(),
                                        bias.detach().clone() if bias is not None else None)

    @torch.no_grad()
    def restore(self) -> None:
        for module, weight, bias in self.backups.values():
            current_weight, current_bias = _param(module, "weight"), _param(module, "bias")
            if current_weight is not None:
                current_weight.copy_(weight)
            if bias is not None and current_bias is not None:
                current_bias.copy_(bias)
        self.backups.clear()


class LoraNetworks:
    """Finds the tagged networks and patches a model with them for the span of a job."""

    def __init__(self, registry: LoraRegistry) -> None:
        self.registry = registry
        self.files: FileVersionCache[dict[str, dict[str, Tensor]]] = FileVersionCache(8)
        # the last model's layer names, held weakly: a model the cache lets go is not kept alive here
        self._targets: tuple[weakref.ref[ModelParts], dict[str, Target]] | None = None

    def _model_targets(self, parts: ModelParts) -> dict[str, Target]:
        if self._targets is None or self._targets[0]() is not parts:
            self._targets = (weakref.ref(parts), model_targets(parts))
        return self._targets[1]

    def names_from_hashes(self, prompt: str, lora_hashes_value: object) -> str:
        """A pasted prompt with each tagged network renamed to the file here that has the hash the infotext's
        ``Lora hashes`` gives for it (a LoRA renamed since, or saved under another name), as A1111's paste does;
        tags without a known hash, or whose hash no file here has, are left as written."""
        hashes = parse_lora_hashes(lora_hashes_value)
        if not hashes:
            return prompt

        def rename(match: re.Match[str]) -> str:
            short = hashes.get(match.group(2))
            info = self.registry.find_by_hash(short) if short else None
            if info is None:
                return match.group(0)
            name = info.alias if self.registry.find(info.alias) is info else info.name  # an alias two files share
            return f"<{match.group(1)}:{name}"

        return _TAG_NAME.sub(rename, prompt)

    def resolve(self, tag: LoraTag, warn: Warn) -> LoraInfo | None:
        info = self.registry.find(tag.name)
        if info is None:
            warn(f"LoRA not found: {tag.name}")
        return info

    @contextmanager
    def applied(self, parts: ModelParts, tags: Sequence[LoraTag], warn: Warn) -> Iterator[AppliedNetworks]:
        """``parts`` with the tagged networks merged in; its own weights are back when the block ends, whatever
        happens in it."""
        state = AppliedNetworks()
        try:
            if tags:
                targets = self._model_targets(parts)
                for tag in tags:
                    if tag.te == 0 and tag.unet == 0:
                        continue
                    info = self.resolve(tag, warn)
                    if info is not None:
                        self._apply(parts, info, tag, targets, state, warn)
            yield state
        finally:
            state.restore()

    def _apply(self, parts: ModelParts, info: LoraInfo, tag: LoraTag, targets: dict[str, Target],
               state: AppliedNetworks, warn: Warn) -> None:
        try:
            modules = self.files.get(info.path, _read_modules)
        except (OSError, ValueError) as exc:
            warn(f"LoRA {info.path.name}: {exc}; generating without it")
            return
        matched = [(name, targets[name], w) for name, w in modules.items() if name in targets]
        if not matched:
            warn(f"LoRA {info.path.name}: none of its {len(modules)} layers fit this {parts.family.label} model "
                 "(a network for another model family?); generating without it")
            return
        changes = self._changes(info, tag, matched, warn)
        if changes is None:
            return
        with torch.no_grad():
            for target, delta in changes:
                state.keep(target.module)
                weight, bias = _param(target.module, "weight"), _param(target.module, "bias")
                multiplier = tag.te if target.text else tag.unet
                if delta.weight is not None and weight is not None:
                    weight.copy_((weight.float() + delta.weight * multiplier).to(weight.dtype))
                if delta.bias is not None and bias is not None:
                    bias.copy_((bias.float() + delta.bias * multiplier).to(bias.dtype))
        short = self.registry.shorthash(info)
        if short:
            state.hashes[tag.name] = short

    @staticmethod
    def _changes(info: LoraInfo, tag: LoraTag, matched: list[tuple[str, Target, dict[str, Tensor]]],
                 warn: Warn) -> list[tuple[Target, lora_deltas.Delta]] | None:
        """Every layer's change, all computed before any layer is touched: a network that does not fit is left
        out whole."""
        out = []
        unsupported: set[str] = set()
        for name, target, w in matched:
            if (tag.te if target.text else tag.unet) == 0:
                continue
            weight = _param(target.module, "weight")
            if weight is None:
                continue
            try:
                delta = lora_deltas.compute_delta(w, weight, _param(target.module, "bias") is not None, tag.dyn_dim)
            except lora_deltas.UnsupportedModule as exc:
                unsupported.add(str(exc))
                continue
            except (ValueError, RuntimeError, KeyError) as exc:
                warn(f"LoRA {info.path.name}: layer {name} does not fit this model ({exc}); generating without "
                     "this network")
                return None
            out.append((target, delta))
        if unsupported:
            warn(f"LoRA {info.path.name}: module type {', '.join(sorted(unsupported))} is not supported; those "
                 "layers were left out")
        return out

"""A1111 hypernetworks named in a prompt (``<hypernet:name:multiplier>``), applied to the UNet for one job.

A hypernetwork file (``.pt``, in the hypernetwork folder or below it) holds, for each context width it was trained
for (768 for SD 1.x text, 1024 for SD 2.x, 320/640/1280 for the UNet's own features), a pair of small MLPs: one
rewrites the context the attention layer's key projection sees, the other the value projection's. Each MLP
``f`` is used as ``x + f(x) * multiplier``; several hypernetworks chain in prompt order. As in A1111 this happens in
every attention layer of the UNet: cross-attention rewrites the text context, self-attention its own hidden states.

The files are A1111's ``torch.save`` dictionaries; they are read with ``torch.load(weights_only=True)`` so a pickle
asking for code is refused. What cannot be used (an unreadable file, a layout these rules cannot build, widths no
layer of the model has) is reported in the job's warnings, naming the file, and the job goes on without it.

For the job each attention module of ``parts.unet`` gets a processor doing diffusers' ``AttnProcessor2_0``
computation with separate key and value contexts; the modules' own processors are put back afterwards, so the cached
model is exactly as loaded.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from modules.models.loader import ModelParts
from modules.networks.file_cache import FileVersionCache
from modules.networks.tags import collect_tags

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention

log = logging.getLogger(__name__)
Tensor = torch.Tensor
Warn = Callable[[str], None]
TAG_KIND = "hypernet"
EXTENSION = ".pt"
_READ_ERRORS = (ValueError, TypeError, KeyError, IndexError, RuntimeError, AssertionError, OverflowError)


@dataclass(frozen=True)
class HypernetTag:
    """One ``<hypernet:name[:multiplier]>`` of a prompt."""

    name: str
    multiplier: float = 1.0


def parse_tag(args: Sequence[str]) -> HypernetTag:
    """``[name, multiplier]`` as A1111 reads them (multiplier 1.0 when absent); ``ValueError`` for a multiplier that
    is not a number."""
    if not args:
        raise ValueError("a hypernet tag needs a name")
    try:
        multiplier = float(args[1]) if len(args) > 1 else 1.0
    except ValueError:
        raise ValueError(f"<hypernet:{':'.join(args)}>: the multiplier must be a number") from None
    return HypernetTag(args[0].strip(), multiplier)


def hypernet_tags(networks: Sequence[tuple[str, list[str]]], warn: Warn) -> list[HypernetTag]:
    """The prompt's hypernet tags, in order; a tag that cannot be read is named in a warning and left out."""
    return collect_tags(networks, (TAG_KIND,), parse_tag, warn)


# --- files --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HypernetworkInfo:
    """One hypernetwork file; ``name`` (the file's stem) is what a tag names."""

    name: str
    path: Path

    def api(self) -> dict[str, Any]:
        """A1111's ``/sdapi/v1/hypernetworks`` entry."""
        return {"name": self.name, "path": str(self.path)}


def _visible(path: Path, folder: Path) -> bool:
    """Whether A1111's ``glob('**/*.pt')`` sees the file: no part of its path below the folder starts with a dot."""
    return not any(part.startswith(".") for part in path.relative_to(folder).parts)


def list_hypernetworks(dirs: Sequence[Path]) -> dict[str, Path]:
    """Stem -> file, as A1111 lists them: sorted by path ignoring case, a later file of the same stem replacing an
    earlier one, ``None.pt`` left out (it would be the "no hypernetwork" choice)."""
    found: dict[str, Path] = {}
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob(f"*{EXTENSION}"), key=lambda p: str(p).lower()):
            if path.is_file() and _visible(path, folder) and path.stem != "None":
                found[path.stem] = path
    return found


class HypernetworkRegistry:
    """The hypernetwork files of the configured folders; ``refresh`` rescans."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = list(dirs)
        self._lock = threading.Lock()
        self._by_name: dict[str, Path] = {}
        self.refresh()

    def refresh(self) -> None:
        found = list_hypernetworks(self.dirs)
        with self._lock:
            self._by_name = found

    @property
    def files(self) -> list[HypernetworkInfo]:
        with self._lock:
            return [HypernetworkInfo(name, path) for name, path in self._by_name.items()]

    def find(self, name: str) -> HypernetworkInfo | None:
        with self._lock:
            path = self._by_name.get(name)
        return HypernetworkInfo(name, path) if path is not None else None


# --- building A1111's modules -------------------------------------------------------------------------------------

def activation_classes() -> dict[str, type[torch.nn.Module]]:
    """A1111's activation names: its short list, then every activation class of ``torch.nn`` by lower-cased name."""
    found: dict[str, type[torch.nn.Module]] = {
        "linear": torch.nn.Identity, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
        "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
    }
    module = torch.nn.modules.activation
    found.update({name.lower(): cls for name, cls in inspect.getmembers(module, inspect.isclass)
                  if cls.__module__ == module.__name__ and issubclass(cls, torch.nn.Module)})
    return found


@dataclass(frozen=True)
class Layout:
    """How a file's MLPs are built, read as A1111's ``Hypernetwork.load`` reads it (defaults included)."""

    layer_structure: tuple[float, ...] = (1, 2, 1)
    activation_func: str | None = None
    add_layer_norm: bool = False
    activate_output: bool = True
    dropout_structure: tuple[float, ...] = (0, 0, 0)


def dropout_structure(layer_structure: Sequence[float], use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """A1111's ``parse_dropout_structure``: dropout only counts for where the layers sit in the module list."""
    if not use_dropout:
        return [0] * len(layer_structure)
    return [0, *[0.3] * (len(layer_structure) - 3), 0.3 if last_layer_dropout else 0, 0]


def _numbers(value: Any, what: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in value):
        raise ValueError(f"{what} is not a list of numbers")
    return tuple(value)


def read_layout(data: Mapping[Any, Any]) -> Layout:
    """The building options of a file; ``ValueError`` for values A1111 could not build either."""
    structure = _numbers(data.get("layer_structure", [1, 2, 1]), "layer_structure")
    if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1:
        raise ValueError(f"layer_structure {list(structure)} must start and end with 1")
    activation = data.get("activation_func")
    if activation is not None and not isinstance(activation, str):
        raise ValueError("activation_func is not a name")
    dropouts_raw = data.get("dropout_structure")
    use_dropout = bool(dropouts_raw is not None and any(dropouts_raw)) or bool(data.get("use_dropout", False))
    if dropouts_raw is None:
        dropouts_raw = dropout_structure(structure, use_dropout, bool(data.get("last_layer_dropout", False)))
    dropouts = _numbers(dropouts_raw, "dropout_structure")
    if len(dropouts) < len(structure):
        raise ValueError("dropout_structure is shorter than layer_structure")
    if any(p > 0 and not p < 1 for p in dropouts):
        raise ValueError("dropout probabilities must be 0 or between 0 and 1")
    return Layout(structure, activation, bool(data.get("is_layer_norm", False)),
                  bool(data.get("activate_output", True)), dropouts)


def _layers(dim: int, layout: Layout) -> list[torch.nn.Module]:
    """A1111's ``HypernetworkModule`` list: Linear, activation (not after the last Linear unless
    ``activate_output``), LayerNorm, Dropout, per step of ``layer_structure``. Dropout does nothing at inference,
    but it takes a place in the list, and the state dict's keys count those places."""
    activations = activation_classes()
    structure, count = layout.layer_structure, len(layout.layer_structure) - 1
    out: list[torch.nn.Module] = []
    for i in range(count):
        width = int(dim * structure[i + 1])
        out.append(torch.nn.Linear(int(dim * structure[i]), width))
        last = i >= count - 1
        if layout.activation_func not in (None, "linear") and not (last and not layout.activate_output):
            cls = activations.get(str(layout.activation_func))
            if cls is None:
                raise ValueError(f"unsupported activation function {layout.activation_func!r}")
            out.append(cls())
        if layout.add_layer_norm:
            out.append(torch.nn.LayerNorm(width))
        if layout.dropout_structure[i + 1] > 0:
            out.append(torch.nn.Dropout(p=layout.dropout_structure[i + 1]))
    return out


_OLD_KEYS = {"linear1.bias": "linear.0.bias", "linear1.weight": "linear.0.weight",
             "linear2.bias": "linear.1.bias", "linear2.weight": "linear.1.weight"}


class HypernetworkModule(torch.nn.Module):
    """One MLP of a hypernetwork, keys and layers as A1111's; ``forward`` is ``x + mlp(x) * multiplier``."""

    def __init__(self, dim: int, layout: Layout) -> None:
        super().__init__()
        self.linear = torch.nn.Sequential(*_layers(dim, layout))

    def forward(self, x: Tensor, multiplier: float = 1.0) -> Tensor:
        change: Tensor = self.linear(x)
        return x + change * multiplier


def build_module(dim: int, layout: Layout, state: Any) -> HypernetworkModule:
    """The MLP for width ``dim`` with the file's weights. Built on the meta device and given the file's tensors, so
    a file claiming enormous layers costs no memory before its tensors are checked against them."""
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"width {dim}: the weights are not a state dict")
    weights = {_OLD_KEYS.get(str(k), str(k)): v for k, v in state.items()}
    with torch.device("meta"):
        module = HypernetworkModule(dim, layout)
    module.load_state_dict(weights, strict=True, assign=True)
    module.float().eval().requires_grad_(False)
    return module


ModulePair = tuple[HypernetworkModule, HypernetworkModule]


@dataclass
class Hypernetwork:
    """A file's MLPs: context width -> (key module, value module)."""

    path: Path
    layers: dict[int, ModulePair] = field(default_factory=dict)

    def to(self, device: torch.device) -> Hypernetwork:
        for pair in self.layers.values():
            for module in pair:
                module.to(device)
        return self


def load_hypernetwork(path: Path) -> Hypernetwork:
    """A file read as A1111 reads it (weights only); ``ValueError`` naming the reason for anything unusable."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported the same way
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ValueError(f"unreadable ({reason})") from None
    if not isinstance(data, dict):
        raise ValueError("not a hypernetwork file (no dictionary)")
    try:
        layout = read_layout(data)
        network = Hypernetwork(path)
        for width, pair in data.items():
            if type(width) is not int:
                continue
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"width {width}: not a pair of state dicts")
            network.layers[width] = (build_module(width, layout, pair[0]), build_module(width, layout, pair[1]))
    except _READ_ERRORS as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ValueError(f"cannot be built ({reason})") from None
    if not network.layers:
        raise ValueError("not a hypernetwork file (no layers)")
    return network


# --- applying -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Active:
    """A hypernetwork in use for a job, at its tag's multiplier."""

    network: Hypernetwork
    multiplier: float


def apply_hypernetworks(active: Sequence[Active], context: Tensor) -> tuple[Tensor, Tensor]:
    """The key and value contexts: ``context`` through each network's modules for its width, in order (A1111's
    ``apply_hypernetworks``); a network without that width leaves them as they are. The MLPs run in float32."""
    context_k = context_v = context
    for item in active:
        pair = item.network.layers.get(int(context.shape[-1]))
        if pair is None:
            continue
        context_k = pair[0](context_k.float(), item.multiplier).to(context.dtype)
        context_v = pair[1](context_v.float(), item.multiplier).to(context.dtype)
    return context_k, context_v


class HypernetworkAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` with the key and value projections given the hypernetworks' contexts."""

    def __init__(self, active: Sequence[Active]) -> None:
        self.active = list(active)

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args: Any,
                 **kwargs: Any) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        context_k, context_v = apply_hypernetworks(self.active, encoder_hidden_states)
        hidden_states = self._attend(attn, query, attn.to_k(context_k), attn.to_v(context_v), attention_mask)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _attend(attn: Attention, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None) -> Tensor:
        """Multi-head scaled dot-product attention, heads split and merged as ``AttnProcessor2_0`` does."""
        batch_size = query.shape[0]
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
        return out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)


def attention_modules(unet: torch.nn.Module) -> list[Attention]:
    """The UNet's attention layers (self- and cross-attention of every transformer block)."""
    from diffusers.models.attention_processor import Attention

    return [m for m in unet.modules() if isinstance(m, Attention)]


def context_widths(unet: torch.nn.Module) -> set[int]:
    """The widths of the contexts the UNet's key projections read: where a hypernetwork's layers can apply."""
    return {int(m.to_k.in_features) for m in attention_modules(unet) if isinstance(m.to_k, torch.nn.Linear)}


@contextmanager
def processors_installed(unet: torch.nn.Module, active: Sequence[Active]) -> Iterator[None]:
    """Every attention layer of ``unet`` runs the hypernetworks inside the block; each gets its own processor
    object back when it ends, whatever happens in it."""
    modules = attention_modules(unet)
    saved: list[tuple[Attention, object]] = [(m, m.processor) for m in modules]
    processor = HypernetworkAttnProcessor(active)
    try:
        for m in modules:
            _set_processor(m, processor)
        yield
    finally:
        for m, original in saved:
            _set_processor(m, original)


def _set_processor(module: Attention, processor: object) -> None:
    """diffusers annotates ``set_processor`` with its own base class, though any processor callable is accepted."""
    module.set_processor(processor)  # type: ignore[arg-type]


class Hypernetworks:
    """Finds the tagged hypernetworks and runs the UNet's attention through them for the span of a job."""

    def __init__(self, registry: HypernetworkRegistry) -> None:
        self.registry = registry
        self.files: FileVersionCache[Hypernetwork] = FileVersionCache(4)

    def resolve(self, tag: HypernetTag, warn: Warn) -> HypernetworkInfo | None:
        """The file a tag names; the folders are scanned again once before a name counts as missing."""
        info = self.registry.find(tag.name)
        if info is None:
            self.registry.refresh()
            info = self.registry.find(tag.name)
        if info is None:
            warn(f"Hypernetwork not found: {tag.name}")
        return info

    def load(self, parts: ModelParts, tags: Sequence[HypernetTag], warn: Warn) -> list[Active]:
        """The usable networks of ``tags``, in order, on the model's device; each one left out is warned about."""
        widths = context_widths(parts.unet) if tags else set()
        active = []
        for tag in tags:
            if tag.multiplier == 0:
                continue
            info = self.resolve(tag, warn)
            if info is None:
                continue
            try:
                network = self.files.get(info.path, load_hypernetwork)
            except (OSError, ValueError) as exc:
                warn(f"Hypernetwork {info.path.name}: {exc}; generating without it")
                continue
            if not widths & set(network.layers):
                warn(f"Hypernetwork {info.path.name}: none of its widths ({_join(network.layers)}) fit this "
                     f"{parts.family.label} model ({_join(widths)}); generating without it")
                continue
            active.append(Active(network.to(parts.device), tag.multiplier))
        return active

    @contextmanager
    def applied(self, parts: ModelParts, tags: Sequence[HypernetTag], warn: Warn) -> Iterator[list[Active]]:
        """``parts`` with the tagged hypernetworks in its attention layers; its own processors are back when the
        block ends."""
        active = self.load(parts, tags, warn)
        if not active:
            yield active
            return
        with processors_installed(parts.unet, active):
            yield active


def _join(widths: Mapping[int, Any] | set[int]) -> str:
    return ", ".join(str(w) for w in sorted(widths))

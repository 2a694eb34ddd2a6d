"""What a merge will write, worked out from the inputs' key shapes and dtypes before any tensor data is read.

A1111's semantics (``modules/extras.py::run_modelmerger``): only keys containing ``"model"`` are merged, and only
keys of A (keys only in B or C are dropped, keys only in A kept); ``position_ids`` are kept from A; for Add difference a
key of B missing from C contributes nothing; an inpainting (9-channel) or instruct-pix2pix (8-channel) A is merged on
its first 4 input channels with a normal B. Deviations, on purpose: integer tensors are never merged (A1111 would turn
position ids into floats), and "Save as float16" halves every float32 tensor of the result (A1111 skips unmerged keys
for Weighted sum / Add difference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from modules.errors import ModelLoadError, ValidationError
from modules.merge.key_filter import KeyPattern, compile_user_regex
from modules.merge.sources import TensorSource
from modules.models.families import FAMILIES, UNET_IN_KEY, detect_base

METHODS = {"none": "No interpolation", "weighted_sum": "Weighted sum", "add_difference": "Add difference"}
SKIP_ON_MERGE = ("position_ids",)


def method_id(value: str) -> str:
    """``none``/``weighted_sum``/``add_difference`` from an id or A1111's label (any case)."""
    text = str(value or "").strip().lower().replace("-", "_")
    for key, label in METHODS.items():
        if text in (key, label.lower(), key.replace("_", " ")):
            return key
    raise ValidationError(f"unknown interpolation method {value!r}: use one of {', '.join(METHODS.values())}",
                          field="interp_method")


def compile_discard(pattern: str | None) -> KeyPattern | None:
    """The discard-weights pattern (``re.search`` on each key, as in A1111), on RE2 so it runs in linear time."""
    if not pattern:
        return None
    return compile_user_regex(pattern, "discard_weights", "discard weights")


def family_label(source: TensorSource, role: str) -> tuple[str, str]:
    """(base family, readable label) of a source, e.g. ("sd1", "SD 1.x inpainting")."""
    try:
        base = detect_base(source.shapes.keys())
    except ModelLoadError as exc:
        raise ModelLoadError(f"model {role} ({source.path.name}): {exc}") from None
    channels = source.shapes.get(UNET_IN_KEY, (0, 4))[1] if len(source.shapes.get(UNET_IN_KEY, ())) > 1 else 4
    variant = {9: " inpainting", 8: " instruct-pix2pix"}.get(channels, "")
    return base, FAMILIES[base].label + variant


def check_families(sources: dict[str, TensorSource]) -> str:
    """The common base family of A, B, C; refuses a mix, naming both."""
    found = {role: family_label(src, role) for role, src in sources.items()}
    first_role, (first_base, first_label) = next(iter(found.items()))
    for role, (base, label) in found.items():
        if base != first_base:
            raise ValidationError(
                f"cannot merge models of different families: {first_role} ({sources[first_role].path.name}) is "
                f"{first_label}, {role} ({sources[role].path.name}) is {label}", field="secondary_model_name")
    return first_base


@dataclass(frozen=True)
class KeyPlan:
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    op: str  # copy (A as is), merge, merge4 (first 4 input channels of A), vae (from the baked VAE)
    in_b: bool = True
    in_c: bool = False


@dataclass
class Plan:
    method: str
    multiplier: float
    keys: list[KeyPlan] = field(default_factory=list)
    is_inpainting: bool = False
    is_instruct_pix2pix: bool = False
    base: str = ""

    @property
    def total_bytes(self) -> int:
        from modules.merge.safetensors_io import nbytes

        return sum(nbytes(k.shape, k.dtype) for k in self.keys)


def combine(method: str, m: float, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None,
            partial: bool = False, in_c: bool = True) -> torch.Tensor:
    """A1111's arithmetic, operation for operation: ``(1 - M) * A + M * B`` or ``A + M * (B - C)``."""
    if method == "weighted_sum":
        def f(x: torch.Tensor) -> torch.Tensor:
            return ((1 - m) * x) + (m * b)
    else:
        diff = (b - c) if in_c and c is not None else torch.zeros_like(b)

        def f(x: torch.Tensor) -> torch.Tensor:
            return x + (m * diff)
    if not partial:
        return f(a)
    out = a.clone()
    out[:, 0:4, ...] = f(a[:, 0:4, ...])
    return out


class Scratch:
    """Reusable buffers for the temporaries of :func:`combine` (the same operations, without fresh allocations)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = max(1, int(limit_bytes))
        self._buffers: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def get(self, slot: int, like: torch.Tensor) -> torch.Tensor | None:
        size = like.element_size()
        if like.numel() * size > self.limit:
            return None
        buf = self._buffers.get((slot, like.dtype))
        if buf is None:
            buf = self._buffers[(slot, like.dtype)] = torch.empty(self.limit // size, dtype=like.dtype)
        return buf[: like.numel()].view(like.shape)


def combine_fast(method: str, m: float, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, in_c: bool,
                 scratch: Scratch) -> torch.Tensor | None:
    """:func:`combine` for same-dtype, same-shape inputs with temporaries in ``scratch``; None when not applicable.

    Each step is the same torch operation as in :func:`combine` (``mul``, ``sub``, ``add`` with the same scalars),
    so the result is bit for bit the same.
    """
    if a.shape != b.shape or a.dtype != b.dtype or (in_c and (c is None or c.dtype != a.dtype)):
        return None
    s1, s2 = scratch.get(0, a), scratch.get(1, a)
    if s1 is None or s2 is None:
        return None
    if method == "weighted_sum":
        torch.mul(a, 1 - m, out=s1)
        torch.mul(b, m, out=s2)
        return torch.add(s1, s2)
    if in_c and c is not None:
        torch.sub(b, c, out=s2)
    else:
        s2.zero_()
    torch.mul(s2, m, out=s2)
    return torch.add(a, s2)


def to_half(t: torch.Tensor, save_as_half: bool) -> torch.Tensor:
    return t.half() if save_as_half and t.dtype == torch.float32 else t


def result_dtype(a: torch.dtype, b: torch.dtype, c: torch.dtype | None, partial: bool) -> torch.dtype:
    """The dtype :func:`combine` gives (a float tensor times a Python float keeps its dtype; sums promote)."""
    if partial:
        return a  # written into a copy of A
    return torch.promote_types(a, torch.promote_types(b, c) if c is not None else b)


def _shapes_mismatch(key: str, role: str, a: tuple[int, ...], other: tuple[int, ...]) -> ValidationError:
    return ValidationError(f"mismatched shapes for {key}: A has {list(a)}, {role} has {list(other)}",
                           field="secondary_model_name")


def _merge_op(key: str, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[str, str | None]:
    """(op, flag) for a key in A and B: a plain merge, or A's first 4 channels for inpainting/pix2pix."""
    if a == b:
        return "merge", None
    if len(a) >= 2 and len(a) == len(b) and a[0:1] + a[2:] == b[0:1] + b[2:]:
        if a[1] == 4 and b[1] == 9:
            raise ValidationError("When merging inpainting model with a normal one, A must be the inpainting model.",
                                  field="primary_model_name")
        if a[1] == 4 and b[1] == 8:
            raise ValidationError("When merging instruct-pix2pix model with a normal one, A must be the "
                                  "instruct-pix2pix model.", field="primary_model_name")
        if a[1] == 8 and b[1] == 4:
            return "merge4", "instruct-pix2pix"
        if a[1] == 9 and b[1] == 4:
            return "merge4", "inpainting"
    raise _shapes_mismatch(key, "B", a, b)


def _c_dtype(key: str, b: TensorSource, c: TensorSource) -> torch.dtype | None:
    """C's dtype for ``key`` when add_difference subtracts it (C has it, as floats), else None."""
    if key not in c.shapes:
        return None
    if c.shapes[key] != b.shapes[key]:
        raise ValidationError(f"mismatched shapes for {key}: B has {list(b.shapes[key])}, C has "
                              f"{list(c.shapes[key])}", field="tertiary_model_name")
    return c.dtypes[key] if c.dtypes[key].is_floating_point else None


def build_plan(method: str, multiplier: float, a: TensorSource, b: TensorSource | None, c: TensorSource | None,
               vae: TensorSource | None = None, save_as_half: bool = False,
               discard: KeyPattern | None = None) -> Plan:
    """Every output key with its shape, dtype and how it is made; raises on any mismatch before data is read."""
    sources = {"A": a, **({"B": b} if b is not None else {}), **({"C": c} if c is not None else {})}
    plan = Plan(method, float(multiplier), base=check_families(sources))
    for key, shape in a.shapes.items():
        if discard is not None and discard.search(key):
            continue
        a_dtype = a.dtypes[key]
        entry = KeyPlan(key, shape, a_dtype, "copy")
        if vae is not None and key in vae.shapes:
            vae_shape = vae.shapes[key]
            if vae_shape != shape and torch.Size(vae_shape).numel() != torch.Size(shape).numel():
                raise ValidationError(f"the VAE does not fit this model: {key} is {list(vae_shape)} in the VAE and "
                                      f"{list(shape)} in A", field="bake_in_vae")
            entry = KeyPlan(key, shape, vae.dtypes[key], "vae")
        elif (b is not None and method != "none" and "model" in key and key in b.shapes
              and not key.endswith(SKIP_ON_MERGE) and a_dtype.is_floating_point and b.dtypes[key].is_floating_point):
            op, flag = _merge_op(key, shape, b.shapes[key])
            c_dtype = _c_dtype(key, b, c) if method == "add_difference" and c is not None else None
            entry = KeyPlan(key, shape, result_dtype(a_dtype, b.dtypes[key], c_dtype, op == "merge4"), op, True,
                            c_dtype is not None)
            if flag == "inpainting":
                plan.is_inpainting = True
            elif flag == "instruct-pix2pix":
                plan.is_instruct_pix2pix = True
        dtype = torch.float16 if save_as_half and entry.dtype == torch.float32 else entry.dtype
        plan.keys.append(KeyPlan(entry.key, entry.shape, dtype, entry.op, entry.in_b, entry.in_c))
    if not plan.keys:
        raise ValidationError("nothing left to write: the discard pattern matches every weight",
                              field="discard_weights")
    return plan


def compute(plan: Plan, entry: KeyPlan, read: Callable[[str, str], torch.Tensor], save_as_half: bool,
            scratch: Scratch | None = None) -> torch.Tensor:
    """One output tensor (or the rows ``read`` gives) from the inputs' tensors, ``read(role, key)``."""
    if entry.op == "vae":
        out = read("VAE", entry.key)
        if tuple(out.shape) != entry.shape and out.numel() == torch.Size(entry.shape).numel():
            out = out.reshape(entry.shape)  # read whole: e.g. 2-D attention weights of a 4-D layout
    elif entry.op == "copy":
        out = read("A", entry.key)
    else:
        a, b = read("A", entry.key), read("B", entry.key)
        c = read("C", entry.key) if entry.in_c else None
        fast = None
        if scratch is not None and entry.op == "merge":
            fast = combine_fast(plan.method, plan.multiplier, a, b, c, entry.in_c, scratch)
        out = fast if fast is not None else combine(plan.method, plan.multiplier, a, b, c, entry.op == "merge4",
                                                    entry.in_c)
    return to_half(out, save_as_half)

"""The weight change each kind of network module makes to one layer, as A1111's Lora extension computes it.

- LoRA / LoCon (Hu et al. 2021): ``up @ down`` (a CP core ``lora_mid`` between them for LyCORIS' Tucker form);
- LoHa (Hyeon-Woo et al. 2022, FedPara): ``(w1a @ w1b) * (w2a @ w2b)``, the Hadamard product of two low-rank terms;
- LoKr (LyCORIS): ``kron(w1, w2)``, each factor full or low-rank;
- (IA)³ (Liu et al. 2022): the layer's weight scaled per output (or input) channel;
- full / diff: the change itself; norm: changes to a norm layer's weight and bias;
- OFT (Qiu et al. 2023): the weight's row blocks rotated by orthogonal matrices (Cayley transform).

Each is scaled by ``alpha / rank`` where the file gives an alpha (1 otherwise) and by the tag's multiplier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


class UnsupportedModule(ValueError):
    """A module type (or a variant of one) this product cannot apply; the message names it."""


@dataclass
class Delta:
    weight: Tensor | None  # added to the layer's weight (its shape)
    bias: Tensor | None = None  # added to the layer's bias


def module_kind(w: dict[str, Tensor]) -> str:
    """The LyCORIS/kohya type of one module's tensors."""
    if "lora_up.weight" in w and "lora_down.weight" in w:
        return "LoRA"
    if "hada_w1_a" in w:
        return "LoHa"
    if any(k.startswith("lokr_w1") for k in w):
        return "LoKr"
    if "oft_blocks" in w or "oft_diag" in w:
        return "OFT"
    if "a1.weight" in w:
        return "GLoRA"
    if "diff" in w or "diff_b" in w:
        return "full"
    if "w_norm" in w or "b_norm" in w:
        return "norm"
    if "weight" in w:
        return "IA3"
    if "bias_indices" in w:
        return "bias"
    return "unknown"


def _f(t: Tensor, device: torch.device) -> Tensor:
    return t.to(device=device, dtype=torch.float32)


def _scale(w: dict[str, Tensor], dim: int | None) -> float:
    alpha = w.get("alpha")
    if alpha is None or not dim:
        return 1.0
    return float(alpha) / dim


def _lora(w: dict[str, Tensor], weight: Tensor, dyn_dim: int | None) -> Tensor:
    dev = weight.device
    up, down = _f(w["lora_up.weight"], dev), _f(w["lora_down.weight"], dev)
    rank = down.shape[0]
    if dyn_dim is not None and 0 < dyn_dim < rank:  # A1111's dynamic rank: the first dyn_dim components only
        up, down = up[:, :dyn_dim], down[:dyn_dim]
    mid = w.get("lora_mid.weight")
    if mid is not None:  # Tucker/CP form (LoCon with a core): up and down are 1x1, the core carries the kernel
        delta = torch.einsum("nmkl,in,mj->ijkl", _f(mid, dev), up.flatten(1), down.flatten(1))
    else:
        delta = up.flatten(1) @ down.flatten(1)
        if weight.dim() == 4 and down.dim() == 4:
            delta = delta.reshape(up.shape[0], *down.shape[1:])
    return delta * _scale(w, rank)


def _low_rank(w: dict[str, Tensor], a: str, b: str, t: str, dev: torch.device) -> Tensor:
    wa, wb = _f(w[a], dev), _f(w[b], dev)
    if t in w:
        return torch.einsum("ijkl,jr,ip->prkl", _f(w[t], dev), wb, wa)
    return wa @ wb


def _loha(w: dict[str, Tensor], weight: Tensor) -> Tensor:
    dev = weight.device
    delta = _low_rank(w, "hada_w1_a", "hada_w1_b", "hada_t1", dev) * \
        _low_rank(w, "hada_w2_a", "hada_w2_b", "hada_t2", dev)
    return delta * _scale(w, w["hada_w1_b"].shape[0])


def _lokr(w: dict[str, Tensor], weight: Tensor) -> Tensor:
    dev = weight.device
    dim = None
    if "lokr_w1" in w:
        w1 = _f(w["lokr_w1"], dev)
    else:
        w1 = _f(w["lokr_w1_a"], dev) @ _f(w["lokr_w1_b"], dev)
        dim = w["lokr_w1_b"].shape[0]
    if "lokr_w2" in w:
        w2 = _f(w["lokr_w2"], dev)
    else:
        w2 = _low_rank(w, "lokr_w2_a", "lokr_w2_b", "lokr_t2", dev)
        dim = w["lokr_w2_b"].shape[0]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2) * _scale(w, dim)


def _ia3(w: dict[str, Tensor], weight: Tensor) -> Tensor:
    scale = _f(w["weight"], weight.device)
    on_input = bool(w["on_input"].item()) if "on_input" in w else False
    original = weight.float()
    if on_input:
        return original * scale.reshape(1, -1, *([1] * (weight.dim() - 2)))
    return original * scale.reshape(-1, *([1] * (weight.dim() - 1)))


def _oft(w: dict[str, Tensor], weight: Tensor) -> Tensor:
    dev = weight.device
    out_dim = weight.shape[0]
    if "oft_diag" in w:  # LyCORIS: the blocks are the rotations themselves
        rotation = _f(w["oft_diag"], dev)
    else:  # kohya: skew-symmetric generators, norm-constrained by alpha, through the Cayley transform
        blocks = _f(w["oft_blocks"], dev)
        if blocks.dim() != 3:
            raise UnsupportedModule("BOFT (butterfly OFT)")
        q = blocks - blocks.transpose(-1, -2)
        alpha = w.get("alpha")
        constraint = (float(alpha) if alpha is not None else 0.0) * out_dim
        if constraint != 0:
            norm = torch.norm(q.flatten())
            q = q * ((torch.clamp(norm, max=constraint) + 1e-8) / (norm + 1e-8))
        eye = torch.eye(q.shape[-1], device=dev)
        rotation = torch.matmul(eye + q, torch.linalg.inv(eye - q))
    if rotation.dim() != 3:
        raise UnsupportedModule("BOFT (butterfly OFT)")
    num_blocks, block_size = rotation.shape[0], rotation.shape[1]
    if num_blocks * block_size != out_dim:
        raise ValueError(f"OFT blocks {tuple(rotation.shape)} do not fit {out_dim} output channels")
    original = weight.float()
    rows = original.reshape(num_blocks, block_size, *original.shape[1:])
    rotated = torch.einsum("knm,kn...->km...", rotation, rows).reshape(original.shape)
    if "rescale" in w:
        rotated = _f(w["rescale"], dev).reshape(-1, *([1] * (weight.dim() - 1))) * rotated
    return rotated - original


def compute_delta(w: dict[str, Tensor], weight: Tensor, has_bias: bool, dyn_dim: int | None = None) -> Delta:
    """The change of one layer (``weight`` its current weight) for one module's tensors ``w``, before the
    multiplier. Raises :class:`UnsupportedModule` for a type not applied here, ``ValueError`` when the tensors do not
    fit the layer (a network made for another model)."""
    kind = module_kind(w)
    if "dora_scale" in w:
        raise UnsupportedModule(f"{kind} with DoRA weight decomposition")
    bias = None
    if kind == "LoRA":
        delta: Tensor | None = _lora(w, weight, dyn_dim)
    elif kind == "LoHa":
        delta = _loha(w, weight)
    elif kind == "LoKr":
        delta = _lokr(w, weight)
    elif kind == "IA3":
        delta = _ia3(w, weight)
    elif kind == "OFT":
        delta = _oft(w, weight)
    elif kind in ("full", "norm"):
        d, b = ("diff", "diff_b") if kind == "full" else ("w_norm", "b_norm")
        delta = _f(w[d], weight.device) * _scale(w, None) if d in w else None
        bias = _f(w[b], weight.device) if b in w else None
    else:
        raise UnsupportedModule(kind)
    if delta is not None:
        if delta.numel() != weight.numel():
            raise ValueError(f"a {kind} change of shape {tuple(delta.shape)} does not fit a layer of shape "
                             f"{tuple(weight.shape)}")
        delta = delta.reshape(weight.shape)
    if bias is not None and not has_bias:
        raise ValueError(f"a {kind} bias change for a layer without a bias")
    return Delta(delta, bias)

"""Token merging (ToMe for Stable Diffusion, Bolya & Hoffman 2023): A1111's "Token merging ratio" settings.

Inside :func:`token_merging` the self-attention (``attn1``) of each transformer block of the UNet whose spatial
downsampling is at most ``max_downsample`` (by default only the full-resolution blocks) runs on fewer tokens:

* the block's image tokens (its input, the metric tomesd uses) are split into destinations, one per ``sx`` x ``sy``
  cell of the token grid (its top-left token, or a random one with ``use_rand``), and sources (all the others);
* bipartite soft matching: each source is paired with its most similar destination (cosine similarity), and the
  ``r = int(N * ratio)`` sources with the best matches (at most all of them) are averaged into their destinations;
* attention runs on the ``N - r`` remaining tokens, whatever processor the layer has (SDPA, xformers, hypernetworks);
* its output is unmerged before the block's residual add: each merged source gets its destination's output.

Cross-attention and the feed-forward layers are left alone (tomesd's defaults, which A1111 uses). The block's
token grid is told by the token count: the latent's height and width (read by a forward pre-hook on the UNet)
divided by 1, 2, 4... (rounded up, as the UNet's stride-2 convolutions do).

Nothing of diffusers is subclassed or replaced: the hooks are PyTorch forward hooks on the UNet, the transformer
blocks and their ``attn1`` modules, all removed when the outermost block ends (also on an exception); the attention
processors are never touched. A ratio of 0 installs nothing. Nested blocks stack: the innermost settings apply (a
ratio of 0 inside turns merging off) until it ends. Tokens are chosen deterministically; random destinations come
from a ``torch.Generator`` (seeded with 0 unless one is given), never from the global RNG; the merge sums with
``index_put_(accumulate=True)`` (sort-based on CUDA) rather than scatter atomics. Similarities and sums are computed
in float32 (tomesd: the model's dtype); otherwise the result is tomesd's to float rounding.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

Tensor = torch.Tensor

# Entries of one similarity chunk (sources x destinations x batch): bounds the memory of the matching.
_CHUNK = 1 << 24


@dataclass(frozen=True)
class ToMeSettings:
    """What one :func:`token_merging` block asks for (the defaults are what A1111 passes to ``tomesd.apply_patch``)."""

    ratio: float
    sx: int = 2
    sy: int = 2
    use_rand: bool = False
    max_downsample: int = 1
    generator: torch.Generator | None = None


class TokenMerge:
    """One bipartite soft matching of a (B, N, C) token batch: :meth:`merge` to ``N - r`` tokens and :meth:`unmerge`
    back to ``N``.

    The reduced sequence is the unmerged sources (``keep``) followed by the destinations (``dst``), each averaged
    with the sources merged into it.
    """

    def __init__(self, keep: Tensor, moved: Tensor, into: Tensor, dst: Tensor, read: Tensor, counts: Tensor) -> None:
        self.keep = keep  # (B, Nk) positions of the sources left alone
        self.moved = moved  # (B, r) positions of the merged sources
        self.into = into  # (B, r) index into ``dst`` of the destination each merged source joins
        self.dst = dst  # (Nd,) positions of the destinations
        self.read = read  # (B, N) row of the reduced sequence each position takes its output from
        self.counts = counts  # (B, Nd, 1) tokens averaged into each destination (itself included)

    @property
    def removed(self) -> int:
        return int(self.moved.shape[1])

    def merge(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        kept = x.gather(1, self.keep.unsqueeze(-1).expand(-1, -1, c))
        moved = x.gather(1, self.moved.unsqueeze(-1).expand(-1, -1, c)).float()
        dst = x[:, self.dst].float()
        rows = torch.arange(b, device=x.device).unsqueeze(1).expand_as(self.into)
        dst.index_put_((rows, self.into), moved, accumulate=True)
        return torch.cat([kept, (dst / self.counts).to(x.dtype)], dim=1)

    def unmerge(self, y: Tensor) -> Tensor:
        return y.gather(1, self.read.unsqueeze(-1).expand(-1, -1, y.shape[-1]))


def destinations(h: int, w: int, sx: int, sy: int, device: torch.device,
                 generator: torch.Generator | None = None) -> Tensor:
    """Token positions (row-major in an ``h`` x ``w`` grid) of the destinations: one per whole ``sx`` x ``sy`` cell,
    its top-left token, or a random one drawn from ``generator``. Tokens in the partial cells at the right and bottom
    edges are all sources."""
    hs, ws = h // sy, w // sx
    if generator is None:
        pick = torch.zeros(hs, ws, dtype=torch.long, device=device)
    else:
        pick = torch.randint(sx * sy, (hs, ws), generator=generator, device=generator.device).to(device)
    rows = torch.arange(hs, device=device).unsqueeze(1) * sy + pick // sx
    cols = torch.arange(ws, device=device).unsqueeze(0) * sx + pick % sx
    return (rows * w + cols).flatten()


def bipartite_soft_matching(metric: Tensor, h: int, w: int, sx: int, sy: int, r: int,
                            generator: torch.Generator | None = None) -> TokenMerge | None:
    """The matching that merges the ``r`` sources of ``metric`` (B, N, C; N = h * w) most similar to a destination,
    or None when nothing can be merged."""
    b, n, _ = metric.shape
    device = metric.device
    if n != h * w or h // sy == 0 or w // sx == 0:
        return None
    is_dst = torch.zeros(n, dtype=torch.bool, device=device)
    is_dst[destinations(h, w, sx, sy, device, generator)] = True
    order = torch.argsort((~is_dst).to(torch.uint8), stable=True)  # destinations, then sources, each in order
    nd = (h // sy) * (w // sx)
    dst, src = order[:nd], order[nd:]
    r = min(r, n - nd)
    if r <= 0:
        return None
    with torch.no_grad():
        unit = F.normalize(metric.float(), dim=-1)
        a, bb = unit[:, src], unit[:, dst].transpose(1, 2)
        best: list[Tensor] = []
        partner: list[Tensor] = []
        step = max(1, _CHUNK // max(1, b * nd))
        for start in range(0, n - nd, step):
            score, idx = (a[:, start:start + step] @ bb).max(dim=-1)
            best.append(score)
            partner.append(idx)
        score = torch.cat(best, dim=1)
        pair = torch.cat(partner, dim=1)
        ranked = torch.argsort(score, dim=-1, descending=True, stable=True)  # (B, Ns) into ``src``
        merged, kept = ranked[:, :r], ranked[:, r:]
        into = pair.gather(1, merged)
        moved, keep = src[merged], src[kept]
        nk = n - nd - r
        read = torch.empty(b, n, dtype=torch.long, device=device)
        read[:, dst] = torch.arange(nk, nk + nd, device=device)
        read.scatter_(1, keep, torch.arange(nk, device=device).expand(b, nk))
        read.scatter_(1, moved, into + nk)
        counts = torch.ones(b, nd, device=device).scatter_add_(1, into, torch.ones(b, r, device=device))
    return TokenMerge(keep, moved, into, dst, read, counts.unsqueeze(-1))


def block_grid(height: int, width: int, tokens: int, max_downsample: int) -> tuple[int, int] | None:
    """The token grid (h, w) of a block that sees ``tokens`` tokens of a ``height`` x ``width`` latent, if its
    downsampling (1, 2, 4...) is at most ``max_downsample``; otherwise None."""
    d = 1
    while d <= max_downsample:
        h, w = -(-height // d), -(-width // d)
        if h * w == tokens:
            return h, w
        if h * w < tokens:
            return None
        d *= 2
    return None


@dataclass
class _Slot:
    """One transformer block's state between its pre-hook, its ``attn1`` pre-hook and its ``attn1`` hook."""

    metric: Tensor | None = None
    merge: TokenMerge | None = None


@dataclass
class _Patch:
    """The hooks on one UNet and the stack of settings of the blocks open on it."""

    stack: list[ToMeSettings] = field(default_factory=list)
    handles: list[RemovableHandle] = field(default_factory=list)
    size: tuple[int, int] | None = None
    calls: int = 0  # attention calls run on merged tokens, for tests and logs
    tokens: tuple[int, int] = (0, 0)  # (before, after) of the last merged call

    def plan(self, metric: Tensor) -> TokenMerge | None:
        if not self.stack or self.size is None:
            return None
        s = self.stack[-1]
        if s.ratio <= 0 or metric.ndim != 3:
            return None
        grid = block_grid(self.size[0], self.size[1], metric.shape[1], s.max_downsample)
        if grid is None:
            return None
        # an odd batch cannot hold both halves of a cond/uncond pair: tomesd turns the random choice off there
        gen = s.generator if s.use_rand and metric.shape[0] % 2 == 0 else None
        return bipartite_soft_matching(metric, grid[0], grid[1], s.sx, s.sy, int(metric.shape[1] * s.ratio), gen)


_PATCHES: weakref.WeakKeyDictionary[torch.nn.Module, _Patch] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _first(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Any:
    return args[0] if args else kwargs.get(name)


def _install(unet: torch.nn.Module, patch: _Patch) -> None:
    from diffusers.models.attention import BasicTransformerBlock

    def unet_pre(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = _first(args, kwargs, "sample")
        if isinstance(sample, Tensor) and sample.ndim == 4:
            patch.size = (int(sample.shape[2]), int(sample.shape[3]))

    patch.handles.append(unet.register_forward_pre_hook(unet_pre, with_kwargs=True))
    for block in unet.modules():
        attn = getattr(block, "attn1", None)
        if isinstance(block, BasicTransformerBlock) and isinstance(attn, torch.nn.Module):
            _hook_block(block, attn, patch)


def _hook_block(block: torch.nn.Module, attn: torch.nn.Module, patch: _Patch) -> None:
    slot = _Slot()

    def block_pre(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = _first(args, kwargs, "hidden_states")
        slot.metric = x if isinstance(x, Tensor) else None
        slot.merge = None

    def attn_pre(module: torch.nn.Module, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        metric, slot.metric, slot.merge = slot.metric, None, None
        x = _first(args, kwargs, "hidden_states")
        self_attention = kwargs.get("encoder_hidden_states") is None and len(args) < 2
        if not isinstance(x, Tensor) or not self_attention or kwargs.get("attention_mask") is not None:
            return None
        if metric is None or metric.shape != x.shape:
            metric = x
        m = patch.plan(metric)
        if m is None:
            return None
        slot.merge = m
        patch.calls += 1
        patch.tokens = (int(x.shape[1]), int(x.shape[1]) - m.removed)
        merged = m.merge(x)
        if args:
            return (merged, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": merged}

    def attn_post(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        m, slot.merge = slot.merge, None
        if m is None or not isinstance(out, Tensor):
            return None
        return m.unmerge(out)

    patch.handles += [block.register_forward_pre_hook(block_pre, with_kwargs=True),
                      attn.register_forward_pre_hook(attn_pre, with_kwargs=True),
                      attn.register_forward_hook(attn_post, with_kwargs=True)]


def active(unet: torch.nn.Module) -> ToMeSettings | None:
    """The settings merging tokens in ``unet`` now (None outside :func:`token_merging` or at ratio 0)."""
    patch = _PATCHES.get(unet)
    if patch is None or not patch.stack or patch.stack[-1].ratio <= 0:
        return None
    return patch.stack[-1]


def stats(unet: torch.nn.Module) -> tuple[int, tuple[int, int]]:
    """Attention calls run on merged tokens inside the open block, and the (before, after) token counts of the last."""
    patch = _PATCHES.get(unet)
    return (0, (0, 0)) if patch is None else (patch.calls, patch.tokens)


@contextlib.contextmanager
def token_merging(unet: torch.nn.Module, ratio: float, *, sx: int = 2, sy: int = 2, use_rand: bool = False,
                  max_downsample: int = 1, generator: torch.Generator | None = None) -> Iterator[None]:
    """Run ``unet``'s full-resolution self-attention on merged tokens for the block (``ratio`` 0 = off).

    The defaults are A1111's call ``tomesd.apply_patch(model, ratio=..., use_rand=False, merge_attn=True,
    merge_crossattn=False, merge_mlp=False)`` with tomesd's own ``sx=2, sy=2, max_downsample=1``. ``ratio`` above
    ``1 - 1 / (sx * sy)`` merges every source (0.75 by default).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"token merging ratio must be in [0, 1), not {ratio}")
    if sx < 1 or sy < 1 or max_downsample < 1:
        raise ValueError("sx, sy and max_downsample must be at least 1")
    if use_rand and generator is None:
        generator = torch.Generator().manual_seed(0)
    with _LOCK:
        patch = _PATCHES.get(unet)
        if patch is None and ratio == 0:
            patch = None  # nothing open on this UNet: nothing to install or to turn off
        elif patch is None:
            patch = _Patch()
            _PATCHES[unet] = patch
            try:
                _install(unet, patch)
            except BaseException:
                _remove(unet, patch)
                raise
        if patch is not None:
            patch.stack.append(ToMeSettings(ratio, sx, sy, use_rand, max_downsample, generator))
    if patch is None:
        yield
        return
    try:
        yield
    finally:
        with _LOCK:
            patch.stack.pop()
            if not patch.stack:
                _remove(unet, patch)


def _remove(unet: torch.nn.Module, patch: _Patch) -> None:
    for handle in patch.handles:
        handle.remove()
    patch.handles.clear()
    if _PATCHES.get(unet) is patch:
        del _PATCHES[unet]


def pass_ratio(ratio: float, ratio_hr: float = 0.0, ratio_img2img: float = 0.0, *, hires: bool = False,
               img2img: bool = False, ratio_overridden: bool = False) -> float:
    """A1111's ratio for a pass from the settings ``token_merging_ratio``, ``token_merging_ratio_hr`` and
    ``token_merging_ratio_img2img``: the hires pass uses its own when non-zero, img2img its own when non-zero unless
    the request overrides ``token_merging_ratio`` (e.g. pasted from an infotext)."""
    if img2img:
        return (ratio if ratio_overridden else 0.0) or ratio_img2img or ratio
    if hires:
        return ratio_hr or ratio
    return ratio

"""Tiled VAE decode and encode that give the pixels of a whole pass: group norms use the whole image's statistics.

diffusers' own tiling (``AutoencoderKL.tiled_decode``) runs each tile through the whole decoder on its own, so every
``GroupNorm`` normalises a tile with that tile's mean and variance: on a trained VAE a tile of other colours than the
rest of the image comes out shifted (about 24 grey levels on the demo VAE), and the seams are blended over.

Here the decoder (or encoder) runs *layer by layer* over all tiles, as the "Tiled VAE" of the multidiffusion-upscaler
extension for A1111 does, but with exact halos instead of approximate padded tiles:

* The latent is cut into a grid of non-overlapping *cores* (``tile`` latent pixels a side, the VAE's
  ``sample_size`` / 8 unless told). Each layer's output is a whole map (the *store*), held on the CPU when the VAE is
  on an accelerator and the maps would not fit comfortably beside it, else on the VAE's device.
* A *sweep* runs one short chain of layers (at most one convolution wide) over every tile in turn: it cuts the
  tile's core plus a halo (the convolution's reach; wrapped around the image when the convolutions are circular, as
  in seamless "Tiling") out of the previous layer's whole map, moves that window to the VAE's device, runs the chain,
  crops the core and writes it into the next whole map. The halo is read from the neighbours' finished values, so
  every core is computed from exactly the inputs a whole pass would use.
* Each sweep also accumulates per-channel counts, means and sums of squared deviations over the cores it writes
  (merged across tiles with Chan's parallel formula, in float64), which is the whole map's statistics. The next
  ``GroupNorm`` normalises every tile with those (merged into its groups) and its affine weight and bias.
* The mid block's self-attention attends across the whole image. It runs whole, at the latent resolution where it is
  cheap (the map is 64 times smaller in pixels than the image); when the map is long, its queries go in chunks so
  the score matrix stays bounded. Being whole, its own group norm is whole too.

So a tiled pass equals a whole one up to float rounding (well under a grey level), not approximately.

Memory: on the VAE's device, one tile's window through one short chain of layers (a few times ``(tile * 8 + 2)^2 x
channels``), plus the latent-resolution attention. The stores hold at most three maps at the widest level (the
layer's input, a resnet's middle and its output; a resnet whose channels do not change writes its output over its
input): on an accelerator they live on the CPU when they would not fit comfortably, so device memory does not grow
with the image beyond the attention's latent-sized tensors. On a CPU-only machine the stores are in the same RAM: a
tiled pass then peaks at roughly 40 to 75% of a whole one (measured: the tiny test VAE at 1024 px, 0.39; SD's VAE
layout at 384 px, 0.73), where diffusers' tiles need only a tile's worth but give other pixels.

Only the layer types of diffusers' ``AutoencoderKL`` (SD 1/2, SDXL, SD3, Flux VAEs) are understood; ``supports``
says whether a VAE is one of them (other layouts are left to diffusers' tiling by the caller).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

Tensor = torch.Tensor
Box = tuple[int, int, int, int]  # y0, y1, x0, x1 in latent pixels
Layer = Callable[[Tensor], Tensor]

_ATTENTION_BYTES = 1 << 28  # the attention's score matrix per chunk of queries (float32), at most
_STORE_SHARE = 0.3  # the stores stay on an accelerator when they need at most this share of its free memory


# --- which VAEs -----------------------------------------------------------------------------------------------------

def _plain_conv(conv: Any, kernel: int) -> bool:
    """A ``kernel`` x ``kernel`` convolution, stride 1, padded to keep the size (what a halo of ``kernel // 2``
    covers)."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (kernel, kernel)
            and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1)
            and conv.padding == (kernel // 2, kernel // 2))


def _resnet_ok(resnet: Any) -> bool:
    from diffusers.models.resnet import ResnetBlock2D

    return (isinstance(resnet, ResnetBlock2D) and resnet.upsample is None and resnet.downsample is None
            and resnet.time_emb_proj is None and resnet.time_embedding_norm in ("default", "group")
            and isinstance(resnet.norm1, nn.GroupNorm) and isinstance(resnet.norm2, nn.GroupNorm)
            and _plain_conv(resnet.conv1, 3) and _plain_conv(resnet.conv2, 3)
            and (resnet.conv_shortcut is None or _plain_conv(resnet.conv_shortcut, 1)))


def _attention_ok(attn: Any) -> bool:
    from diffusers.models.attention_processor import Attention

    return attn is None or (
        isinstance(attn, Attention) and attn.spatial_norm is None and isinstance(attn.group_norm, nn.GroupNorm)
        and attn.norm_q is None and attn.norm_k is None and not attn.is_cross_attention
        and not getattr(attn, "only_cross_attention", False))


def _mid_ok(mid: Any) -> bool:
    from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D

    return (isinstance(mid, UNetMidBlock2D) and all(_resnet_ok(r) for r in mid.resnets)
            and all(_attention_ok(a) for a in mid.attentions))


def _upsampler_conv(up: Any) -> Any:
    return up.conv if up.name == "conv" else up.Conv2d_0


def _upsample_ok(up: Any) -> bool:
    from diffusers.models.upsampling import Upsample2D

    return (isinstance(up, Upsample2D) and up.norm is None and not up.use_conv_transpose and up.interpolate
            and up.use_conv and _plain_conv(_upsampler_conv(up), 3))


def _downsample_ok(down: Any) -> bool:
    from diffusers.models.downsampling import Downsample2D

    conv = down.conv if isinstance(down, Downsample2D) else None
    return (isinstance(down, Downsample2D) and down.norm is None and down.use_conv and down.padding in (0, 1)
            and isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (2, 2)
            and tuple(conv.dilation) == (1, 1) and conv.padding == (down.padding, down.padding))


def supports(vae: AutoencoderKL, part: str = "decoder") -> bool:
    """Whether ``tiled_decode`` (``part`` "decoder") or ``tiled_encode`` ("encoder") understands this VAE's layers."""
    from diffusers.models.autoencoders.vae import Decoder, Encoder
    from diffusers.models.unets.unet_2d_blocks import DownEncoderBlock2D, UpDecoderBlock2D

    if part == "decoder":
        dec = getattr(vae, "decoder", None)
        return (isinstance(dec, Decoder) and _plain_conv(dec.conv_in, 3) and _mid_ok(dec.mid_block)
                and all(isinstance(b, UpDecoderBlock2D) and all(_resnet_ok(r) for r in b.resnets)
                        and all(_upsample_ok(u) for u in (b.upsamplers or [])) for b in dec.up_blocks)
                and isinstance(dec.conv_norm_out, nn.GroupNorm) and _plain_conv(dec.conv_out, 3)
                and (getattr(vae, "post_quant_conv", None) is None or _plain_conv(vae.post_quant_conv, 1)))
    enc = getattr(vae, "encoder", None)
    return (isinstance(enc, Encoder) and _plain_conv(enc.conv_in, 3) and _mid_ok(enc.mid_block)
            and all(isinstance(b, DownEncoderBlock2D) and all(_resnet_ok(r) for r in b.resnets)
                    and all(_downsample_ok(d) for d in (b.downsamplers or [])) for b in enc.down_blocks)
            and isinstance(enc.conv_norm_out, nn.GroupNorm) and _plain_conv(enc.conv_out, 3)
            and (getattr(vae, "quant_conv", None) is None or _plain_conv(vae.quant_conv, 1)))


def downscale(vae: AutoencoderKL) -> int:
    """Image pixels per latent pixel (8 for the SD VAEs)."""
    return int(2 ** (len(vae.config["block_out_channels"]) - 1))


# the smallest default tile side in latent pixels (512 image pixels): each tile costs a pass of Python work per
# layer, so a VAE trained on small images (the demo model's 128) would otherwise run hundreds of tiles
MIN_TILE = 64


def tile_size(vae: AutoencoderKL) -> int:
    """The default tile side in latent pixels: the VAE's ``sample_size`` in latent pixels, at least
    :data:`MIN_TILE`."""
    return max(1, MIN_TILE, int(vae.config.get("sample_size") or 512) // downscale(vae))


# --- statistics -----------------------------------------------------------------------------------------------------

class _Stats:
    """Per-(image, channel) count, mean and sum of squared deviations of a map, merged core by core."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        b, c = x.shape[:2]
        var, mean = torch.var_mean(x.reshape(b, c, -1).float(), dim=-1, correction=0)
        n = x[0, 0].numel()
        mean, m2 = mean.cpu().double(), var.cpu().double() * n
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def normaliser(self, norm: nn.GroupNorm, device: torch.device) -> Layer:
        """``norm`` applied with these statistics (merged into its groups) instead of its input's own."""
        if self.mean is None or self.m2 is None:
            raise ValueError("no statistics gathered")
        b, c = self.mean.shape
        per = c // norm.num_groups
        means = self.mean.reshape(b, norm.num_groups, per)
        group_mean = means.mean(-1, keepdim=True)  # every channel has the same count
        group_m2 = self.m2.reshape(b, norm.num_groups, per).sum(-1, keepdim=True) + (
            self.count * ((means - group_mean) ** 2).sum(-1, keepdim=True))
        rstd = (group_m2 / (self.count * per) + norm.eps).rsqrt()
        scale = rstd.expand(b, norm.num_groups, per).reshape(b, c)
        shift = -group_mean.expand(b, norm.num_groups, per).reshape(b, c)
        bias = torch.zeros(b, c, dtype=torch.float64)
        if norm.affine:
            scale = scale * norm.weight.detach().double().cpu()
            bias = bias + norm.bias.detach().double().cpu()
        shift_t, scale_t, bias_t = (t.float().to(device)[:, :, None, None] for t in (shift, scale, bias))

        def apply(x: Tensor) -> Tensor:
            y = x.to(torch.float32, copy=True)
            return y.add_(shift_t).mul_(scale_t).add_(bias_t).to(x.dtype)

        return apply


# --- the sweeps -----------------------------------------------------------------------------------------------------

def _cores(height: int, width: int, tile: int) -> list[Box]:
    def cuts(n: int) -> list[tuple[int, int]]:
        k = max(1, math.ceil(n / tile))
        return [(n * i // k, n * (i + 1) // k) for i in range(k)]

    return [(y0, y1, x0, x1) for y0, y1 in cuts(height) for x0, x1 in cuts(width)]


def _reach(conv: nn.Conv2d) -> tuple[int, bool]:
    """The halo a stride-1 convolution needs, and whether it wraps around the image (circular padding)."""
    pad = int(conv.padding[0])
    return pad, pad > 0 and conv.padding_mode == "circular"


def _window(src: Tensor, y0: int, y1: int, x0: int, x1: int, halo: int, wrap: bool) -> tuple[Tensor, int, int]:
    """``src[..., y0:y1, x0:x1]`` with ``halo`` more on every side (cut at the image's edges, or wrapped around
    them), and where the window starts."""
    height, width = src.shape[-2:]
    a0, a1, b0, b1 = y0 - halo, y1 + halo, x0 - halo, x1 + halo
    if not wrap:
        a0, a1, b0, b1 = max(0, a0), min(height, a1), max(0, b0), min(width, b1)
    if a0 >= 0 and a1 <= height and b0 >= 0 and b1 <= width:
        return src[:, :, a0:a1, b0:b1], a0, b0
    rows = torch.arange(a0, a1, device=src.device) % height
    cols = torch.arange(b0, b1, device=src.device) % width
    return src.index_select(2, rows).index_select(3, cols), a0, b0


class _Pass:
    """One tiled pass: the latent's grid of cores, where the layers run and where the whole maps are kept."""

    def __init__(self, vae: AutoencoderKL, latent_hw: tuple[int, int], batch: int, tile: int | None,
                 store: torch.device | None, widest: int, compact: bool = False) -> None:
        param = next(vae.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.height, self.width = latent_hw
        self.cores = _cores(self.height, self.width, tile or tile_size(vae))
        if store is None:
            scale = downscale(vae)
            need = 3 * batch * widest * self.height * self.width * scale * scale * param.element_size()
            store = self.device if _fits(self.device, need) else torch.device("cpu")
        self.store = store
        # compact: the stores in bfloat16 (the layers still compute in the VAE's dtype), for a float32 VAE on a CPU,
        # where the stores are the peak; the pixels are then within about a grey level of a whole pass, not equal
        compact = bool(compact) and self.device.type == "cpu" and store.type == "cpu" and self.dtype == torch.float32
        self.store_dtype = torch.bfloat16 if compact else self.dtype

    def sweep(self, layers: Layer, src: Tensor, scale_in: int, scale_out: int, halo: int, wrap: bool,
              channels: int, out: Tensor | None = None, skip: tuple[Tensor, Layer, float] | None = None,
              stats: bool = True, dtype: torch.dtype | None = None) -> tuple[Tensor, _Stats]:
        """``layers`` over every tile of ``src`` (a whole map at ``scale_in`` pixels per latent pixel), into a whole
        map at ``scale_out`` (into ``out`` when given). ``skip``: a map at the output's scale, a layer and a divisor,
        added as a resnet's shortcut is: ``(layer(skip) + layers(src)) / divisor``; ``dtype``: the new map's (by
        default the stores')."""
        batch = src.shape[0]
        if out is None:
            out = torch.empty((batch, channels, self.height * scale_out, self.width * scale_out),
                              dtype=dtype or self.store_dtype, device=self.store)
        st = _Stats()
        for y0, y1, x0, x1 in self.cores:
            win, wy, wx = _window(src, y0 * scale_in, y1 * scale_in, x0 * scale_in, x1 * scale_in, halo, wrap)
            y = layers(win.to(device=self.device, dtype=self.dtype))
            oy, ox = (y0 * scale_in - wy) * scale_out, (x0 * scale_in - wx) * scale_out
            if oy % scale_in or ox % scale_in:
                raise ValueError("a window does not line up with the layer's stride")
            c0, c1, d0, d1 = y0 * scale_out, y1 * scale_out, x0 * scale_out, x1 * scale_out
            core = y[:, :, oy // scale_in : oy // scale_in + c1 - c0, ox // scale_in : ox // scale_in + d1 - d0]
            if tuple(core.shape[-2:]) != (c1 - c0, d1 - d0):
                raise ValueError(f"a tile came out {tuple(y.shape[-2:])}, which does not hold its core")
            if skip is not None:
                residual, shortcut, divisor = skip
                core = (shortcut(residual[:, :, c0:c1, d0:d1].to(device=self.device, dtype=self.dtype)) + core)
                core = core / divisor
            if stats:
                st.add(core)
            out[:, :, c0:c1, d0:d1] = core.to(device=out.device, dtype=out.dtype)
        return out, st

    def resnet(self, resnet: Any, x: Tensor, sx: _Stats, scale: int) -> tuple[Tensor, _Stats]:
        """A diffusers ``ResnetBlock2D`` in two sweeps (each group norm needs the whole map before it)."""
        norm1 = sx.normaliser(resnet.norm1, self.device)
        act = _in_place(resnet.nonlinearity)
        halo, wrap = _reach(resnet.conv1)
        h, sh = self.sweep(lambda t: resnet.conv1(act(norm1(t))), x, scale, scale, halo, wrap,
                           resnet.conv1.out_channels)
        norm2 = sh.normaliser(resnet.norm2, self.device)
        halo, wrap = _reach(resnet.conv2)
        shortcut: Layer = resnet.conv_shortcut if resnet.conv_shortcut is not None else _identity
        channels = resnet.conv2.out_channels
        # a core of x is read only by its own tile's shortcut, before that tile's output is written: in place
        out = x if x.shape[1] == channels else None
        return self.sweep(lambda t: resnet.conv2(resnet.dropout(act(norm2(t)))), h, scale, scale,
                          halo, wrap, channels, out=out, skip=(x, shortcut, float(resnet.output_scale_factor)))

    def attention(self, attn: Any, x: Tensor) -> tuple[Tensor, _Stats]:
        """The mid block's self-attention over the whole (latent-resolution) map."""
        y = _attend(attn, x.to(device=self.device, dtype=self.dtype))
        st = _Stats()
        st.add(y)
        return y.to(device=self.store, dtype=self.store_dtype), st

    def mid(self, mid: Any, x: Tensor, sx: _Stats, scale: int) -> tuple[Tensor, _Stats]:
        x, sx = self.resnet(mid.resnets[0], x, sx, scale)
        for attn, resnet in zip(mid.attentions, mid.resnets[1:], strict=True):
            if attn is not None:
                x, sx = self.attention(attn, x)
            x, sx = self.resnet(resnet, x, sx, scale)
        return x, sx

    def head(self, norm: nn.GroupNorm, act: Layer, conv: nn.Conv2d, x: Tensor, sx: _Stats,
             scale: int) -> Tensor:
        """``conv(act(norm(x)))``, the last layers of a decoder or an encoder."""
        normalise = sx.normaliser(norm, self.device)
        activate = _in_place(act)
        halo, wrap = _reach(conv)
        out, _ = self.sweep(lambda t: conv(activate(normalise(t))), x, scale, scale, halo, wrap, conv.out_channels,
                            stats=False, dtype=self.dtype)  # the result (pixels or moments) in full precision
        return out


def _identity(x: Tensor) -> Tensor:
    return x


def _in_place(act: Any) -> Layer:
    """An activation that may overwrite its input (a fresh tensor from a normalisation): one window less alive."""
    if isinstance(act, nn.SiLU):
        return lambda t: F.silu(t, inplace=True)
    layer: Layer = act
    return layer


def _fits(device: torch.device, need: int) -> bool:
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        return False
    free = int(torch.cuda.mem_get_info(device)[0])
    return need <= free * _STORE_SHARE


def _attend(attn: Any, x: Tensor) -> Tensor:
    """A diffusers ``Attention`` (self-attention over a B, C, H, W map) as ``AttnProcessor2_0`` computes it; the
    module itself when the score matrix is small, else with the queries in chunks."""
    b, c, height, width = x.shape
    n = height * width
    heads = int(attn.heads)
    if b * heads * n * n * 4 <= _ATTENTION_BYTES:
        y: Tensor = attn(x)
        return y
    seq = attn.group_norm(x.reshape(b, c, n)).transpose(1, 2)
    query, key, value = attn.to_q(seq), attn.to_k(seq), attn.to_v(seq)
    dim = key.shape[-1] // heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(b, -1, heads, dim).transpose(1, 2)

    query, key, value = split(query), split(key), split(value)
    out = torch.empty_like(query)
    step = max(1, _ATTENTION_BYTES // (b * heads * n * 4))
    for i in range(0, n, step):
        out[:, :, i : i + step] = F.scaled_dot_product_attention(query[:, :, i : i + step], key, value)
    merged = out.transpose(1, 2).reshape(b, n, heads * dim).to(query.dtype)
    merged = attn.to_out[1](attn.to_out[0](merged))
    y = merged.transpose(-1, -2).reshape(b, c, height, width)
    if attn.residual_connection:
        y = y + x
    result: Tensor = y / attn.rescale_output_factor
    return result


def _widest(channels: Iterable[int]) -> int:
    return max(int(c) for c in channels)


# --- decode and encode ----------------------------------------------------------------------------------------------

@torch.no_grad()
def tiled_decode(vae: AutoencoderKL, z: Tensor, tile: int | None = None,
                 store: torch.device | None = None, compact: bool = False) -> Tensor:
    """``vae.decode(z)`` (``z`` unscaled, B x C x h x w) tile by tile with whole-image group norms: the images,
    -1..1, in the VAE's dtype on the store's device (the CPU when the maps were kept there).

    ``tile``: the side of a tile's core in latent pixels (``tile_size(vae)`` by default); ``store``: where the whole
    maps between layers are kept (by default the VAE's device when they fit comfortably, else the CPU);
    ``compact``: keep them in bfloat16 when a float32 VAE and its stores are all on the CPU (about 0.75 of the
    memory, pixels within about a grey level instead of equal)."""
    dec: Any = vae.decoder  # diffusers' Decoder, whose blocks are typed loosely
    channels = vae.config["block_out_channels"]
    run = _Pass(vae, (int(z.shape[-2]), int(z.shape[-1])), int(z.shape[0]), tile, store,
                _widest(channels[:2]), compact)
    x = z.to(device=run.device, dtype=run.dtype)
    if vae.post_quant_conv is not None:
        x = vae.post_quant_conv(x)  # 1x1, on the small latent
    scale = 1
    halo, wrap = _reach(dec.conv_in)
    h, st = run.sweep(dec.conv_in, x.to(run.store), scale, scale, halo, wrap, dec.conv_in.out_channels)
    del x
    h, st = run.mid(dec.mid_block, h, st, scale)
    for block in dec.up_blocks:
        for resnet in block.resnets:
            h, st = run.resnet(resnet, h, st, scale)
        for up in block.upsamplers or []:
            conv = _upsampler_conv(up)
            pad, wrap = _reach(conv)
            h, st = run.sweep(up, h, scale, scale * 2, (pad + 1) // 2, wrap, conv.out_channels)
            scale *= 2
    return run.head(dec.conv_norm_out, dec.conv_act, dec.conv_out, h, st, scale)


@torch.no_grad()
def tiled_encode(vae: AutoencoderKL, x: Tensor, tile: int | None = None,
                 store: torch.device | None = None, compact: bool = False) -> Tensor:
    """The moments ``vae.encode(x)`` would give its posterior (B x 2C x h x w, on the VAE's device), from images
    ``x`` (-1..1, sides a multiple of ``downscale(vae)``) tile by tile with whole-image group norms."""
    enc: Any = vae.encoder
    factor = downscale(vae)
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(f"a tiled encode needs image sides that are multiples of {factor}")
    channels = vae.config["block_out_channels"]
    run = _Pass(vae, (int(x.shape[-2]) // factor, int(x.shape[-1]) // factor), int(x.shape[0]), tile, store,
                _widest(channels[:2]), compact)
    scale = factor
    halo, wrap = _reach(enc.conv_in)
    h, st = run.sweep(enc.conv_in, x.to(run.store), scale, scale, halo, wrap, enc.conv_in.out_channels)
    for block in enc.down_blocks:
        for resnet in block.resnets:
            h, st = run.resnet(resnet, h, st, scale)
        for down in block.downsamplers or []:
            # output pixel i reads input pixels 2i-1 .. 2i+1 (padding 1) or 2i .. 2i+2 (padding 0, and a zero
            # column padded on the right): a halo of 2 keeps every window's start even
            wrap = down.padding > 0 and down.conv.padding_mode == "circular"
            h, st = run.sweep(down, h, scale, scale // 2, 2, wrap, down.conv.out_channels)
            scale //= 2
    h, st = run.mid(enc.mid_block, h, st, scale)
    moments = run.head(enc.conv_norm_out, enc.conv_act, enc.conv_out, h, st, scale).to(run.device)
    if vae.quant_conv is not None:
        moments = vae.quant_conv(moments)
    return moments

"""Diffusers -> original (LDM/SGM) single-file key layout.

diffusers ships only the original-to-diffusers direction. This is the reverse, used to write single-file checkpoints
(converting a diffusers folder, merge results, the tiny test models). The maps are derived from each model's config,
so any depth and width of the SD 1.x / 2.x / XL topologies converts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, cast

import torch

_Self = TypeVar("_Self", bound="TensorLike")


class TensorLike(Protocol):
    """What the converters use of a tensor: a ``torch.Tensor``, or a stand-in that records operations for later."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def ndim(self) -> int: ...

    @property
    def T(self: _Self) -> _Self: ...

    def reshape(self: _Self, *shape: int) -> _Self: ...

    def contiguous(self: _Self) -> _Self: ...


TensorT = TypeVar("TensorT", bound=TensorLike)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

_RESNET_PARTS = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]

_UNET_TOP = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("label_emb.0.0.", "add_embedding.linear_1."),
    ("label_emb.0.2.", "add_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
]


def _unet_prefix_map(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(ldm_prefix, diffusers_prefix) pairs for the block structure described by a UNet config."""
    lpb = int(config["layers_per_block"])
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    n = len(down_types)
    pairs: list[tuple[str, str]] = []
    for i in range(n):
        for j in range(lpb):
            pairs.append((f"input_blocks.{(lpb + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if "CrossAttn" in down_types[i]:
                pairs.append((f"input_blocks.{(lpb + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(lpb + 1):
            pairs.append((f"output_blocks.{(lpb + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if "CrossAttn" in up_types[i]:
                pairs.append((f"output_blocks.{(lpb + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            pairs.append((f"input_blocks.{(lpb + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            up_index = 2 if "CrossAttn" in up_types[i] else 1
            pairs.append((f"output_blocks.{(lpb + 1) * i + lpb}.{up_index}.", f"up_blocks.{i}.upsamplers.0."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        pairs.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return pairs


def _replace_prefix(key: str, pairs: list[tuple[str, str]]) -> str | None:
    for ldm, hf in pairs:
        if key.startswith(hf):
            return ldm + key[len(hf) :]
    return None


def unet_to_ldm(state_dict: Mapping[str, TensorT], config: Mapping[str, Any]) -> dict[str, TensorT]:
    """Convert a diffusers ``UNet2DConditionModel`` state dict to ``model.diffusion_model.*`` keys."""
    block_pairs = _unet_prefix_map(config)
    out: dict[str, TensorT] = {}
    for key, value in state_dict.items():
        new = _replace_prefix(key, _UNET_TOP)
        if new is None:
            new = _replace_prefix(key, block_pairs)
            if new is None:
                raise ValueError(f"unexpected UNet key {key!r}")
            if ".resnets." in key or key.startswith(("mid_block.resnets",)):
                for ldm_part, hf_part in _RESNET_PARTS:
                    new = new.replace(f".{hf_part}.", f".{ldm_part}.")
        out[UNET_PREFIX + new] = value
    return out


def _vae_prefix_map(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    lpb = int(config["layers_per_block"])
    n = len(config["block_out_channels"])
    pairs: list[tuple[str, str]] = []
    for i in range(n):
        for j in range(lpb):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        for j in range(lpb + 1):
            pairs.append((f"decoder.up.{n - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
        if i < n - 1:
            pairs.append((f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0."))
            pairs.append((f"decoder.up.{n - 1 - i}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0."))
    for part in ("encoder", "decoder"):
        for j in range(2):
            pairs.append((f"{part}.mid.block_{j + 1}.", f"{part}.mid_block.resnets.{j}."))
        pairs.append((f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0."))
        pairs.append((f"{part}.norm_out.", f"{part}.conv_norm_out."))
    return pairs


_VAE_ATTN_PARTS = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]


def vae_to_ldm(state_dict: Mapping[str, TensorT], config: Mapping[str, Any]) -> dict[str, TensorT]:
    """Convert a diffusers ``AutoencoderKL`` state dict to ``first_stage_model.*`` keys."""
    pairs = _vae_prefix_map(config)
    out: dict[str, TensorT] = {}
    for key, value in state_dict.items():
        new = _replace_prefix(key, pairs) or key
        if ".mid_block.attentions.0." in key:
            head, _, tail = new.rpartition("attn_1.")
            for ldm_part, hf_part in _VAE_ATTN_PARTS:
                if tail.startswith(hf_part):
                    tail = ldm_part + tail[len(hf_part) :]
                    break
            new = head + "attn_1." + tail
            if new.endswith(".weight") and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)
        elif ".resnets." in key:
            new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        out[VAE_PREFIX + new] = value
    return out


def clip_to_ldm(state_dict: Mapping[str, TensorT], prefix: str) -> dict[str, TensorT]:
    """A transformers ``CLIPTextModel`` in the HF layout under ``prefix`` (e.g. ``cond_stage_model.transformer.``)."""
    out: dict[str, TensorT] = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        name = key if key.startswith("text_model.") else "text_model." + key
        out[prefix + name] = value
    return out


_OPENCLIP_LAYER_PARTS = [
    (".self_attn.out_proj.", ".attn.out_proj."),
    (".layer_norm1.", ".ln_1."),
    (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
]


def _cat_rows(parts: list[TensorT]) -> TensorT:
    """``torch.cat`` along dim 0, for tensors and for stand-ins that take part through ``__torch_function__``."""
    return cast(TensorT, torch.cat(cast(list[torch.Tensor], parts), dim=0))


def open_clip_to_ldm(state_dict: Mapping[str, TensorT], prefix: str) -> dict[str, TensorT]:
    """A transformers CLIP text model to the OpenCLIP layout under ``prefix`` (e.g. ``cond_stage_model.model.``)."""
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items() if not k.endswith("position_ids")}
    out: dict[str, TensorT] = {
        prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": sd.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        src = f"encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            out[f"{dst}attn.in_proj_{kind}"] = _cat_rows(qkv)
    for key, value in sd.items():
        if not key.startswith("encoder.layers."):
            raise ValueError(f"unexpected text encoder key {key!r}")
        new = "." + key.removeprefix("encoder.layers.").split(".", 1)[1]
        for hf_part, ldm_part in _OPENCLIP_LAYER_PARTS:
            new = new.replace(hf_part, ldm_part)
        out[f"{prefix}transformer.resblocks.{key.split('.')[2]}{new}"] = value
    return out

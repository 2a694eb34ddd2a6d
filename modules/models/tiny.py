"""Tiny random-weight models with the key layout of the real families, for tests and benchmarks.

Each family keeps the real topology (same blocks, same key names, the real CLIP vocabulary) with narrow channels and
few layers, so the real loading and conversion paths run in a fraction of a second on a CPU. A model is written as a
diffusers folder, or as a single-file checkpoint (``.safetensors`` or ``.ckpt``) in the original LDM/SGM layout with a
config folder of the same name beside it, which tells the loader the narrow shapes.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from modules.models import convert
from modules.models.families import FAMILIES, bundled_config_dir
from modules.models.tokenizer import build_clip_tokenizer

_TEXT_SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 3,
               "projection_dim": 32}
_TEXT_G_SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 3,
                 "projection_dim": 64}
_VAE_SMALL = {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "sample_size": 64}
_UNET_SMALL = {
    "sd1": {"block_out_channels": [32, 64, 64, 64], "attention_head_dim": 2, "cross_attention_dim": 32,
            "sample_size": 8},
    "sd2": {"block_out_channels": [32, 64, 64, 64], "attention_head_dim": [2, 4, 4, 4], "cross_attention_dim": 32,
            "sample_size": 8},
    "sdxl": {"block_out_channels": [32, 64, 64], "attention_head_dim": [2, 4, 4], "cross_attention_dim": 96,
             "transformer_layers_per_block": [1, 2, 2], "addition_time_embed_dim": 8,
             "projection_class_embeddings_input_dim": 64 + 6 * 8, "sample_size": 8},
}


def _read(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def tiny_config(family: str) -> dict[str, dict[str, Any]]:
    """Component configs of the tiny replica of ``family`` (model_index, scheduler, unet, vae, text_encoder...)."""
    fam = FAMILIES[family]
    src = bundled_config_dir(family)
    cfg = {"model_index": _read(src / "model_index.json"),
           "scheduler": _read(src / "scheduler" / "scheduler_config.json")}
    cfg["unet"] = {**_read(src / "unet" / "config.json"), **_UNET_SMALL[fam.base]}
    cfg["vae"] = {**_read(src / "vae" / "config.json"), **_VAE_SMALL}
    cfg["text_encoder"] = {**_read(src / "text_encoder" / "config.json"), **_TEXT_SMALL}
    if fam.is_xl:
        cfg["text_encoder_2"] = {**_read(src / "text_encoder_2" / "config.json"), **_TEXT_G_SMALL}
    return cfg


def write_config_folder(family: str, folder: Path) -> Path:
    """Write the tiny replica's configs (no weights) as a diffusers-style folder."""
    for name, data in tiny_config(family).items():
        path = folder / "model_index.json" if name == "model_index" else folder / name / (
            "scheduler_config.json" if name == "scheduler" else "config.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
    return folder


def build_components(family: str, seed: int = 0) -> dict[str, Any]:
    """Random-weight diffusers/transformers components of the tiny replica of ``family``."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    fam = FAMILIES[family]
    cfg = copy.deepcopy(tiny_config(family))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(cfg["unet"])
    vae = AutoencoderKL.from_config(cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**_clean(cfg["text_encoder"])))
    sched_cls = getattr(diffusers, cfg["scheduler"]["_class_name"])
    parts: dict[str, Any] = {
        "unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
        "tokenizer": build_clip_tokenizer(fam.pad_token),
        "scheduler": sched_cls.from_config(cfg["scheduler"]),
    }
    if fam.is_xl:
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_clean(cfg["text_encoder_2"])))
        parts["text_encoder_2"] = te2.eval()
        parts["tokenizer_2"] = build_clip_tokenizer("!")
    return parts


def _clean(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in ("architectures",) and not k.startswith("_")}


def to_single_file_state_dict(family: str, parts: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The original single-file layout of a set of components."""
    fam = FAMILIES[family]
    sd = convert.unet_to_ldm(parts["unet"].state_dict(), parts["unet"].config)
    sd.update(convert.vae_to_ldm(parts["vae"].state_dict(), parts["vae"].config))
    te = parts["text_encoder"].state_dict()
    if fam.is_xl:
        sd.update(convert.clip_to_ldm(te, "conditioner.embedders.0.transformer."))
        sd.update(convert.open_clip_to_ldm(parts["text_encoder_2"].state_dict(), "conditioner.embedders.1.model."))
    elif fam.base == "sd2":
        sd.update(convert.open_clip_to_ldm(te, "cond_stage_model.model."))
    else:
        sd.update(convert.clip_to_ldm(te, "cond_stage_model.transformer."))
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def write_tiny_model(family: str, directory: Path, name: str | None = None, fmt: str = "safetensors",
                     seed: int = 0, with_config: bool = True) -> Path:
    """Write a tiny model of ``family`` into ``directory``; returns the checkpoint file or the diffusers folder.

    ``fmt`` is ``safetensors``, ``ckpt`` or ``diffusers``. Single files get the config folder ``<name>/`` beside
    them unless ``with_config`` is false.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = name or f"tiny-{family}"
    parts = build_components(family, seed)
    if fmt == "diffusers":
        target = directory / name
        if target.exists():
            shutil.rmtree(target)
        _pipeline_class(family)(**_pipeline_kwargs(family, parts)).save_pretrained(target)
        return target
    sd = to_single_file_state_dict(family, parts)
    if fmt == "safetensors":
        path = directory / f"{name}.safetensors"
        save_file(sd, str(path))
    elif fmt == "ckpt":
        path = directory / f"{name}.ckpt"
        torch.save({"state_dict": sd}, path)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if with_config:
        write_config_folder(family, directory / name)
    return path


def _pipeline_class(family: str) -> Any:
    import diffusers

    return getattr(diffusers, tiny_config(family)["model_index"]["_class_name"])


def _pipeline_kwargs(family: str, parts: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(parts)
    if not FAMILIES[family].is_xl:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return kwargs

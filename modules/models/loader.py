"""Building the diffusers components of a checkpoint, offline, from any format the engine accepts."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modules.errors import ModelLoadError
from modules.models import families
from modules.models.checkpoint_file import CheckpointFile
from modules.models.families import FAMILIES, Family
from modules.models.registry import CheckpointInfo
from modules.models.tokenizer import build_clip_tokenizer
from modules.models.vae import VaeInfo

if TYPE_CHECKING:
    # Imported from their defining modules: to a type checker, diffusers' top-level names are the placeholders it
    # exports when torch is missing, which lack every torch.nn.Module attribute.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

log = logging.getLogger(__name__)

_TE_PREFIXES = {
    "sd1": ("cond_stage_model.",),
    "sd2": ("cond_stage_model.",),
}


@dataclass
class ModelParts:
    """A loaded model: its diffusers components and what the engine needs to know about it."""

    family: Family
    prediction_type: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    info: CheckpointInfo | None = None
    vae_info: VaeInfo | None = None  # an external VAE in use instead of the baked one (per job, see ModelManager)
    vae_hash: str | None = None

    def modules(self) -> list[torch.nn.Module]:
        mods: list[torch.nn.Module | None] = [self.unet, self.vae, self.text_encoder, self.text_encoder_2]
        return [m for m in mods if m is not None]

    def to(self, device: torch.device | str) -> ModelParts:
        for m in self.modules():
            m.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def is_inpaint(self) -> bool:
        return int(self.unet.config["in_channels"]) == 9


def _scheduler_config(folder: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    return data


def resolve_single_file_config(path: Path, ckpt: CheckpointFile,
                               config_override: Path | None = None) -> tuple[str, str | None, Path]:
    """(family, prediction override, diffusers config folder) for a single-file checkpoint."""
    family, prediction = families.detect_family(ckpt.shapes, path.name, ckpt.metadata)
    override = config_override or families.config_beside(path) or families.yaml_beside(path)
    if override is None:
        return family, prediction, families.bundled_config_dir(family)
    if override.is_dir():
        if not (override / "model_index.json").is_file():
            raise ModelLoadError(f"{override} is not a diffusers config folder (no model_index.json)")
        if family == "sd2" and _scheduler_config(override).get("prediction_type") == "v_prediction":
            family = "sd2-v"
        return family, None, override
    if override.suffix.lower() in (".yaml", ".yml"):
        family, prediction = families.family_from_ldm_yaml(override)
        return family, prediction, families.bundled_config_dir(family)
    raise ModelLoadError(f"unsupported model config {override.name}: give a .yaml or a diffusers config folder")


def load_single_file(path: Path, dtype: torch.dtype, config_override: Path | None = None) -> ModelParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    ckpt = CheckpointFile(path)
    family_name, prediction, config_dir = resolve_single_file_config(path, ckpt, config_override)
    family = FAMILIES[family_name]
    common = {"config": str(config_dir), "local_files_only": True, "torch_dtype": dtype}
    try:
        unet = UNet2DConditionModel.from_single_file(ckpt.tensors(["model.diffusion_model."]), subfolder="unet",
                                                     **common)
        vae = AutoencoderKL.from_single_file(ckpt.tensors(["first_stage_model."]), subfolder="vae", **common)
        te_prefix = ["conditioner.embedders.0."] if family.is_xl else ["cond_stage_model."]
        text_encoder = create_diffusers_clip_model_from_ldm(
            CLIPTextModel, ckpt.tensors(te_prefix), subfolder="text_encoder", **common)
        text_encoder_2 = None
        if family.is_xl:
            text_encoder_2 = create_diffusers_clip_model_from_ldm(
                CLIPTextModelWithProjection, ckpt.tensors(["conditioner.embedders.1."]),
                subfolder="text_encoder_2", **common)
    except ModelLoadError:
        raise
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        log.exception("loading %s failed", path)
        first = str(exc).splitlines()[0][:300]
        raise ModelLoadError(f"{path.name} could not be loaded as {family.label}: {first}") from None
    sched = _scheduler_config(config_dir)
    if family_name == "sd2" and config_dir == families.bundled_config_dir("sd2") and _predicts_v(unet):
        family, prediction = FAMILIES["sd2-v"], "v_prediction"
    return ModelParts(
        family=family,
        prediction_type=prediction or sched.get("prediction_type", "epsilon"),
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
        tokenizer=build_clip_tokenizer(family.pad_token),
        text_encoder_2=text_encoder_2.eval() if text_encoder_2 is not None else None,
        tokenizer_2=build_clip_tokenizer("!") if family.is_xl else None,
        scheduler_config=sched,
    )


@torch.no_grad()
def _predicts_v(unet: UNet2DConditionModel) -> bool:
    """Whether an SD 2.x UNet was trained for v-prediction (the 768-v models), told from one forward pass.

    At t=999 an epsilon model predicts roughly its input, a v model roughly its negative: the same probe A1111 uses
    when no config says which.
    """
    p = next(unet.parameters())
    x = torch.full((1, 4, 8, 8), 0.5, device=p.device, dtype=p.dtype)
    cond = torch.full((1, 2, int(unet.config["cross_attention_dim"])), 0.5, device=p.device, dtype=p.dtype)
    out = unet(x, torch.tensor([999], device=p.device), encoder_hidden_states=cond, return_dict=False)[0]
    return bool((out.float() - x.float()).mean().item() < -1)


def diffusers_folder_family(folder: Path) -> str:
    index = _read_json(folder / "model_index.json")
    unet_cfg = _read_json(folder / "unet" / "config.json")
    if "text_encoder_2" in index:
        base = "sdxl"
    else:
        te_cfg = _read_json(folder / "text_encoder" / "config.json")
        base = "sd2" if te_cfg.get("hidden_act") == "gelu" or unet_cfg.get("cross_attention_dim") == 1024 else "sd1"
    in_channels = int(unet_cfg.get("in_channels", 4))
    if in_channels not in (4, 9):
        raise ModelLoadError(f"{folder.name}: UNet with {in_channels} input channels is not supported yet")
    pred = _scheduler_config(folder).get("prediction_type", "epsilon")
    if in_channels == 9:
        return f"{base}-inpaint"
    return "sd2-v" if base == "sd2" and pred == "v_prediction" else base


def load_diffusers_folder(folder: Path, dtype: torch.dtype) -> ModelParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    family = FAMILIES[diffusers_folder_family(folder)]
    common: dict[str, Any] = {"local_files_only": True}

    def tokenizer(sub: str, pad: str) -> CLIPTokenizer:
        if (folder / sub).is_dir():
            loaded: CLIPTokenizer = CLIPTokenizer.from_pretrained(str(folder), subfolder=sub, **common)
            return loaded
        return build_clip_tokenizer(pad)

    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", torch_dtype=dtype, **common)
        vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", torch_dtype=dtype, **common)
        te = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", dtype=dtype, **common)
        te2 = None
        if family.is_xl:
            te2 = CLIPTextModelWithProjection.from_pretrained(str(folder), subfolder="text_encoder_2", dtype=dtype,
                                                              **common)
    except (OSError, RuntimeError, ValueError) as exc:
        log.exception("loading %s failed", folder)
        raise ModelLoadError(f"{folder.name} could not be loaded: {str(exc).splitlines()[0][:300]}") from None
    sched = _scheduler_config(folder)
    return ModelParts(
        family=family, prediction_type=sched.get("prediction_type", "epsilon"),
        unet=unet.eval(), vae=vae.eval(), text_encoder=te.eval(), tokenizer=tokenizer("tokenizer", family.pad_token),
        text_encoder_2=te2.eval() if te2 is not None else None,
        tokenizer_2=tokenizer("tokenizer_2", "!") if family.is_xl else None,
        scheduler_config=sched,
    )


def load_model(info: CheckpointInfo, dtype: torch.dtype, config_override: Path | None = None) -> ModelParts:
    """Load ``info`` on the CPU in ``dtype``."""
    if info.kind == "diffusers":
        parts = load_diffusers_folder(info.path, dtype)
    else:
        parts = load_single_file(info.path, dtype, config_override)
    parts.info = info
    return parts

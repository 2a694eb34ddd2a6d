"""Building the diffusers components of a checkpoint, offline, from any format the engine accepts."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modules.errors import ModelLoadError
from modules.models import families
from modules.models.checkpoint_file import CheckpointFile
from modules.models.families import FAMILIES, Family
from modules.models.ldm_yaml import LdmConfig, read_ldm_yaml
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
    config_path: Path | None = None  # the config the sizes came from: a <name>.yaml, a config folder, None: bundled
    ldm_config: LdmConfig | None = None  # that yaml, read: schedule, text encoder layers, zero_terminal_snr...
    execution_device: torch.device | None = None  # where it computes when its weights wait in RAM (memory modes)

    def modules(self) -> list[torch.nn.Module]:
        mods: list[torch.nn.Module | None] = [self.unet, self.vae, self.text_encoder, self.text_encoder_2]
        return [m for m in mods if m is not None]

    def to(self, device: torch.device | str) -> ModelParts:
        for m in self.modules():
            m.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the model computes (its weights may wait in RAM between uses: see ``modules.models.memory``)."""
        return self.execution_device or next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The precision the model computes in (the text encoder's: the UNet's weights may be stored in 8 bits)."""
        module = self.text_encoder if self.text_encoder is not None else self.unet
        return next(module.parameters()).dtype

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


def _is_yaml(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml") and not path.is_dir()


def _config_for(path: Path, config_override: Path | None) -> Path | None:
    return config_override or families.config_beside(path) or families.yaml_beside(path)


def resolve_single_file_config(path: Path, ckpt: CheckpointFile,
                               config_override: Path | None = None) -> tuple[str, str | None, Path]:
    """(family, prediction override, diffusers config folder) for a single-file checkpoint.

    With a ``<name>.yaml`` the folder is the family's bundled one; :func:`load_single_file` takes every size from
    the yaml itself.
    """
    family, prediction = families.detect_family(ckpt.shapes, path.name, ckpt.metadata)
    override = _config_for(path, config_override)
    if override is None:
        return family, prediction, families.bundled_config_dir(family)
    if override.is_dir():
        if not (override / "model_index.json").is_file():
            raise ModelLoadError(f"{override} is not a diffusers config folder (no model_index.json)")
        if family == "sd2" and _scheduler_config(override).get("prediction_type") == "v_prediction":
            family = "sd2-v"
        return family, None, override
    if _is_yaml(override):
        ldm = read_ldm_yaml(override, path.parent)
        default = _scheduler_config(families.bundled_config_dir(ldm.family)).get("prediction_type", "epsilon")
        return ldm.family, ldm.prediction_type if ldm.prediction_type != default else None, \
            families.bundled_config_dir(ldm.family)
    raise ModelLoadError(f"unsupported model config {override.name}: give a .yaml or a diffusers config folder")


_Components = tuple["UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel", "CLIPTextModelWithProjection | None"]


def _load_components(path: Path, ckpt: CheckpointFile, family: Family, config_dir: Path,
                     dtype: torch.dtype, load_to: str | None = None) -> _Components:
    """UNet, VAE and text encoder(s) of ``ckpt``, shaped by the diffusers configs in ``config_dir``; ``load_to``:
    the UNet's and the VAE's weights read from the file straight into that device's memory (A1111's --lowram)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    common = {"config": str(config_dir), "local_files_only": True, "torch_dtype": dtype}
    try:
        direct = {"device": load_to} if load_to else {}
        unet = UNet2DConditionModel.from_single_file(ckpt.tensors(["model.diffusion_model."], load_to or "cpu"),
                                                     subfolder="unet", **common, **direct)
        vae = AutoencoderKL.from_single_file(ckpt.tensors(["first_stage_model."], load_to or "cpu"), subfolder="vae",
                                             **common, **direct)
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
    except (RuntimeError, ValueError, KeyError, OSError, IndexError, TypeError) as exc:
        log.exception("loading %s failed", path)
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{path.name} could not be loaded as {family.label}: {first}") from None
    for name, module in (("UNet", unet), ("VAE", vae), ("text encoder", text_encoder),
                         ("second text encoder", text_encoder_2)):
        if module is None:
            continue
        missing = [n for n, p in module.named_parameters() if p.device.type == "meta"]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ModelLoadError(f"{path.name} has no weights for the {name}'s {', '.join(missing[:3])}{more}: "
                                 "the checkpoint and its config do not match")
    return unet, vae, text_encoder, text_encoder_2


def _check_yaml_matches(path: Path, ckpt: CheckpointFile, ldm: LdmConfig) -> None:
    base = families.detect_base(ckpt.shapes.keys())
    if base != ldm.family_info.base:
        raise ModelLoadError(f"model config {ldm.path.name} describes an {ldm.family_info.label} model, but the text "
                             f"encoder weights in {path.name} are those of {FAMILIES[base].label}")


def _load_with_yaml(path: Path, ckpt: CheckpointFile, yaml_path: Path, dtype: torch.dtype,
                    load_to: str | None = None) -> ModelParts:
    """A single file shaped by its original LDM/SGM yaml: every size and the schedule come from the yaml."""
    ldm = read_ldm_yaml(yaml_path, path.parent)
    _check_yaml_matches(path, ckpt, ldm)
    family = ldm.family_info
    with tempfile.TemporaryDirectory(prefix="ldm-config-") as tmp:
        config_dir = ldm.write_config_folder(Path(tmp))
        unet, vae, text_encoder, text_encoder_2 = _load_components(path, ckpt, family, config_dir, dtype, load_to)
    tokenizers = [te.tokenizer(family.pad_token if i == 0 else "!") for i, te in enumerate(ldm.text_encoders)]
    return ModelParts(
        family=family, prediction_type=ldm.prediction_type,
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizers[0],
        text_encoder_2=text_encoder_2.eval() if text_encoder_2 is not None else None,
        tokenizer_2=tokenizers[1] if len(tokenizers) > 1 else None,
        scheduler_config=dict(ldm.scheduler), config_path=yaml_path, ldm_config=ldm,
    )


def load_single_file(path: Path, dtype: torch.dtype, config_override: Path | None = None,
                     load_to: str | None = None) -> ModelParts:
    ckpt = CheckpointFile(path)
    load_to = load_to if path.suffix.lower() == ".safetensors" else None  # a pickle is memory-mapped anyway
    override = _config_for(path, config_override)
    if override is not None and _is_yaml(override):
        return _load_with_yaml(path, ckpt, override, dtype, load_to)
    family_name, prediction, config_dir = resolve_single_file_config(path, ckpt, config_override)
    family = FAMILIES[family_name]
    unet, vae, text_encoder, text_encoder_2 = _load_components(path, ckpt, family, config_dir, dtype, load_to)
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
        scheduler_config=sched, config_path=override,
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


def load_model(info: CheckpointInfo, dtype: torch.dtype, config_override: Path | None = None,
               load_to: str | None = None) -> ModelParts:
    """Load ``info`` in ``dtype``, on the CPU; ``load_to`` (A1111's --lowram): a safetensors file's UNet and VAE
    weights read straight into that device's memory instead of passing through RAM (through RAM again, with a
    warning, when that fails)."""
    if info.kind == "diffusers":
        parts = load_diffusers_folder(info.path, dtype)
    elif load_to:
        try:
            parts = load_single_file(info.path, dtype, config_override, load_to)
        except ModelLoadError as exc:
            log.warning("--lowram: %s could not be read straight into %s (%s); read through RAM", info.name,
                        load_to, exc)
            parts = load_single_file(info.path, dtype, config_override)
    else:
        parts = load_single_file(info.path, dtype, config_override)
    parts.info = info
    return parts

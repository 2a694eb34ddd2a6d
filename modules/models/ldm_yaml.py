"""Original LDM/SGM inference configs (A1111's ``<name>.yaml`` beside a checkpoint) as diffusers configs.

A yaml gives every size of the model: the UNet (``unet_config`` in LDM, ``network_config`` in SGM), the VAE
(``first_stage_config``), the text encoders (``cond_stage_config`` / ``conditioner_config``) and the diffusion schedule
(``linear_start``, ``linear_end``, ``timesteps``, ``beta_schedule``, ``parameterization``). The diffusers configs are
derived with diffusers' own ``create_*_diffusers_config_from_ldm`` helpers, then completed where those helpers stop
short (attention heads from ``num_head_channels``, SDXL's size embedding, the VAE's ``embed_dim``...). The schedule is
the one of Ho et al. 2020 (DDPM) as LDM builds it: ``beta_schedule: linear`` is ``linspace(sqrt(start), sqrt(end))^2``,
which diffusers calls ``scaled_linear``.

A text encoder's ``version`` names a local folder with a transformers CLIP config and tokenizer (relative to the yaml
or the checkpoint, or absolute); the default ``openai/clip-vit-large-patch14`` without such a folder means the
bundled SD 1.x encoder. Only safe YAML is read, and anything that is not understood is a :class:`ModelLoadError`
naming the file and the key.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modules.errors import ModelLoadError
from modules.models.families import FAMILIES, Family, bundled_config_dir

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

log = logging.getLogger(__name__)

LDM_MODELS = ("ldm.models.diffusion.ddpm.LatentDiffusion", "ldm.models.diffusion.ddpm.LatentInpaintDiffusion")
SGM_MODEL = "sgm.models.diffusion.DiffusionEngine"
UNET_TARGETS = ("ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "sgm.modules.diffusionmodules.openaimodel.UNetModel")
VAE_TARGETS = ("ldm.models.autoencoder.AutoencoderKL", "sgm.models.autoencoder.AutoencoderKL",
               "sgm.models.autoencoder.AutoencoderKLInferenceWrapper")
CLIP_TARGETS = ("ldm.modules.encoders.modules.FrozenCLIPEmbedder", "sgm.modules.encoders.modules.FrozenCLIPEmbedder")
OPEN_CLIP_TARGET = "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder"
OPEN_CLIP_2_TARGET = "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2"
SIZE_EMBEDDER_TARGET = "sgm.modules.encoders.modules.ConcatTimestepEmbedderND"
SCALING_TARGETS = {"sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling": "epsilon",
                   "sgm.modules.diffusionmodules.denoiser_scaling.VScaling": "v_prediction"}
DISCRETIZATION_TARGET = "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"
DEFAULT_CLIP_VERSION = "openai/clip-vit-large-patch14"
# OpenCLIP architectures by name, as bundled text encoder configs: (family folder, subfolder).
OPEN_CLIP_ARCHS = {"ViT-H-14": ("sd2", "text_encoder"), "ViT-bigG-14": ("sdxl", "text_encoder_2")}
# LDM's beta schedules by their diffusers names ("linear" in LDM squares a linspace of square roots).
BETA_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "squaredcos_cap_v2"}
PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction"}
# Keys, beside LDM's own, that ask for the zero-terminal-SNR rescale of the schedule (Lin et al. 2023, "Common
# Diffusion Noise Schedules and Sample Steps are Flawed"); LDM itself has none.
ZERO_SNR_KEYS = ("zero_terminal_snr", "rescale_betas_zero_snr")
# SGM's LegacyDDPMDiscretization defaults, the schedule of every SGM model as A1111 samples it.
SGM_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}

_NO_DEFAULT: Any = object()


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Section:
    """A mapping of the yaml together with its dotted key, so that every error names the file and the key."""

    def __init__(self, file: Path, key: str, data: object) -> None:
        self.file = file
        self.key = key
        if not isinstance(data, dict):
            raise self._fail(key, f"must be a mapping, not {_show(data)}")
        self.data: dict[str, Any] = data

    def _fail(self, key: str, problem: str) -> ModelLoadError:
        return ModelLoadError(f"model config {self.file.name}: {key} {problem}")

    def path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, problem: str) -> ModelLoadError:
        return self._fail(self.path(name), problem)

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def raw(self, name: str, default: Any = _NO_DEFAULT) -> Any:
        """The value of ``name``; a missing or null key takes ``default``, or is an error without one."""
        value = self.data.get(name)
        if value is not None:
            return value
        if default is _NO_DEFAULT:
            raise self.error(name, "is missing")
        return default

    def section(self, name: str, default: Any = _NO_DEFAULT) -> _Section:
        return _Section(self.file, self.path(name), self.raw(name, default))

    def integer(self, name: str, default: Any = _NO_DEFAULT) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, not {_show(value)}")
        return value

    def number(self, name: str, default: Any = _NO_DEFAULT) -> float:
        value = self.raw(name, default)
        if isinstance(value, str):  # "1e-4" is a string to YAML 1.1 but a number to the OmegaConf loader LDM uses
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(name, f"must be a number, not {_show(value)}")
        return float(value)

    def flag(self, name: str, default: Any = _NO_DEFAULT) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, not {_show(value)}")
        return value

    def text(self, name: str, default: Any = _NO_DEFAULT) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string, not {_show(value)}")
        return value

    def integers(self, name: str, default: Any = _NO_DEFAULT) -> list[int]:
        value = self.raw(name, default)
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise self.error(name, f"must be a list of integers, not {_show(value)}")
        return list(value)

    def int_or_list(self, name: str, length: int, default: Any = _NO_DEFAULT) -> list[int]:
        """An integer for every level, or one list entry per level."""
        value = self.raw(name, default)
        if isinstance(value, int) and not isinstance(value, bool):
            return [value] * length
        values = self.integers(name, default)
        if len(values) != length:
            raise self.error(name, f"must have one entry per level of channel_mult ({length}), not {len(values)}")
        return values

    def target(self, allowed: tuple[str, ...] | Mapping[str, Any], what: str) -> str:
        name = self.raw("target")
        if name not in allowed:
            names = ", ".join(allowed)
            raise self.error("target", f"{_show(name)} is not a supported {what} (supported: {names})")
        return str(name)

    def params(self) -> _Section:
        return self.section("params", {})


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a yaml: its transformers ``CLIPTextConfig`` and where its tokenizer comes from."""

    target: str
    config: dict[str, Any]
    tokenizer_dir: Path | None  # a local tokenizer folder; None: the bundled CLIP vocabulary
    layer: str  # as the yaml gives it: "last", "pooled", "hidden" (LDM/SGM CLIP), "penultimate" (OpenCLIP)
    layer_idx: int | None = None

    def tokenizer(self, pad_token: str) -> CLIPTokenizer:
        """The tokenizer: the local folder's, or the bundled vocabulary with ``pad_token``."""
        from transformers import CLIPTokenizer

        from modules.models.tokenizer import build_clip_tokenizer

        if self.tokenizer_dir is None:
            return build_clip_tokenizer(pad_token)
        try:
            loaded: CLIPTokenizer = CLIPTokenizer.from_pretrained(str(self.tokenizer_dir), local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ModelLoadError(f"cannot load the CLIP tokenizer from {self.tokenizer_dir}: "
                                 f"{str(exc).splitlines()[0][:300]}") from None
        return loaded


@dataclass(frozen=True)
class LdmConfig:
    """A yaml read and translated: the family, diffusers component configs and the diffusion schedule."""

    path: Path
    family: str
    prediction_type: str  # "epsilon" or "v_prediction"
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoders: tuple[TextEncoderSpec, ...]
    scheduler: dict[str, Any]  # diffusers keys: beta_start, beta_end, num_train_timesteps, beta_schedule, ...
    zero_terminal_snr: bool = False
    notes: tuple[str, ...] = ()  # what was read but not honoured, as A1111 does not either

    @property
    def family_info(self) -> Family:
        return FAMILIES[self.family]

    def write_config_folder(self, folder: Path) -> Path:
        """Write the configs as a diffusers config folder (model_index.json, unet/, vae/, text_encoder/...)."""
        files: dict[str, dict[str, Any]] = {
            "model_index.json": _read_json(bundled_config_dir(self.family) / "model_index.json"),
            "unet/config.json": self.unet,
            "vae/config.json": self.vae,
            "scheduler/scheduler_config.json": self.scheduler,
        }
        for i, te in enumerate(self.text_encoders):
            files[f"text_encoder{'_2' if i else ''}/config.json"] = te.config
        for name, data in files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(data, indent=2))
        return folder


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _load_yaml(path: Path) -> _Section:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"cannot read the model config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ModelLoadError(f"model config {path.name} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ModelLoadError(f"model config {path.name} is not valid YAML{at}: "
                             f"{getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ModelLoadError(f"model config {path.name} is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ModelLoadError(f"model config {path.name} must be a mapping with a 'model' key, not {_show(doc)}")
    return _Section(path, "", doc)


def read_ldm_yaml(path: Path, checkpoint_dir: Path | None = None) -> LdmConfig:
    """Read an LDM (SD 1.x/2.x) or SGM (SDXL) inference yaml into diffusers configs.

    ``checkpoint_dir`` is a second place to look for a text encoder's local ``version`` folder, after the yaml's.
    """
    path = Path(path)
    model = _load_yaml(path).section("model")
    target = model.target((*LDM_MODELS, SGM_MODEL), "model")
    params = model.params()
    search = [path.parent] + ([checkpoint_dir] if checkpoint_dir is not None else [])
    if target == SGM_MODEL:
        return _read_sgm(path, params, search)
    return _read_ldm(path, params, search)


def _family(base: str, in_channels: int, prediction: str, unet: _Section) -> str:
    if in_channels not in (4, 9):
        raise unet.error("in_channels", f"is {in_channels}: only 4 (txt2img) and 9 (inpainting) are supported")
    if in_channels == 9:
        return f"{base}-inpaint"
    return "sd2-v" if base == "sd2" and prediction == "v_prediction" else base


def _read_ldm(path: Path, params: _Section, search: list[Path]) -> LdmConfig:
    parameterization = params.text("parameterization", "eps")
    if parameterization not in PARAMETERIZATIONS:
        raise params.error("parameterization", f"{_show(parameterization)} is not supported (eps or v)")
    prediction = PARAMETERIZATIONS[parameterization]
    conditioning = params.text("conditioning_key", "crossattn")
    if conditioning not in ("crossattn", "hybrid"):
        raise params.error("conditioning_key", f"{_show(conditioning)} is not supported (crossattn or hybrid)")
    if params.flag("scale_by_std", False):
        raise params.error("scale_by_std", "is not supported: give scale_factor instead")

    cond = params.section("cond_stage_config")
    cond_target = cond.target((*CLIP_TARGETS[:1], OPEN_CLIP_TARGET), "text encoder")
    if cond_target == OPEN_CLIP_TARGET:
        base, te = "sd2", _open_clip_encoder(cond, "sd2")
    else:
        base, te = "sd1", _clip_encoder(cond, "sd1", search)

    unet_node = params.section("unet_config")
    unet_node.target(UNET_TARGETS[:1], "UNet")
    unet_params = unet_node.params()
    family = _family(base, unet_params.integer("in_channels"), prediction, unet_params)
    vae_node = params.section("first_stage_config")
    vae_node.target(VAE_TARGETS[:1], "VAE")

    scheduler = _read_json(bundled_config_dir(family) / "scheduler" / "scheduler_config.json")
    timesteps = params.integer("timesteps", 1000)
    if timesteps < 2:
        raise params.error("timesteps", f"must be at least 2, not {timesteps}")
    scheduler.update(num_train_timesteps=timesteps, prediction_type=prediction, trained_betas=None)
    if params.has("given_betas"):
        betas = params.raw("given_betas")
        if not isinstance(betas, list) or len(betas) != timesteps or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in betas):
            raise params.error("given_betas", f"must be a list of {timesteps} numbers in (0, 1)")
        scheduler["trained_betas"] = [float(b) for b in betas]
    else:
        schedule = params.text("beta_schedule", "linear")
        if schedule not in BETA_SCHEDULES:
            raise params.error("beta_schedule", f"{_show(schedule)} is not supported ({', '.join(BETA_SCHEDULES)})")
        if schedule == "cosine" and params.number("cosine_s", 8e-3) != 8e-3:
            raise params.error("cosine_s", "other than 0.008 is not supported")
        start, end = params.number("linear_start", 1e-4), params.number("linear_end", 2e-2)
        if not 0 < start <= end < 1:
            raise params.error("linear_end", f"and linear_start must satisfy 0 < start <= end < 1 ({start}, {end})")
        scheduler.update(beta_start=start, beta_end=end, beta_schedule=BETA_SCHEDULES[schedule])
    zero_snr = _zero_snr(params)
    if zero_snr:
        scheduler["rescale_betas_zero_snr"] = True

    fam = FAMILIES[family]
    vae_params = vae_node.params()
    unet = _unet_config(unet_params, vae_params, fam, size_embed_dim=None)
    vae = _vae_config(vae_params, fam, params.number("scale_factor", 1.0))
    return LdmConfig(path=path, family=family, prediction_type=prediction, unet=unet, vae=vae, text_encoders=(te,),
                     scheduler=scheduler, zero_terminal_snr=zero_snr)


def _zero_snr(params: _Section) -> bool:
    return any(params.flag(key, False) for key in ZERO_SNR_KEYS)


def _read_sgm(path: Path, params: _Section, search: list[Path]) -> LdmConfig:
    denoiser = params.section("denoiser_config")
    denoiser.target(("sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser",), "denoiser")
    dparams = denoiser.params()
    prediction = SCALING_TARGETS[dparams.section("scaling_config").target(SCALING_TARGETS, "denoiser scaling")]
    notes: list[str] = []
    discretization = dparams.section("discretization_config")
    discretization.target((DISCRETIZATION_TARGET,), "discretization")
    dis_params = discretization.params()
    given = {"beta_start": dis_params.number("linear_start", SGM_SCHEDULE["beta_start"]),
             "beta_end": dis_params.number("linear_end", SGM_SCHEDULE["beta_end"]),
             "num_train_timesteps": dis_params.integer("num_timesteps", SGM_SCHEDULE["num_train_timesteps"])}
    if given != SGM_SCHEDULE:
        # A1111 samples every SGM model with LegacyDDPMDiscretization's defaults (sd_models_xl.extend_sdxl).
        notes.append(f"{discretization.path('params')} {given} is not used: SGM models are sampled with "
                     f"{SGM_SCHEDULE}, as A1111 does")
        log.warning("%s: %s", path.name, notes[-1])

    conditioner = params.section("conditioner_config")
    conditioner.target(("sgm.modules.GeneralConditioner",), "conditioner")
    models = conditioner.params().raw("emb_models")
    if not isinstance(models, list):
        raise conditioner.params().error("emb_models", f"must be a list, not {_show(models)}")
    encoders: list[TextEncoderSpec] = []
    size_dims: list[int] = []
    for i, raw in enumerate(models):
        emb = _Section(path, conditioner.params().path(f"emb_models[{i}]"), raw)
        kind = emb.target((*CLIP_TARGETS[1:], OPEN_CLIP_2_TARGET, SIZE_EMBEDDER_TARGET), "SDXL conditioner")
        if kind == SIZE_EMBEDDER_TARGET:
            size_dims.append(emb.params().integer("outdim"))
        elif kind == OPEN_CLIP_2_TARGET:
            encoders.append(_open_clip_encoder(emb, "sdxl"))
        else:
            encoders.append(_clip_encoder(emb, "sdxl", search))
    kinds = [te.target for te in encoders]
    if kinds != [CLIP_TARGETS[1], OPEN_CLIP_2_TARGET] or len(size_dims) != 3 or len(set(size_dims)) != 1:
        raise conditioner.params().error(
            "emb_models", "must be SDXL base's: FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder2 and three "
            "ConcatTimestepEmbedderND of one outdim (refiner and other SGM models are not supported)")

    unet_node = params.section("network_config")
    unet_node.target(UNET_TARGETS[1:], "UNet")
    unet_params = unet_node.params()
    family = _family("sdxl", unet_params.integer("in_channels"), prediction, unet_params)
    fam = FAMILIES[family]
    vae_node = params.section("first_stage_config")
    vae_node.target(VAE_TARGETS[1:], "VAE")
    vae_params = vae_node.params()
    unet = _unet_config(unet_params, vae_params, fam, size_embed_dim=size_dims[0])
    vae = _vae_config(vae_params, fam, params.number("scale_factor", 1.0))

    scheduler = _read_json(bundled_config_dir(family) / "scheduler" / "scheduler_config.json")
    scheduler.update(SGM_SCHEDULE, beta_schedule="scaled_linear", prediction_type=prediction, trained_betas=None)
    zero_snr = _zero_snr(params)
    if zero_snr:
        scheduler["rescale_betas_zero_snr"] = True
    return LdmConfig(path=path, family=family, prediction_type=prediction, unet=unet, vae=vae,
                     text_encoders=tuple(encoders), scheduler=scheduler, zero_terminal_snr=zero_snr,
                     notes=tuple(notes))


def _version_folder(node: _Section, version: str, search: list[Path]) -> Path | None:
    """The local folder ``version`` names, or None for the default hub name without one."""
    candidate = Path(version).expanduser()
    places = [candidate] if candidate.is_absolute() else [base / candidate for base in search]
    for place in places:
        if place.is_dir():
            return place.resolve()
    if version == DEFAULT_CLIP_VERSION:
        return None
    where = " or ".join(str(p) for p in places)
    raise node.error("version", f"{_show(version)} is not a local CLIP folder (looked for {where}); "
                                "nothing is downloaded")


def _clip_encoder(node: _Section, base: str, search: list[Path]) -> TextEncoderSpec:
    """An OpenAI CLIP text encoder (FrozenCLIPEmbedder): sizes and tokenizer from its ``version`` folder."""
    from transformers import CLIPTextConfig

    params = node.params()
    version = params.text("version", DEFAULT_CLIP_VERSION)
    layer = params.text("layer", "last")
    if layer not in ("last", "pooled", "hidden"):
        raise params.error("layer", f"{_show(layer)} is not one of last, pooled, hidden")
    layer_idx = params.integer("layer_idx", 0) if params.has("layer_idx") else None
    folder = _version_folder(params, version, search)
    if folder is None:
        config = _read_json(bundled_config_dir(base) / "text_encoder" / "config.json")
        return TextEncoderSpec(str(node.raw("target")), config, None, layer, layer_idx)
    if not (folder / "config.json").is_file():
        raise params.error("version", f"names {folder}, which has no config.json")
    try:
        te_config = CLIPTextConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise params.error("version", f"names {folder}, whose config.json is not a CLIP text config: "
                                      f"{str(exc).splitlines()[0][:200]}") from None
    config = te_config.to_dict()
    config["architectures"] = ["CLIPTextModel"]
    tokenizer_files = ("vocab.json", "merges.txt")
    if not all((folder / f).is_file() for f in tokenizer_files):
        raise params.error("version", f"names {folder}, which lacks the tokenizer files {', '.join(tokenizer_files)}")
    return TextEncoderSpec(str(node.raw("target")), config, folder, layer, layer_idx)


def _open_clip_encoder(node: _Section, base: str) -> TextEncoderSpec:
    """An OpenCLIP text encoder: its sizes follow from the architecture name."""
    params = node.params()
    arch = params.text("arch", "ViT-H-14")
    if arch not in OPEN_CLIP_ARCHS:
        raise params.error("arch", f"{_show(arch)} is not a supported OpenCLIP architecture "
                                   f"({', '.join(OPEN_CLIP_ARCHS)})")
    folder, sub = OPEN_CLIP_ARCHS[arch]
    config = _read_json(bundled_config_dir(folder) / sub / "config.json")
    layer = params.text("layer", "last")
    if layer not in ("last", "penultimate"):
        raise params.error("layer", f"{_show(layer)} is not one of last, penultimate")
    return TextEncoderSpec(str(node.raw("target")), config, None, layer)


def _original(unet: dict[str, Any], ddconfig: dict[str, Any], scale_factor: float | None = None) -> dict[str, Any]:
    """The minimal original config diffusers' ``create_*_diffusers_config_from_ldm`` helpers read."""
    params: dict[str, Any] = {"unet_config": {"params": unet}, "first_stage_config": {"params": {"ddconfig": ddconfig}}}
    if scale_factor is not None:
        params["scale_factor"] = scale_factor
    return {"model": {"params": params}}


def _check_default(node: _Section, name: str, expected: object, reason: str = "") -> None:
    value = node.raw(name, expected)
    if value != expected or type(value) is not type(expected):
        raise node.error(name, f"{_show(value)} is not supported{reason} (only {_show(expected)})")


def _unet_config(unet: _Section, vae: _Section, family: Family, size_embed_dim: int | None) -> dict[str, Any]:
    """The diffusers ``UNet2DConditionModel`` config of an openaimodel.UNetModel's params."""
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    model_channels = unet.integer("model_channels")
    channel_mult = unet.integers("channel_mult")
    if model_channels < 1 or not channel_mult or min(channel_mult) < 1:
        raise unet.error("channel_mult", "and model_channels must be positive")
    if any((model_channels * m) % 32 for m in [1, *channel_mult]):
        raise unet.error("model_channels", f"{model_channels} and its multiples by channel_mult {channel_mult} must "
                                           "be multiples of 32 (the UNet's group norms)")
    levels = len(channel_mult)
    res_blocks = unet.int_or_list("num_res_blocks", levels)
    if len(set(res_blocks)) != 1 or res_blocks[0] < 1:
        raise unet.error("num_res_blocks", f"{res_blocks} is not supported: one positive count for every level")
    attention_resolutions = unet.integers("attention_resolutions")
    depths = unet.int_or_list("transformer_depth", levels, 1)
    middle_depth = unet.integer("transformer_depth_middle", depths[-1])
    if middle_depth != depths[-1]:
        raise unet.error("transformer_depth_middle", f"{middle_depth} differs from the last level's depth "
                                                     f"{depths[-1]}: not supported")
    context = unet.raw("context_dim")
    if isinstance(context, list) and context and len(set(map(str, context))) == 1:
        context = context[0]
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise unet.error("context_dim", f"must be a positive integer, not {_show(context)}")
    if not unet.flag("use_spatial_transformer", False):
        raise unet.error("use_spatial_transformer", "must be true: only text-conditioned UNets are supported")
    use_linear = unet.flag("use_linear_in_transformer", False)
    _check_default(unet, "dims", 2)
    _check_default(unet, "use_scale_shift_norm", False)
    _check_default(unet, "resblock_updown", False)
    _check_default(unet, "conv_resample", True)
    for name in ("n_embed", "num_attention_blocks"):
        if unet.has(name):
            raise unet.error(name, "is not supported")
    num_heads = unet.integer("num_heads", -1)
    head_channels = unet.integer("num_head_channels", -1)
    if num_heads == -1 and head_channels == -1:
        raise unet.error("num_heads", "or num_head_channels must be set")
    heads: list[int] = []
    for level, mult in enumerate(channel_mult):
        ch = model_channels * mult
        attends = 2 ** level in attention_resolutions or level == levels - 1  # the middle block always attends
        if head_channels != -1:
            if attends and (ch % head_channels or ch < head_channels):
                raise unet.error("num_head_channels", f"{head_channels} does not divide the {ch} channels of "
                                                      f"level {level}")
            heads.append(max(1, ch // head_channels))
        else:
            if attends and not 1 <= num_heads <= ch:
                raise unet.error("num_heads", f"{num_heads} does not fit the {ch} channels of level {level}")
            heads.append(num_heads)
    disable_sa = unet.raw("disable_self_attentions", None)
    if disable_sa is not None and (not isinstance(disable_sa, list) or len(disable_sa) != levels
                                   or not all(isinstance(v, bool) for v in disable_sa)):
        raise unet.error("disable_self_attentions", f"must be a list of {levels} booleans")
    num_classes = unet.raw("num_classes", None)
    if num_classes not in (None, "sequential"):
        raise unet.error("num_classes", f"{_show(num_classes)} is not supported")
    if (num_classes == "sequential") != (size_embed_dim is not None):
        raise unet.error("num_classes", "must be 'sequential' exactly for SDXL models")
    adm = unet.integer("adm_in_channels") if num_classes == "sequential" else None

    normalized: dict[str, Any] = {
        "in_channels": unet.integer("in_channels"), "out_channels": unet.integer("out_channels"),
        "model_channels": model_channels, "channel_mult": channel_mult, "num_res_blocks": res_blocks[0],
        "attention_resolutions": attention_resolutions, "transformer_depth": depths, "context_dim": context,
        "use_linear_in_transformer": use_linear, "num_heads": num_heads,
    }
    if disable_sa is not None:
        normalized["disable_self_attentions"] = disable_sa
    ddconfig = {"ch_mult": vae.section("ddconfig").integers("ch_mult")}
    config = create_unet_diffusers_config_from_ldm(_original(normalized, ddconfig), {})
    base = _read_json(bundled_config_dir(family.name) / "unet" / "config.json")
    config = {**base, **config}
    config["attention_head_dim"] = heads[0] if len(set(heads)) == 1 else heads
    config["transformer_layers_per_block"] = depths[0] if len(set(depths)) == 1 else depths
    config["mid_block_only_cross_attention"] = unet.flag("disable_middle_self_attn", False) or None
    config["sample_size"] = family.default_size // 2 ** (len(ddconfig["ch_mult"]) - 1)
    config["class_embed_type"] = None
    if size_embed_dim is not None:
        # SDXL: the pooled text embedding and six sizes, each embedded in size_embed_dim (Podell et al. 2023)
        config.update(addition_embed_type="text_time", addition_time_embed_dim=size_embed_dim,
                      projection_class_embeddings_input_dim=adm)
    else:
        config.update(addition_embed_type=None, addition_time_embed_dim=None,
                      projection_class_embeddings_input_dim=None)
    return config


def _vae_config(vae: _Section, family: Family, scale_factor: float) -> dict[str, Any]:
    """The diffusers ``AutoencoderKL`` config of an LDM/SGM first stage's params."""
    from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

    dd = vae.section("ddconfig")
    ch = dd.integer("ch")
    ch_mult = dd.integers("ch_mult")
    if ch < 1 or not ch_mult or min(ch_mult) < 1:
        raise dd.error("ch_mult", "and ch must be positive")
    if any((ch * m) % 32 for m in [1, *ch_mult]):
        raise dd.error("ch", f"{ch} and ch x ch_mult {ch_mult} must be multiples of 32 (the VAE's group norms)")
    z_channels = dd.integer("z_channels")
    embed_dim = vae.integer("embed_dim")
    if embed_dim != z_channels:
        raise vae.error("embed_dim", f"{embed_dim} differs from ddconfig.z_channels {z_channels}: not supported")
    _check_default(dd, "double_z", True)
    if dd.raw("attn_resolutions", []) != []:
        raise dd.error("attn_resolutions", "must be empty (attention only in the middle block)")
    for name, default in (("tanh_out", False), ("give_pre_end", False), ("resamp_with_conv", True),
                          ("use_linear_attn", False)):
        _check_default(dd, name, default)
    attn_type = dd.text("attn_type", "vanilla")
    if attn_type not in ("vanilla", "vanilla-xformers", "none"):
        raise dd.error("attn_type", f"{_show(attn_type)} is not supported (vanilla, vanilla-xformers, none)")
    ddconfig = {"ch": ch, "ch_mult": ch_mult, "in_channels": dd.integer("in_channels"),
                "out_ch": dd.integer("out_ch"), "z_channels": z_channels,
                "num_res_blocks": dd.integer("num_res_blocks")}
    config = create_vae_diffusers_config_from_ldm(_original({}, ddconfig, scale_factor), {})
    base = _read_json(bundled_config_dir(family.name) / "vae" / "config.json")
    config = {**base, **config}
    config["sample_size"] = family.default_size
    config["mid_block_add_attention"] = attn_type != "none"
    return config

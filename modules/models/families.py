"""Model families (SD 1.x, 2.x, XL and their inpainting variants): detection and the bundled diffusers configs.

Detection looks at key prefixes, which tell the text encoder and hence the family on real and narrow replicas alike,
and at the UNet's input channels (9 = inpainting). A config beside the checkpoint overrides it: a diffusers config
folder of the same name, or A1111's ``<name>.yaml`` (original LDM/SGM config).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modules.errors import ModelLoadError

CONFIG_ROOT = Path(__file__).parent / "configs"
UNET_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"


@dataclass(frozen=True)
class Family:
    name: str
    base: str  # sd1, sd2, sdxl
    label: str
    inpaint: bool = False
    default_size: int = 512

    @property
    def is_xl(self) -> bool:
        return self.base == "sdxl"

    @property
    def pad_token(self) -> str:
        return "<|endoftext|>" if self.base == "sd1" else "!"


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd1", "sd1", "SD 1.x"),
        Family("sd1-inpaint", "sd1", "SD 1.x inpainting", inpaint=True),
        Family("sd2", "sd2", "SD 2.x"),
        Family("sd2-v", "sd2", "SD 2.x 768-v", default_size=768),
        Family("sd2-inpaint", "sd2", "SD 2.x inpainting", inpaint=True),
        Family("sdxl", "sdxl", "SDXL", default_size=1024),
        Family("sdxl-inpaint", "sdxl", "SDXL inpainting", inpaint=True, default_size=1024),
    )
}


def bundled_config_dir(family: str) -> Path:
    return CONFIG_ROOT / family


def _family_name(base: str, inpaint: bool, v_prediction: bool) -> str:
    if inpaint:
        return f"{base}-inpaint"
    if base == "sd2" and v_prediction:
        return "sd2-v"
    return base


def detect_base(keys: Collection[str]) -> str:
    """sd1, sd2 or sdxl from the text encoder key prefixes of an original-layout state dict."""
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise ModelLoadError("not a Stable Diffusion checkpoint: it has no model.diffusion_model.* weights")
    if has("conditioner.embedders.1.model."):
        return "sdxl"
    if has("conditioner.embedders.0.model."):
        raise ModelLoadError("SDXL refiner checkpoints are not supported yet")
    if has("cond_stage_model.model."):
        return "sd2"
    if has("cond_stage_model.transformer."):
        return "sd1"
    raise ModelLoadError("unknown checkpoint family: no SD 1.x, 2.x or XL text encoder weights found")


_V_NAME = re.compile(r"(768-v|v-?pred|vpred|v_pred)", re.IGNORECASE)


def detect_family(shapes: Mapping[str, tuple[int, ...]], name: str = "",
                  metadata: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(family, prediction_type override or None) of a checkpoint from its key shapes, file name and metadata."""
    base = detect_base(shapes.keys())
    in_channels = shapes.get(UNET_IN_KEY, (0, 4))[1]
    if in_channels == 8:
        raise ModelLoadError("instruct-pix2pix checkpoints (8 input channels) are not supported yet")
    if in_channels not in (4, 9):
        raise ModelLoadError(f"unexpected UNet input channels {in_channels}")
    meta = metadata or {}
    v_prediction = (
        "v_pred" in shapes
        or str(meta.get("modelspec.prediction_type", "")).lower() in ("v", "v_prediction")
        or bool(_V_NAME.search(name))
    )
    family = _family_name(base, in_channels == 9, v_prediction)
    prediction = "v_prediction" if v_prediction and family != "sd2-v" else None
    return family, prediction


def family_from_ldm_yaml(path: Path) -> tuple[str, str | None]:
    """(family, prediction override) from an original LDM/SGM inference yaml (A1111's ``<name>.yaml``).

    A quick look at a few keys only; :func:`modules.models.ldm_yaml.read_ldm_yaml` reads the whole config.
    """
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        params: dict[str, Any] = doc["model"]["params"]
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read the model config {path.name}: {exc}") from None
    except (KeyError, TypeError):
        raise ModelLoadError(f"model config {path.name}: model.params is missing") from None
    v_prediction = params.get("parameterization") == "v"
    if "network_config" in params:
        unet = params["network_config"].get("params", {})
        base = "sdxl"
        conditioner = params.get("conditioner_config") or params.get("conditioner") or {}
        models = (conditioner.get("params") or {}).get("emb_models") if isinstance(conditioner, dict) else None
        if isinstance(models, list) and len(models) < 3:
            raise ModelLoadError("SDXL refiner configs are not supported yet")
    else:
        unet = params.get("unet_config", {}).get("params", {})
        base = "sd2" if int(unet.get("context_dim", 768)) == 1024 else "sd1"
    in_channels = int(unet.get("in_channels", 4))
    if in_channels not in (4, 9):
        raise ModelLoadError(f"{path.name}: models with {in_channels} UNet input channels are not supported yet")
    family = _family_name(base, in_channels == 9, v_prediction)
    prediction = "v_prediction" if v_prediction and family != "sd2-v" else None
    return family, prediction


def config_beside(checkpoint: Path) -> Path | None:
    """A diffusers config folder named like the checkpoint (``model.safetensors`` -> ``model/model_index.json``)."""
    folder = checkpoint.with_suffix("")
    return folder if (folder / "model_index.json").is_file() else None


def yaml_beside(checkpoint: Path) -> Path | None:
    path = checkpoint.with_suffix(".yaml")
    return path if path.is_file() else None

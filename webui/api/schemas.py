"""A1111 v1.10.1 request bodies as its clients send them: unknown fields ignored, ``null`` for any optional one.

The generation parameters' fields come from the parameter table (:func:`modules.param_io.api_fields`); the classes
below declare only the fields that are not parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from modules.param_io import api_fields


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerationBody(_Body):
    """The fields of A1111's txt2img and img2img bodies that are not generation parameters."""

    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    s_min_uncond: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: str | None = None


class _Txt2ImgExtras(GenerationBody):
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    firstpass_image: str | None = None


class _Img2ImgExtras(GenerationBody):
    init_images: list[str] | None = None
    mask: str | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = False


def _fields(kind: str) -> dict[str, Any]:
    return {name: (kind_type | None, None) for name, (kind_type, _default) in api_fields(kind).items()}


if TYPE_CHECKING:
    Txt2ImgBody = _Txt2ImgExtras
    Img2ImgBody = _Img2ImgExtras
else:
    Txt2ImgBody = create_model("Txt2ImgBody", __base__=_Txt2ImgExtras, **_fields("txt2img"))
    Img2ImgBody = create_model("Img2ImgBody", __base__=_Img2ImgExtras, **_fields("img2img"))

# A1111 fields accepted and not acted on (README lists them); the others are honoured.
IGNORED_FIELDS: tuple[str, ...] = (
    "do_not_save_samples", "do_not_save_grid", "s_min_uncond", "override_settings_restore_afterwards",
    "refiner_checkpoint", "refiner_switch_at", "disable_extra_networks", "comments", "force_task_id",
    "firstphase_width", "firstphase_height", "firstpass_image", "latent_mask", "image_cfg_scale", "restore_faces")


class OptionsBody(BaseModel):
    """``POST /sdapi/v1/options``: any option keys."""

    model_config = ConfigDict(extra="allow")

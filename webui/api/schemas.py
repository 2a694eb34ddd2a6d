"""A1111 v1.10.1 request bodies as its clients send them: unknown fields ignored, ``null`` for any optional one.

The generation parameters' fields come from the parameter table (:func:`modules.param_io.api_fields`); the classes
below declare only the fields that are not parameters.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    create_model,
    model_validator,
)
from typing_extensions import Self

from modules.errors import ValidationError
from modules.param_io import api_fields

MAX_DEPTH = 32  # nesting of lists and objects in a body (comments, override_settings, script_args)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _join(parent: str, key: object) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _top(path: str) -> str:
    return re.split(r"[.\[]", path, maxsplit=1)[0] or "body"


def clean_value(value: Any, path: str, replaced: list[str], depth: int = 0) -> Any:
    """``value`` with lone surrogates replaced by U+FFFD (their paths added to ``replaced``); a
    :class:`ValidationError` naming the field for NaN, Infinity or nesting deeper than :data:`MAX_DEPTH`."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            replaced.append(path or "body")
            return _SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"{path or 'body'}: {value} is not a valid number; give a finite number",
                              field=path or "body")
    if isinstance(value, (dict, list)) and depth >= MAX_DEPTH:
        raise ValidationError(f"{_top(path)}: nested more than {MAX_DEPTH} levels deep", field=_top(path))
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            key = clean_value(key, _join(path, "<key>"), replaced, depth)
            out[key] = clean_value(item, _join(path, key), replaced, depth + 1)
        return out
    if isinstance(value, list):
        return [clean_value(v, _join(path, i), replaced, depth + 1) for i, v in enumerate(value)]
    return value


class ClientBody(BaseModel):
    """A JSON body as a client sent it, made safe at the edge: text is valid Unicode (lone surrogates replaced by
    U+FFFD, noted in :attr:`text_warnings`), numbers are finite and nesting is bounded, or the request is refused
    with a 422 naming the field."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    _replaced: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _clean(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        replaced: list[str] = []
        if isinstance(data, dict):
            data = clean_value(data, "", replaced)
        body = handler(data)
        body._replaced = replaced
        return body

    @property
    def text_warnings(self) -> list[str]:
        return [f"{path}: invalid characters (lone surrogates) replaced with U+FFFD"
                for path in dict.fromkeys(self._replaced)]


class GenerationBody(ClientBody):
    """The fields of A1111's txt2img and img2img bodies that are not generation parameters."""

    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
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
    "do_not_save_samples", "do_not_save_grid", "override_settings_restore_afterwards",
    "disable_extra_networks", "comments", "force_task_id",
    "firstphase_width", "firstphase_height", "firstpass_image", "image_cfg_scale")


class OptionsBody(ClientBody):
    """``POST /sdapi/v1/options``: any option keys."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

"""Conversions derived from the parameter table: request -> infotext, infotext -> field values, API body / form /
settings values -> request. Values are coerced to the fields' types with messages naming the field."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from modules import infotext
from modules.errors import ValidationError
from modules.params import PARAMS, REQUEST_DEFAULT, InfotextContext, Keys, Param, by_field, params_for
from modules.requests import GenerationRequest, Img2ImgRequest
from modules.version import VERSION

R = TypeVar("R", bound=GenerationRequest)
_LAYOUT_KEYS = frozenset({"Prompt", "Negative prompt"})


# -- request -> infotext -----------------------------------------------------------------------------------------
def kind_of(req: GenerationRequest) -> str:
    return "img2img" if isinstance(req, Img2ImgRequest) else "txt2img"


def infotext_params(req: GenerationRequest, ctx: InfotextContext, extra: Mapping[str, object] | None = None
                    ) -> dict[str, object]:
    """The ``Key: value`` part of an image's infotext in A1111's order; ``extra`` (network hashes...) after the
    parameters' own keys, then ``Version``."""
    out: dict[str, object] = {}
    for p in params_for(kind_of(req)):
        if p.key is None or p.key in _LAYOUT_KEYS:
            continue
        value = p.write(req, ctx) if p.write is not None else getattr(req, p.field)
        if isinstance(value, Keys):
            out.update({k: v for k, v in value.items() if v is not None})
        elif value is not None:
            out[p.key] = value
    out.update({k: v for k, v in (extra or {}).items() if v is not None})
    out["Version"] = VERSION
    return infotext.order_params(out)


def build_infotext(req: GenerationRequest, ctx: InfotextContext, prompt: str, negative: str,
                   extra: Mapping[str, object] | None = None) -> str:
    """One image's infotext; ``prompt``/``negative`` are its own prompts (a batch may differ per image)."""
    return infotext.format_infotext(prompt, negative, infotext_params(req, ctx, extra))


# -- infotext -> field values ------------------------------------------------------------------------------------
def keys_written(text: str) -> frozenset[str]:
    """The parameter keys ``text`` really has (not the defaults the parser adds), ``WxH`` keys split, plus the
    prompts (always present)."""
    lines = text.strip().split("\n")
    keys = {m[0].strip() for m in infotext.RE_PARAM.findall(lines[-1])} if lines else set()
    if len(keys) < 3:  # not a parameters line (A1111's rule)
        keys = set()
    out = set(keys) | _LAYOUT_KEYS
    for key in keys:
        out |= {f"{key}-1", f"{key}-2"}
    return frozenset(out)


def _default_read(p: Param, parsed: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
    if p.key is None:
        return {}
    if p.pair is not None:
        if f"{p.key}-1" in written and f"{p.key}-1" in parsed:
            return {p.field: parsed[f"{p.key}-1"], p.pair: parsed[f"{p.key}-2"]}
        return {}
    return {p.field: parsed[p.key]} if p.key in written and p.key in parsed else {}


def read_infotext(text: str, kind: str = "txt2img") -> tuple[dict[str, object], list[str]]:
    """(request field values the infotext states, notes about values that could not be used).

    Only what the text says is returned, coerced to the fields' types; a value of the wrong type or out of range
    (``CFG scale: nan``) is left out with a note naming it. ``checkpoint`` holds the model hash (or name).
    """
    parsed = infotext.parse_infotext(text)
    written = keys_written(text)
    values: dict[str, object] = {}
    notes: list[str] = []
    for p in params_for(kind):
        raw = p.read(parsed, written) if p.read is not None else _default_read(p, parsed, written)
        for name, value in raw.items():
            try:
                values[name] = coerce(by_field(name), value)
            except ValidationError as exc:
                notes.append(f"ignored {exc}")
    if "Model" in written and parsed.get("Model") and "Model hash" in written:
        values["_model_name"] = str(parsed["Model"])  # a second way to find the checkpoint when the hash fails
    return values, notes


# -- values -> request -------------------------------------------------------------------------------------------
def _int(value: object, name: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = math.nan
        if number.is_integer():
            return int(number)
    raise ValidationError(f"{name}: expected a whole number, got {value!r}", field=name)


def _float(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValidationError(f"{name}: expected a number, got {value!r}", field=name) from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValidationError(f"{name}: expected a finite number, got {value!r}", field=name)
    return number


def _bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValidationError(f"{name}: expected true or false, got {value!r}", field=name)


def _str(value: object, name: str) -> str:
    if isinstance(value, (dict, list, tuple, set)) or value is None:
        raise ValidationError(f"{name}: expected text, got {value!r}", field=name)
    return str(value)


def _tuple(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable):
        return tuple(_str(v, name) for v in value)
    raise ValidationError(f"{name}: expected a list of names, got {value!r}", field=name)


_CONVERTERS: dict[type, Callable[[object, str], object]] = {
    int: _int, float: _float, bool: _bool, str: _str, tuple: _tuple}


def coerce(p: Param, value: object) -> object:
    """``value`` as the type of ``p``'s field; :class:`ValidationError` naming the field when it cannot be."""
    if value is None and p.nullable:
        return None
    if value is None:
        raise ValidationError(f"{p.field}: a value is required", field=p.field)
    return _CONVERTERS[p.type](value, p.field)


def request_from_values(cls: type[R], values: Mapping[str, object], base: R | None = None) -> R:
    """A ``cls`` request from field values (coerced), on top of ``base`` (default: ``cls()``)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    changes: dict[str, Any] = {}
    for name, value in values.items():
        if name not in fields:
            raise ValidationError(f"{name}: not a parameter of {cls.__name__}", field=name)
        try:
            p = by_field(name)
        except KeyError:  # images and server-set fields pass as they are
            changes[name] = value
            continue
        changes[name] = coerce(p, value)
    return dataclasses.replace(base if base is not None else cls(), **changes)


def setting_values(get: Callable[[str], object], kind: str) -> dict[str, object]:
    """The request fields that A1111 takes from the settings (clip skip, RNG, ENSD, VAE; not the checkpoint, which
    a job resolves when it runs), as the settings hold them now."""
    out: dict[str, object] = {}
    for p in params_for(kind):
        if p.setting is not None and p.field != "checkpoint":
            out[p.field] = get(p.setting)
    return out


def settings_to_fields(overrides: Mapping[str, object], kind: str) -> dict[str, object]:
    """The request fields set by ``override_settings`` entries (``CLIP_stop_at_last_layers`` -> ``clip_skip``)."""
    by_setting = {p.setting: p.field for p in params_for(kind) if p.setting is not None}
    return {by_setting[k]: v for k, v in overrides.items() if k in by_setting}


def api_fields(kind: str) -> dict[str, tuple[type, object]]:
    """The A1111 request body fields the parameters of ``kind`` read, name -> (type, default); all optional."""
    out: dict[str, tuple[type, object]] = {}
    for p in params_for(kind):
        for name in p.api_names:
            kind_type: Any = list[str] if p.type is tuple else p.type
            out.setdefault(name, (kind_type, None))
    return out


def api_values(body: Mapping[str, object], kind: str) -> dict[str, object]:
    """Request field values from an A1111 body: for each parameter the first non-null of its API names, else
    A1111's API default (fields without one keep the request's default)."""
    out: dict[str, object] = {}
    for p in params_for(kind):
        if not p.api_names:
            continue
        value = next((body[n] for n in p.api_names if body.get(n) is not None), None)
        if value is None:
            if p.api_default is REQUEST_DEFAULT:
                continue
            value = p.api_default
        out[p.field] = p.from_api(value) if p.from_api is not None else value
    return out


def api_echo(body: Mapping[str, object], kind: str) -> dict[str, object]:
    """The body as A1111 echoes it in ``parameters``: every field, A1111's defaults filled in."""
    out = dict(body)
    for p in params_for(kind):
        if p.api_names and out.get(p.api_names[0]) is None and p.api_default is not REQUEST_DEFAULT:
            out[p.api_names[0]] = list(p.api_default) if isinstance(p.api_default, tuple) else p.api_default
    return out


def cli_values(options: Mapping[str, object]) -> dict[str, object]:
    """Request field values from the CompVis command line's options (``--ddim_steps`` -> ``steps``, ...)."""
    out: dict[str, object] = {}
    for p in PARAMS:
        if p.cli is not None:
            dest = p.cli.lstrip("-").replace("-", "_")
            if options.get(dest) is not None:
                out[p.field] = options[dest]
    return out

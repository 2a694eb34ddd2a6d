"""The old shape of an infotext's values: (request fields, setting overrides). Derived from the parameter table
(:func:`modules.param_io.read_infotext`); kept for callers that pick the model out of the overrides."""

from __future__ import annotations

from typing import Any

from modules.param_io import read_infotext
from modules.params import PARAMS


def fields_from_infotext(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request fields, setting overrides) described by an infotext; model names come as ``sd_model_checkpoint``
    (and ``_model_name`` when the text has both a hash and a name)."""
    values = {**read_infotext(text, "img2img")[0], **read_infotext(text, "txt2img")[0]}
    settings = {p.field: p.setting for p in PARAMS if p.setting is not None}
    fields: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for name, value in values.items():
        if name == "_model_name":
            overrides[name] = value
        elif name in settings:
            overrides[str(settings[name])] = value
        else:
            fields[name] = value
    return fields, overrides

"""Corrections to A1111-format texts other writers get subtly wrong, so that pasting them reproduces the image.

**Hires fix size.** A1111 writes ``Size`` as the *first-pass* size and the hires target either as ``Hires upscale``
(a factor) or as ``Hires resize`` (``WxH``); pasting sets width/height from ``Size`` and the hires fields from the
others (``infotext_utils.parse_generation_parameters``), and a non-zero ``Hires resize`` wins over the factor
(``processing.calculate_target_resolution``). Some writers, Civitai's generator among them, record the final,
hires-fixed size in ``Size`` instead. The first pass is recovered only when the text or the image proves it
(:func:`first_pass_fix`):

- ``Hires resize`` equal to ``Size`` together with a ``Hires upscale`` factor above 1 (A1111 never writes both):
  ``Size`` is the target and the first pass is ``Size / factor``; ``Hires resize`` stays, so the target is exact.
- a ``Hires upscale`` factor above 1, no other ``Hires resize``, and the image itself measures exactly ``Size``
  (an A1111 image would measure ``Size x factor``): the first pass is ``Size / factor``.
- ``Hires resize`` equal to ``Size`` with no factor: the first-pass size was not recorded; nothing is changed and
  a warning says so.

The first pass is rounded to a multiple of 8; when ``first pass x factor`` then misses the final size, ``Hires
resize`` is set to the final size so the second pass still lands on it. ``First pass size`` (hires fix before
A1111 1.0) is left to :func:`modules.infotext.parse_infotext`, which converts it as A1111 does.

**ComfyUI sampler names.** Savers that write A1111 text from ComfyUI (Image Saver: ``Version: ComfyUI``) write a
sampler A1111 does not know as ``<comfy sampler>_<comfy scheduler>`` (``res_multistep_beta``); it is split into
A1111's ``Sampler`` and ``Schedule type`` (:func:`comfy_sampler_fix`).
"""

from __future__ import annotations

import math
from typing import Any

from modules import infotext
from modules.metadata import names

_MAX_FACTOR = 16.0  # a larger "Hires upscale" is not taken as evidence of anything
_COMFY_SCHEDULERS = ("sgm_uniform", "ddim_uniform", "kl_optimal", "linear_quadratic", "align_your_steps",
                     "karras", "exponential", "simple", "normal", "beta")


def set_params(text: str, changes: dict[str, Any]) -> str:
    """``text`` with keys of its parameters line replaced (``None`` removes the key); new keys go before
    ``Version`` (or at the end). Other pairs keep their exact spelling."""
    head, sep, last = text.strip().rpartition("\n")
    pairs: list[tuple[str, str]] = []
    todo = dict(changes)
    for key, raw in infotext.RE_PARAM.findall(last):
        key = key.strip()
        if key in todo:
            value = todo.pop(key)
            if value is not None:
                pairs.append((key, infotext.quote(value)))
        else:
            pairs.append((key, raw.strip()))
    at = next((i for i, (k, _) in enumerate(pairs) if k == "Version"), len(pairs))
    pairs[at:at] = [(k, infotext.quote(v)) for k, v in todo.items() if v is not None]
    line = ", ".join(f"{k}: {v}" for k, v in pairs)
    return f"{head}{sep}{line}"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _factor(params: dict[str, Any]) -> float:
    value = params.get("Hires upscale")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return 0.0
    return float(value) if math.isfinite(value) and value <= _MAX_FACTOR else 0.0


def first_pass_fix(params: dict[str, Any], image: tuple[int | None, int | None]) -> tuple[dict[str, Any], str]:
    """(changes for :func:`set_params`, note) when ``Size`` holds the hires-fixed size (see the module text);
    ({}, "") when the text is consistent, ({}, warning) when the first pass cannot be known."""
    width, height = _int(params.get("Size-1")), _int(params.get("Size-2"))
    resize = (_int(params.get("Hires resize-1")), _int(params.get("Hires resize-2")))
    factor = _factor(params)
    if not width or not height or "First pass size-1" in params:
        return {}, ""
    same_resize = resize == (width, height)
    pixels_are_size = image == (width, height)
    if factor > 1 and (same_resize or (resize == (0, 0) and pixels_are_size)):
        first_w, first_h = (max(8, round(v / factor / 8) * 8) for v in (width, height))
        changes: dict[str, Any] = {"Size": f"{first_w}x{first_h}"}
        if same_resize or (int(first_w * factor), int(first_h * factor)) != (width, height):
            changes["Hires resize"] = f"{width}x{height}"
        return changes, (f"Size {width}x{height} is the hires-fixed size; the first pass was {first_w}x{first_h} "
                         "(shown and sent as Size)")
    if same_resize and factor <= 1 and "Denoising strength" in params:
        return {}, (f"Size {width}x{height} is the hires-fixed size and the first-pass size was not recorded; "
                    "pasting will not give the same image")
    return {}, ""


def comfy_sampler_fix(params: dict[str, Any]) -> dict[str, Any]:
    """Changes splitting a ComfyUI ``<sampler>_<scheduler>`` name A1111 does not know; {} when nothing to do."""
    raw = params.get("Sampler")
    if not isinstance(raw, str) or " " in raw.strip():
        return {}
    for scheduler in _COMFY_SCHEDULERS:
        if raw.endswith("_" + scheduler) and len(raw) > len(scheduler) + 1:
            sampler, schedule = names.sampler(raw[: -len(scheduler) - 1], scheduler)
            return {"Sampler": sampler, "Schedule type": schedule}
    sampler, schedule = names.sampler(raw)
    return {"Sampler": sampler} if sampler != raw else {}

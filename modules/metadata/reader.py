"""``read_metadata``: the container's text items, then the first format that recognises them, as A1111 parameters.

Order: A1111-style ``parameters`` (text, or Fooocus/Ruined Fooocus/SwarmUI JSON), InvokeAI, NovelAI, Easy
Diffusion, then EXIF/XMP/comment text (JPEG and WebP writers: A1111 text, Draw Things or other tools' JSON,
``{"prompt": graph, "workflow": ...}`` of ComfyUI's SaveImage Plus), then ComfyUI ``prompt``/``workflow`` (also
from EXIF ``Prompt:{...}``/``Workflow:{...}`` strings), and last the hidden "stealth" bits of lossless images. A
ComfyUI save node's A1111 text (Image Saver) thus wins over its graph, as ``parameters`` does in PNGs. Nothing
recognised: the raw items only, never an error. A1111-format texts go through :mod:`fixups` (hires first-pass
size, ComfyUI sampler names) before they are shown and sent.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from modules import infotext
from modules.metadata import tools
from modules.metadata.a1111 import looks_like_infotext, parsable, parse_a1111
from modules.metadata.comfy_workflow import workflow_to_graph
from modules.metadata.comfyui import parse_prompt_graph
from modules.metadata.containers import read_container
from modules.metadata.fixups import comfy_sampler_fix, first_pass_fix, set_params
from modules.metadata.model import Container, ImageMetadata, Parsed
from modules.metadata.stealth import read_stealth

log = logging.getLogger(__name__)
_TEXT_SOURCES = ("UserComment", "XMP:UserComment", "XMP:parameters", "ImageDescription", "comment", "XPComment",
                 "XMP:description")
_COMFY_EXIF = re.compile(r"^\s*(prompt|workflow)\s*:\s*(?=[{\[])", re.I)


def _json(text: str | None, key: str, notes: list[str]) -> Any:
    """The JSON value of an item that looks like JSON; ``None`` (with a note) when it is not valid JSON."""
    if not text or text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        notes.append(f"{key}: invalid JSON; shown as raw text")
        return None


def _is_comfy_graph(value: Any) -> bool:
    return isinstance(value, dict) and any(isinstance(v, dict) and "class_type" in v for v in value.values())


def _from_json(data: Any, key: str) -> Parsed | None:
    """A JSON payload some tool wrote into ``parameters``, an EXIF comment or hidden data."""
    if not isinstance(data, dict):
        return None
    if "sui_image_params" in data:
        return tools.parse_swarmui(data, key)
    if _is_comfy_graph(data):
        return parse_prompt_graph(data, key)
    if _is_comfy_graph(data.get("prompt")) or _is_workflow(data.get("workflow")):
        return _comfy_graphs(data.get("prompt"), data.get("workflow"), key)
    if tools.is_ruined_fooocus(data):
        return tools.parse_ruined_fooocus(data, key)
    if "c" in data and ("uc" in data or "scale" in data):
        return tools.parse_draw_things(data, key)
    if "prompt" in data and ("guidance_scale" in data or "base_model" in data):
        parsed = tools.parse_fooocus(data)
        parsed.source = key
        return parsed
    if "positive_prompt" in data:
        parsed = tools.parse_invokeai_metadata(data)
        parsed.source = key
        return parsed
    return None


def _is_workflow(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("nodes"), list)


def _comfy_graphs(graph: Any, workflow: Any, source: str | None = None) -> Parsed | None:
    """The API graph's reading; the editor workflow's when the graph is missing or gives nothing."""
    parsed = parse_prompt_graph(graph, source or "prompt") if _is_comfy_graph(graph) else None
    if parsed is not None and parsed.params:
        return parsed
    if _is_workflow(workflow):
        from_workflow = parse_prompt_graph(workflow_to_graph(workflow), source or "workflow")
        if from_workflow.params or parsed is None:
            return from_workflow
    return parsed


def _comfyui(items: dict[str, str], notes: list[str]) -> Parsed | None:
    return _comfy_graphs(_json(items.get("prompt"), "prompt", notes), _json(items.get("workflow"), "workflow", notes))


def _novelai(items: dict[str, str], size: tuple[int | None, int | None], notes: list[str]) -> Parsed | None:
    comment = _json(items.get("Comment"), "Comment", notes)
    if not isinstance(comment, dict):
        return None
    if items.get("Software") == "NovelAI" or ("uc" in comment and "sampler" in comment):
        return tools.parse_novelai(items, comment, size)
    return None


def _detect(c: Container, notes: list[str]) -> Parsed | None:
    items = c.items
    scheme = items.get("fooocus_scheme") or items.get("MakerNote")
    params_text = items.get("parameters")
    if params_text is not None:
        data = _json(params_text, "parameters", notes)
        if data is not None:
            parsed = _from_json(data, "parameters")
            if parsed is not None:
                return parsed
        else:
            return parse_a1111(params_text, "parameters", "Fooocus" if scheme == "a1111" else None)
    invoke = _json(items.get("invokeai_metadata"), "invokeai_metadata", notes)
    if isinstance(invoke, dict):
        return tools.parse_invokeai_metadata(invoke)
    sd_meta = _json(items.get("sd-metadata"), "sd-metadata", notes)
    if isinstance(sd_meta, dict) and isinstance(sd_meta.get("image"), dict):
        return tools.parse_sd_metadata(sd_meta)
    if items.get("Dream"):
        return tools.parse_dream(items["Dream"])
    novelai = _novelai(items, (c.width, c.height), notes)
    if novelai is not None:
        return novelai
    if tools.is_easy_diffusion(items):
        return tools.parse_easy_diffusion(items)
    for key in _TEXT_SOURCES:
        text = items.get(key)
        if not text:
            continue
        data = _json(text, key, notes)
        parsed = _from_json(data, key) if data is not None else None
        if parsed is not None:
            return parsed
        if data is None and looks_like_infotext(text):
            hint = "Fooocus" if scheme == "a1111" or items.get("Software", "").startswith("Fooocus") else None
            return parse_a1111(text, key, hint)
    if "prompt" in items or "workflow" in items:
        return _comfyui(items, notes)
    return None


def _split_comfy_exif(c: Container) -> None:
    """ComfyUI's WebP/JPEG savers store ``prompt:{...}`` and ``workflow:{...}`` in EXIF Make/Model etc."""
    for key in ("Model", "Make", "ImageDescription", "UserComment", "Software", "Artist"):
        match = _COMFY_EXIF.match(c.items.get(key, ""))
        if match and match.group(1).lower() not in c.items:
            c.add(match.group(1).lower(), c.items[key][match.end():])


def fix_a1111(text: str, tool: str | None, image: tuple[int | None, int | None], notes: list[str]) -> str:
    """An A1111-format text with :mod:`fixups` applied (ComfyUI sampler names when ComfyUI wrote it, the hires
    first-pass size); what was changed or could not be is added to ``notes``."""
    if not text.strip():
        return text
    params = infotext.parse_infotext(text)
    changes = comfy_sampler_fix(params) if tool == "ComfyUI" else {}
    if changes:
        notes.append(f"ComfyUI sampler {params.get('Sampler')!r} shown as A1111's sampler and schedule type")
    size_changes, note = first_pass_fix(params, image)
    if note:
        notes.append(note)
    changes.update(size_changes)
    return set_params(text, changes) if changes else text


def _clean(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, int, float)):
        return value
    return str(value)


def _finish(md: ImageMetadata, parsed: Parsed) -> None:
    md.tool, md.source = parsed.tool, parsed.source
    md.warnings.extend(parsed.warnings)
    if parsed.infotext is not None:
        md.infotext, md.verbatim = fix_a1111(parsed.infotext, parsed.tool, (md.width, md.height), md.warnings), True
        md.parameters = infotext.parse_infotext(md.infotext) if md.infotext else {}
        return
    params = infotext.order_params({k: _clean(v) for k, v in parsed.params.items() if v not in (None, "")})
    md.infotext = infotext.format_infotext(parsed.prompt, parsed.negative, params)
    if not parsable(md.infotext):
        raise ValueError("the generation parameters are too irregular to show as infotext")
    if len(params) >= 3:
        md.parameters = infotext.parse_infotext(md.infotext)
    else:
        md.parameters = {"Prompt": parsed.prompt.strip(), "Negative prompt": parsed.negative.strip(), **params}


def _stealth(data: bytes, c: Container, md: ImageMetadata, notes: list[str]) -> Parsed | None:
    text, found = read_stealth(data, c.width, c.height)
    md.warnings.extend(found)
    if text is None:
        return None
    md.warnings.append("generation data read from hidden pixel bits (stealth pnginfo)")
    payload = _json(text, "stealth", notes)
    if isinstance(payload, dict):
        for key, value in payload.items():
            c.add(str(key), value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        if "Comment" in payload or "Description" in payload:
            return _detect(c, notes)
        return _from_json(payload, "stealth")
    key = "parameters" if "parameters" not in c.items else "stealth_pnginfo"
    c.add(key, text)
    return parse_a1111(text, key)


def read_metadata(data: bytes) -> ImageMetadata:
    """Generation metadata of an image file's bytes (PNG, JPEG, WebP, or any format Pillow identifies).

    Never raises for damaged or hostile files: problems go to ``errors``/``warnings``. Raises
    :class:`modules.errors.ValidationError` (field ``image``) only when ``data`` is not an image at all.
    """
    c = read_container(bytes(data))
    md = ImageMetadata(format=c.format, width=c.width, height=c.height, errors=c.errors, warnings=c.warnings)
    notes: list[str] = []
    try:
        _split_comfy_exif(c)
        parsed = _detect(c, notes)
        if parsed is None and c.stealth_candidate:
            parsed = _stealth(data, c, md, notes)
        if parsed is not None:
            _finish(md, parsed)
    except Exception as exc:  # noqa: BLE001 - odd metadata must never make reading fail; the raw items remain
        log.warning("image metadata could not be interpreted", exc_info=True)
        md.tool, md.parameters, md.infotext, md.source, md.verbatim = None, {}, "", None, False
        md.errors.append(f"generation data could not be interpreted ({type(exc).__name__}); raw items shown")
    md.items = dict(c.items)
    md.warnings.extend(n for n in notes if n not in md.warnings)
    return md


def text_to_infotext(text: str) -> str:
    """A pasted metadata text as A1111 infotext: ComfyUI ``prompt``/``workflow`` JSON, SwarmUI, Fooocus, Ruined
    Fooocus, InvokeAI JSON or an InvokeAI ``Dream`` string are converted; A1111 text gets the :mod:`fixups` the
    text alone proves (hires size recorded as ``Size``, ComfyUI sampler names); anything else comes back unchanged."""
    stripped = (text or "").strip()
    notes: list[str] = []
    try:
        if stripped.startswith('"') and re.search(r"\s-s\s*\d", stripped):
            parsed: Parsed | None = tools.parse_dream(stripped)
        else:
            data = _json(stripped, "pasted text", notes)
            parsed = _from_json(data, "pasted text") if data is not None else None
            if parsed is None and isinstance(data, dict) and isinstance(data.get("nodes"), list):
                parsed = parse_prompt_graph(workflow_to_graph(data), "workflow")
            if parsed is None and isinstance(data, dict) and isinstance(data.get("image"), dict):
                parsed = tools.parse_sd_metadata(data)
        if parsed is None and looks_like_infotext(stripped):
            tool = "ComfyUI" if re.search(r"\bVersion: ComfyUI\b", stripped.rpartition("\n")[2]) else None
            return fix_a1111(text, tool, (None, None), [])
        if parsed is None or not (parsed.params or parsed.prompt):
            return text
        md = ImageMetadata()
        _finish(md, parsed)
    except Exception:  # noqa: BLE001 - not a format we know after all: leave the text alone
        return text
    return md.infotext

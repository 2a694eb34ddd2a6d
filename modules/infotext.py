"""A1111's "infotext": the generation parameters text stored in images and shown under the gallery.

Layout (A1111 1.10 ``processing.create_infotext``)::

    <prompt, may span several lines>
    Negative prompt: <negative prompt, may span several lines>     (omitted when empty)
    Key: value, Key: value, ...                                     (one last line)

Values are JSON-quoted when they contain ``,`` ``:`` or a newline. The parser follows
``infotext_utils.parse_generation_parameters`` but returns typed values (see :func:`parse_infotext`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

KEY_ORDER: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight", "Clip skip",
    "ENSD", "Token merging ratio", "Token merging ratio hr", "Init image hash", "RNG", "NGMS", "Tiling",
    # extra generation params (Hires ..., Lora hashes, ...) go here, in the order given
    "Version", "User",
)
_TAIL_KEYS: tuple[str, ...] = ("Version", "User")

SCHEDULE_TYPES: tuple[str, ...] = (
    "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
    "Align Your Steps", "Simple", "Normal", "DDIM", "Beta",
)
# other spellings A1111 accepts at the end of a legacy combined sampler name: internal names and aliases
_SCHEDULE_ALIASES: dict[str, str] = {
    "automatic": "Automatic", "uniform": "Uniform", "karras": "Karras", "exponential": "Exponential",
    "polyexponential": "Polyexponential", "sgm_uniform": "SGM Uniform", "SGMUniform": "SGM Uniform",
    "kl_optimal": "KL Optimal", "align_your_steps": "Align Your Steps", "simple": "Simple", "normal": "Normal",
    "ddim": "DDIM", "beta": "Beta",
}

# keys whose values are names or hashes: kept as text when parsed even if they look numeric ("Model hash: 1234567890")
STRING_KEYS: frozenset[str] = frozenset({
    "Sampler", "Schedule type", "Face restoration", "Model hash", "Model", "FP8 weight", "VAE hash", "VAE",
    "Init image hash", "RNG", "Version", "User", "Hires upscaler", "Hires checkpoint", "Hires sampler",
    "Hires schedule type", "Hires prompt", "Hires negative prompt", "Lora hashes", "TI hashes", "Emphasis",
    "Refiner", "Mask mode", "Masked content", "Inpaint area", "Hypernet", "Hypernet hash", "VAE Encoder",
    "VAE Decoder",
})

# What :func:`find_params` finds; that function gives this regex's ``findall`` result in linear time.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
_RE_INT = re.compile(r"[+-]?[0-9]+")
_RE_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")
_RE_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NEGATIVE_PREFIX = "Negative prompt:"


def quote(value: object) -> str:
    """A1111's ``infotext_utils.quote``: JSON-quote (non-ASCII kept) when ``str(value)`` has ``,`` ``\\n`` or ``:``.

    Anything else comes back as ``str(value)``, unquoted.
    """
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """A1111's ``unquote``: ``json.loads`` a value wrapped in double quotes; anything else (or bad JSON) unchanged."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


class SettingFloat(float):
    """A float A1111 takes from its settings and writes as Python prints it (``1.0``, not ``1``)."""


def format_value(value: object) -> str:
    """How one value prints in the parameters line.

    ``True``/``False`` for bools; ints as ints; floats with an integral value without ``.0`` (``7.0`` -> ``"7"``);
    other floats in Python's shortest round-tripping repr (``0.7``, ``1e-05``, ``inf``); a 2-tuple/list of ints as
    ``WxH``; everything else ``str(value)``.
    """
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, SettingFloat):
        return repr(float(value))
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(float(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                    for v in value):
        return f"{value[0]}x{value[1]}"
    return str(value)


def _coerce(raw: str) -> object:
    """Typed value of an unquoted parameter text: bool, int, float, or the text itself."""
    text = raw.strip()
    if text in ("True", "False"):
        return text == "True"
    if _RE_INT.fullmatch(text):
        return int(text)
    if _RE_FLOAT.fullmatch(text):
        return float(text)
    return raw


def _needs_quote(key: str, value: object, text: str) -> bool:
    if "," in text or "\n" in text or ":" in text:  # A1111's own rule
        return True
    # Cases where A1111 writes the text bare and its own parser then loses or changes the value. Quoting them
    # stays readable by A1111 (its parser unquotes any value wrapped in double quotes).
    if text == "" or text != text.strip() or text.startswith('"') or _RE_CONTROL.search(text):
        return True
    if isinstance(value, str) and key not in STRING_KEYS and not RE_IMAGESIZE.match(text):
        return not isinstance(_coerce(text), str)  # "123" must come back as text, not as a number
    return False


def order_params(params: Mapping[str, object]) -> dict[str, object]:
    """Known keys in :data:`KEY_ORDER` order, then unknown (extra) keys in their given order, then Version and User."""
    known = [k for k in KEY_ORDER if k in params and k not in _TAIL_KEYS]
    extra = [k for k in params if k not in KEY_ORDER]
    tail = [k for k in _TAIL_KEYS if k in params]
    return {k: params[k] for k in (*known, *extra, *tail)}


def format_params_line(params: Mapping[str, object]) -> str:
    """``Key: value, Key: value`` in the order of ``params``, skipping ``None`` values."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        text = format_value(value)
        parts.append(f"{key}: {json.dumps(text, ensure_ascii=False) if _needs_quote(key, value, text) else text}")
    return ", ".join(parts)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The infotext for one image in A1111's layout; ``params`` are written in their order (see :func:`order_params`).

    Values are quoted as A1111 does, and also where A1111's bare text would not parse back to the same value (empty,
    padded, starting with ``"``, holding control characters, or text such as "123" that would read as a number);
    A1111's parser reads those too. As in A1111 the whole text is stripped of surrounding whitespace. It parses
    back to the same values when the prompts' lines carry no surrounding whitespace, no prompt line starts with
    ``Negative prompt:`` and at least three parameters are given (A1111's parser needs three to recognise the
    parameters line); see :func:`parse_infotext`.
    """
    negative = f"\n{_NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_params_line(params)}".strip()


def _split_legacy_sampler(res: dict[str, object]) -> None:
    sampler = res.get("Sampler")
    if "Schedule type" in res or not isinstance(sampler, str):
        return
    options = [(label, label) for label in SCHEDULE_TYPES] + list(_SCHEDULE_ALIASES.items())
    options.sort(key=lambda item: -len(item[0]))  # "SGM Uniform" before "Uniform"
    for option, label in options:
        if sampler.endswith(" " + option) and len(sampler) > len(option) + 1:
            res["Sampler"] = sampler[: -(len(option) + 1)]
            res["Schedule type"] = label
            return


def _old_hires_first_pass(width: int, height: int) -> tuple[int, int]:
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _restore_old_hires_fix(res: dict[str, object]) -> None:
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    try:
        first_w, first_h = int(first_w), int(first_h)  # type: ignore[call-overload]
        width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return
    if (first_w == 0 or first_h == 0) and width > 0 and height > 0:
        first_w, first_h = _old_hires_first_pass(width, height)
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def _is_key_char(char: str) -> bool:
    return char.isalnum() or char in "_ -/"


def _value_end(line: str, start: int) -> tuple[str, int]:
    """The value at ``start`` (after ``Key:`` and spaces) and where the next pair may begin."""
    n = len(line)
    if start < n and line[start] == '"':
        j = start + 1
        while j < n and line[j] != '"':
            if line[j] == "\\":
                if j + 1 >= n or line[j + 1] == "\n":
                    break
                j += 1
            j += 1
        if j > start + 1 and j < n and line[j] == '"' and (j + 1 == n or line[j + 1] == ","):
            return line[start:j + 1], min(j + 2, n)
    comma = line.find(",", start)
    if comma < 0:
        return line[start:], n
    return line[start:comma], comma + 1


def find_params(line: str) -> list[tuple[str, str]]:
    """``RE_PARAM.findall(line)`` for one line, in time linear in its length (the regex itself is quadratic)."""
    found: list[tuple[str, str]] = []
    n = len(line)
    pos = 0
    while pos < n:
        key_start = pos
        while key_start < n and line[key_start].isspace():
            key_start += 1
        if key_start >= n or not (line[key_start].isalnum() or line[key_start] == "_"):
            pos = key_start + 1
            continue
        key_end = key_start + 1
        while key_end < n and _is_key_char(line[key_end]):
            key_end += 1
        if key_end - key_start < 2 or key_end >= n or line[key_end] != ":":
            pos = max(key_end, pos + 1)
            continue
        value_start = key_end + 1
        while value_start < n and line[value_start].isspace():
            value_start += 1
        value, pos = _value_end(line, value_start)
        found.append((line[key_start:key_end], value))
    return found


def parse_infotext(text: str) -> dict[str, object]:
    """Parse an infotext, A1111's ``parse_generation_parameters`` semantics with typed values.

    - ``Prompt`` and ``Negative prompt`` (both may span lines; each line is stripped, as in A1111).
    - The last line is the parameters line only when :data:`RE_PARAM` finds at least 3 ``Key: value`` pairs in it;
      otherwise it belongs to the prompt (or negative prompt).
    - Quoted values are JSON-unquoted and stay text. ``WxH`` values become ``Key-1``/``Key-2`` ints (``Size-1``,
      ``Size-2``, ``Hires resize-1``...). Other unquoted values become ``True``/``False`` bools, ints when
      integer-looking, floats when decimal-looking; anything else, and any value of :data:`STRING_KEYS`, stays text.
    - Legacy combined sampler names (before 1.9): with no ``Schedule type``, ``Sampler: DPM++ 2M Karras`` becomes
      ``Sampler: DPM++ 2M`` + ``Schedule type: Karras`` (the suffix is one of :data:`SCHEDULE_TYPES` or an internal
      name/alias such as ``karras``, ``SGMUniform``). Unlike A1111's UI paste it is not then turned into "Automatic".
    - ``First pass size`` (hires fix before 1.0) is converted as A1111 does: it becomes ``Size-1/2`` and the old
      ``Size`` becomes ``Hires resize-1/2``; ``Hypernet: name`` appends ``<hypernet:name:strength>`` to the prompt.

    Defaults A1111 fills in for missing keys:
      ``Clip skip`` 1; ``Hires resize-1``/``Hires resize-2`` 0; ``Hires sampler`` "Use same sampler";
      ``Hires checkpoint`` "Use same checkpoint"; ``Hires prompt`` ""; ``Hires negative prompt`` "";
      ``Mask mode`` "Inpaint masked"; ``Masked content`` "original"; ``Inpaint area`` "Whole picture";
      ``Masked area padding`` 32; ``RNG`` "GPU"; ``Schedule type`` "Automatic" (after the legacy split);
      ``Schedule max sigma``/``Schedule min sigma``/``Schedule rho`` 0; ``VAE Encoder``/``VAE Decoder`` "Full";
      ``FP8 weight`` "Disable" (and ``Cache FP16 weight for LoRA`` False when FP8 is on); ``Emphasis`` "Original".
    Not reproduced: A1111's style extraction, version back-compat flags and ``infotext_skip_pasting`` (settings).
    """
    res: dict[str, object] = {}
    *lines, last = text.strip().split("\n")
    pairs = find_params(last)
    if len(pairs) < 3:
        lines.append(last)
        last = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(_NEGATIVE_PREFIX):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    res["Prompt"] = "\n".join(prompt_lines)
    res["Negative prompt"] = "\n".join(negative_lines)

    for key, raw in pairs if last else []:
        quoted = len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"'
        value = unquote(raw) if quoted else raw
        size = RE_IMAGESIZE.match(value)
        if size is not None:
            res[f"{key}-1"], res[f"{key}-2"] = int(size.group(1)), int(size.group(2))
        elif quoted or key in STRING_KEYS:
            res[key] = value
        else:
            res[key] = _coerce(value)

    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"

    defaults: dict[str, object] = {
        "Clip skip": 1, "Hires sampler": "Use same sampler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked", "Masked content": "original",
        "Inpaint area": "Whole picture", "Masked area padding": 32,
    }
    if "Hires resize-1" not in res:
        res["Hires resize-1"], res["Hires resize-2"] = 0, 0
    for key, default in defaults.items():
        res.setdefault(key, default)
    _restore_old_hires_fix(res)
    _split_legacy_sampler(res)
    for key, default in {"RNG": "GPU", "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0,
                       "Schedule rho": 0, "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
                       "Emphasis": "Original"}.items():
        res.setdefault(key, default)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    return res

"""A1111-format infotext and its forks' variants (Forge, reForge, SD.Next, Civitai, Fooocus's "a1111" scheme ...).

Some writers put JSON objects or lists unquoted in the parameters line (``Hashes: {"vae": "..."}``, Civitai's
``Civitai resources: [...]``), which A1111's own parser would cut at the first comma; such values are re-quoted so
the line parses, and the infotext given back is that repaired line.
"""

from __future__ import annotations

import json
import re

from modules import infotext
from modules.metadata.model import Parsed

_KEY = re.compile(r"\s*(\w[\w \-/]+):\s*")
_RUN = re.compile(r"[\w \-/]+")
_DECODER = json.JSONDecoder()
# A1111's parameter regex retries at every character of a long run of key characters not followed by ":", which
# costs the square of its length (a 20 000 character run takes seconds): lines above this budget are not parsed.
PARSE_BUDGET = 16_000_000


def parse_cost(line: str) -> int:
    """An upper bound of the work A1111's parameter regex does on ``line`` (sum of squared runs it would retry)."""
    total = 0
    for match in _RUN.finditer(line):
        start, end = match.span()
        if (start and line[start - 1] == ":") or line[end: end + 1] == ":":
            continue
        total += (end - start) ** 2
    return total


def parsable(text: str) -> bool:
    """Whether the last line of ``text`` can go through A1111's parser quickly (see :data:`PARSE_BUDGET`)."""
    return parse_cost(text.strip().rpartition("\n")[2]) <= PARSE_BUDGET


def repair_params_line(line: str) -> str:
    """The parameters line with unquoted JSON object/list values JSON-quoted; unchanged when there are none."""
    if "{" not in line and "[" not in line:
        return line
    out, pos, changed = [], 0, False
    while pos < len(line):
        match = _KEY.match(line, pos)
        if match is None:
            out.append(line[pos:])
            break
        value_at = match.end()
        out.append(line[pos:value_at])
        if value_at < len(line) and line[value_at] in "{[":
            try:
                value, end = _DECODER.raw_decode(line, value_at)
            except ValueError:
                value, end = None, -1
            if end > 0 and (end == len(line) or line[end] == ","):
                out.append(json.dumps(json.dumps(value, ensure_ascii=False), ensure_ascii=False))
                changed = True
                pos = end
                if pos < len(line):
                    out.append(",")
                    pos += 1
                continue
        value = re.match(r'"(?:\\.|[^\\"])*"|[^,]*', line[value_at:])
        taken = value.group(0) if value else ""
        out.append(taken)
        pos = value_at + len(taken)
        if pos < len(line) and line[pos] == ",":
            out.append(",")
            pos += 1
    return "".join(out) if changed else line


def repair(text: str) -> str:
    """``text`` with its parameters line repaired (see :func:`repair_params_line`) and surrounding blanks removed."""
    text = text.strip().replace("\r\n", "\n")
    head, sep, last = text.rpartition("\n")
    fixed = repair_params_line(last)
    if len(infotext.RE_PARAM.findall(fixed)) < 3:
        return text
    return f"{head}{sep}{fixed}"


def looks_like_infotext(text: str) -> bool:
    """True when the last line of ``text`` holds at least three ``Key: value`` pairs including Steps or Seed."""
    if not parsable(text):
        return False
    last = repair(text).rpartition("\n")[2]
    keys = {k.strip() for k, _ in infotext.RE_PARAM.findall(last)}
    return len(keys) >= 3 and bool(keys & {"Steps", "Seed", "Sampler", "CFG scale"})


def tool_of(params: dict[str, object], hint: str | None = None) -> str:
    """Which A1111-family program wrote an infotext, from its ``Version``/``App`` keys and Civitai's keys."""
    version = str(params.get("Version", ""))
    if hint:
        return hint
    if version.startswith("ComfyUI"):
        return "ComfyUI"  # A1111-style text written by a ComfyUI save node (Image Saver)
    if any(str(k).startswith("Civitai") for k in params):
        return "Civitai"
    if "SD.Next" in str(params.get("App", "")) or "SD.Next" in version:
        return "SD.Next"
    if version.startswith("Fooocus"):
        return "Fooocus"
    if version.startswith("sdwebui"):
        return "sdwebui"
    if re.match(r"f\d", version):
        return "Forge"
    if version.startswith("classic") or "reForge" in version:
        return "reForge"
    return "A1111"


def parse_a1111(text: str, source: str, hint: str | None = None) -> Parsed:
    """An A1111-format text as found in ``source``; the text is kept as written (repaired JSON values aside).

    Raises ``ValueError`` for a last line too irregular for A1111's parser to read in reasonable time."""
    if not parsable(text):
        raise ValueError("the parameters line is too irregular to parse")
    fixed = repair(text)
    params = infotext.parse_infotext(fixed)
    parsed = Parsed(tool_of(params, hint), str(params.get("Prompt", "")), str(params.get("Negative prompt", "")),
                    source=source, infotext=fixed)
    if fixed != text.strip().replace("\r\n", "\n"):
        parsed.warnings.append("JSON values in the parameters line were quoted so that A1111's parser reads them")
    return parsed

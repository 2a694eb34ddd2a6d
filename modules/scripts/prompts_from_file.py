"""A1111's "Prompts from file or textbox": one generation per line of a text, each line a prompt or a set of
``--option value`` pairs (A1111's list: ``--prompt``, ``--negative_prompt``, ``--steps``, ``--seed``,
``--sampler_name``, ``--width``, ``--height``, ``--cfg_scale``, ``--batch_size``, ``--n_iter``, ``--styles``, ...).

A line that starts with an option and cannot be read is refused (422 naming ``script_args``) before anything is
generated; A1111 would use such a line as a prompt. Options that would write outside the output folders
(``--outpath_samples``, ``--outpath_grids``) are ignored with a warning.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modules import samplers
from modules.errors import ValidationError
from modules.requests import GenerationRequest, Limits, validate_any
from modules.scripts.base import BOTH, Control, RunContext, Script, ScriptOutput, arg_error

POSITIONS = ("start", "end")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _boolean(text: str) -> bool:
    return text.strip().lower() == "true"


def _sampler(text: str) -> tuple[str, str | None]:
    """(A1111's sampler name, the schedule type a legacy name such as "DPM++ 2M Karras" carries, or None)."""
    name, schedule = samplers.split_legacy_name(text)
    try:
        return samplers.find(name).name, schedule
    except KeyError:
        raise ValueError(f"unknown sampler {text!r}; valid samplers: {', '.join(samplers.sampler_names())}") from None


# option -> (request field, converter); a field of None: accepted and without effect here
_OPTIONS: dict[str, tuple[str | None, Callable[[str], Any]]] = {
    "sd_model": ("checkpoint", str),
    "outpath_samples": (None, str),
    "outpath_grids": (None, str),
    "prompt_for_display": (None, str),
    "seed": ("seed", _int),
    "subseed_strength": ("subseed_strength", _float),
    "subseed": ("subseed", _int),
    "seed_resize_from_h": ("seed_resize_from_h", _int),
    "seed_resize_from_w": ("seed_resize_from_w", _int),
    "sampler_index": (None, _int),  # A1111 1.10 reads it and ignores it
    "sampler_name": ("sampler_name", _sampler),
    "batch_size": ("batch_size", _int),
    "n_iter": ("n_iter", _int),
    "steps": ("steps", _int),
    "cfg_scale": ("cfg_scale", _float),
    "width": ("width", _int),
    "height": ("height", _int),
    "restore_faces": ("restore_faces", _boolean),
    "tiling": ("tiling", _boolean),
    "do_not_save_samples": (None, _boolean),
    "do_not_save_grid": (None, _boolean),  # no grid is made for a line anyway
}
_TEXT_OPTIONS = ("prompt", "negative_prompt", "styles")  # these take every word up to the next option
_IGNORED_WARNING = {
    "outpath_samples": "--outpath_samples is ignored: images are saved in the output folders of the settings",
    "outpath_grids": "--outpath_grids is ignored: grids are saved in the output folders of the settings",
    "do_not_save_samples": "--do_not_save_samples is not supported: the images of the line are saved as usual",
}


@dataclass(frozen=True)
class Line:
    """One line of the list: the request fields it sets, its prompts (None: not given), and notes to show."""

    changes: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    negative_prompt: str | None = None
    warnings: tuple[str, ...] = ()


def _option_value(tag: str, words: list[str], pos: int) -> tuple[Any, int]:
    """The value of option ``tag`` whose first word is ``words[pos]``, and the position after it."""
    if tag in _TEXT_OPTIONS:
        end = pos + 1
        while end < len(words) and not words[end].startswith("--"):
            end += 1
        taken = words[pos:end]
        return (tuple(taken) if tag == "styles" else " ".join(taken)), end
    if tag not in _OPTIONS:
        raise ValueError(f"unknown option --{tag}; the options are: "
                         f"{', '.join('--' + t for t in (*_TEXT_OPTIONS, *_OPTIONS))}")
    try:
        return _OPTIONS[tag][1](words[pos]), pos + 1
    except ValueError as exc:
        raise ValueError(f"--{tag}: {exc}") from None


def parse_options(words: list[str]) -> Line:
    """The fields, prompts and notes of a line split into ``words`` (each option followed by its value)."""
    changes: dict[str, Any] = {}
    prompts: dict[str, str] = {}
    notes: list[str] = []
    pos = 0
    while pos < len(words):
        word = words[pos]
        if not word.startswith("--"):
            raise ValueError(f'{word!r} must start with "--"')
        if pos + 1 >= len(words):
            raise ValueError(f"missing argument for option {word}")
        tag = word[2:]
        value, pos = _option_value(tag, words, pos + 1)
        if tag in ("prompt", "negative_prompt"):
            prompts[tag] = value
        elif tag == "styles":
            changes["styles"] = value
        elif tag == "sampler_name":
            changes["sampler_name"], schedule = value
            if schedule is not None:
                changes["scheduler"] = schedule
        elif _OPTIONS[tag][0] is not None:
            changes[str(_OPTIONS[tag][0])] = value
        elif tag in _IGNORED_WARNING:
            notes.append(_IGNORED_WARNING[tag])
    return Line(changes, prompts.get("prompt"), prompts.get("negative_prompt"), tuple(notes))


def parse_line(text: str) -> Line:
    """A line as A1111 reads it: options when its first word is one, else the whole line is the prompt."""
    if "--" not in text:
        return Line(prompt=text)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        if text.startswith("--"):
            raise ValueError(f"cannot be split into options ({exc})") from None
        return Line(prompt=text)
    if not words or not words[0].startswith("--"):
        return Line(prompt=text)
    return parse_options(words)


def parse_lines(text: str) -> list[Line]:
    """Every non-empty line of ``text``; a ValueError naming the line's number for one that cannot be read."""
    lines = []
    for number, raw in enumerate(str(text or "").splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        try:
            lines.append(parse_line(stripped))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    return lines


def _joined(base: str, own: str | None, at_start: bool) -> str | None:
    """A line's prompt with the request's, at the start or the end (A1111: only when both are non-empty)."""
    if own is None:
        return None
    if own and base:
        return f"{own} {base}" if at_start else f"{base} {own}"
    return own


def line_request(req: GenerationRequest, line: Line, at_start: bool) -> GenerationRequest:
    """The request of one line: the job's request with the line's fields and prompts."""
    changes = dict(line.changes)
    prompt = _joined(req.prompt, line.prompt, at_start)
    negative = _joined(req.negative_prompt, line.negative_prompt, at_start)
    if prompt is not None:
        changes["prompt"] = prompt
    if negative is not None:
        changes["negative_prompt"] = negative
    return req.replace(**changes)


class PromptsFromFile(Script):
    title = "Prompts from file or textbox"
    tabs = BOTH

    def controls(self, kind: str) -> list[Control]:
        return [
            Control("Iterate seed every line", "checkbox", False, elem_id="checkbox_iterate"),
            Control("Use same random seed for all lines", "checkbox", False, elem_id="checkbox_iterate_batch"),
            Control("Insert prompts at the", "radio", "start", choices=POSITIONS, elem_id="prompt_position"),
            Control("List of prompt inputs", "textbox", "", lines=1, elem_id="prompt_txt"),
        ]

    def _lines(self, args: Sequence[Any]) -> list[Line]:
        if args[2] not in POSITIONS:
            raise arg_error(self, f"Insert prompts at the: must be one of {', '.join(POSITIONS)} (got {args[2]!r})")
        if not isinstance(args[3], str):
            raise arg_error(self, "List of prompt inputs: must be a text")
        try:
            return parse_lines(args[3])
        except ValueError as exc:
            raise arg_error(self, str(exc)) from None

    def check(self, req: GenerationRequest, args: Sequence[Any], kind: str) -> None:
        self._lines(args)

    def requests(self, req: GenerationRequest, args: Sequence[Any], limits: Limits) -> list[GenerationRequest]:
        """The request of every line, each validated; a line with a bad value is named in the error."""
        iterate, same_seed, at_start = bool(args[0]), bool(args[1]), args[2] == "start"
        if (iterate or same_seed) and req.seed == -1:
            from modules.generation.batches import resolve_seeds

            req = req.replace(seed=resolve_seeds(req).seed)
        out: list[GenerationRequest] = []
        for number, line in enumerate(self._lines(args), start=1):
            one = line_request(req, line, at_start)
            try:
                validate_any(one, limits)
            except ValidationError as exc:
                raise arg_error(self, f"line {number}: {exc}") from None
            out.append(one)
            if iterate:  # A1111 steps by the job's own image count, whatever the line asks for
                req = req.replace(seed=req.seed + req.batch_size * req.n_iter)
        return out

    def run(self, ctx: RunContext, req: GenerationRequest, args: Sequence[Any]) -> ScriptOutput:
        limits = ctx.services.limits() if ctx.services is not None else Limits()
        for line in self._lines(args):
            for note in line.warnings:
                ctx.control.warn(note)
        out = ScriptOutput()
        for one in self.requests(req, args, limits):
            if ctx.control.interrupted:
                break
            out.add_job(ctx.process(one))
        return out

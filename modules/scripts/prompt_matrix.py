"""A1111's "Prompt matrix" script: the prompt (or the negative prompt) split at ``|`` into a fixed first part and
variable parts, one image for every combination of the variable parts, and a grid of them whose legends strike out
the parts each image leaves out.

Combination ``k`` keeps variable part ``n`` when bit ``n`` of ``k`` is set, so the images run from the first part
alone to every part. Parts are joined with ", " or " " (after the first part, or before it with "Put variable
parts at start of prompt"); every image has the request's seed, or the seed plus its number with "Use different
seed for each picture".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from modules.engine import JobOutput
from modules.errors import ValidationError, WebUIError
from modules.generation.batches import resolve_seeds
from modules.requests import GenerationRequest, Limits, validate_any
from modules.scripts.base import Control, RunContext, Script, ScriptOutput, arg_error
from modules.scripts.grids import draw_prompt_matrix, image_grid
from modules.scripts.xyz_values import shown

PROMPT_TYPES = ("positive", "negative")
DELIMITERS = {"comma": ", ", "space": " "}
MAX_VARIABLE_PARTS = 10  # 1024 images


def matrix_prompts(text: str, at_start: bool, delimiter: str) -> list[str]:
    """Every combination of ``text``'s variable parts, joined to its first part with ``delimiter``."""
    parts = text.split("|")
    prompts = []
    for combination in range(2 ** (len(parts) - 1)):
        chosen = [part.strip().strip(",") for n, part in enumerate(parts[1:]) if combination & (1 << n)]
        prompts.append(delimiter.join([*chosen, parts[0]] if at_start else [parts[0], *chosen]))
    return prompts


class PromptMatrix(Script):
    """``app``: the application, whose limits (prompt length) the prompts are checked against before a job is
    queued."""

    title = "Prompt matrix"

    def __init__(self, app: Any = None) -> None:
        self.app = app

    def controls(self, kind: str) -> list[Control]:
        ids = f"script_{kind}_prompt_matrix"
        return [
            Control("Put variable parts at start of prompt", "checkbox", False, elem_id=f"{ids}_put_at_start"),
            Control("Use different seed for each picture", "checkbox", False, elem_id=f"{ids}_different_seeds"),
            Control("Select prompt", "radio", "positive", choices=list(PROMPT_TYPES), elem_id=f"{ids}_prompt_type"),
            Control("Select joining char", "radio", "comma", choices=list(DELIMITERS),
                    elem_id=f"{ids}_variations_delimiter"),
            Control("Grid margins (px)", "slider", 0, minimum=0, maximum=500, step=2, elem_id=f"{ids}_margin_size"),
        ]

    def _options(self, args: Sequence[Any], kind: str) -> tuple[bool, bool, str, str, int]:
        at_start, different, prompt_type, delimiter, margin = self.args_with_defaults(args, kind)
        if prompt_type not in PROMPT_TYPES:
            raise arg_error(self, f"Select prompt: unknown prompt type {shown(prompt_type)}; choose positive or "
                            "negative")
        if delimiter not in tuple(DELIMITERS):
            raise arg_error(self, f"Select joining char: unknown delimiter {shown(delimiter)}; choose comma or space")
        try:
            margin = int(float(margin or 0))
        except (TypeError, ValueError, OverflowError):
            raise arg_error(self, f"Grid margins (px): {shown(margin)} is not a number") from None
        if not 0 <= margin <= 500:
            raise arg_error(self, f"Grid margins (px): must be between 0 and 500 (got {margin})")
        return bool(at_start), bool(different), str(prompt_type), str(delimiter), margin

    def check(self, req: GenerationRequest, args: Sequence[Any], kind: str) -> None:
        _, _, prompt_type, _, _ = self._options(args, kind)
        text = req.prompt if prompt_type == "positive" else req.negative_prompt
        if text.count("|") > MAX_VARIABLE_PARTS:
            raise arg_error(self, f"{text.count('|')} variable parts; at most {MAX_VARIABLE_PARTS}")
        longest = " ".join(text.split("|"))  # every part: the longest prompt the matrix makes
        one = req.replace(**{"prompt" if prompt_type == "positive" else "negative_prompt": longest})
        limits = self.app.limits() if self.app is not None else Limits()
        try:
            validate_any(one, limits)
        except ValidationError as exc:
            raise arg_error(self, str(exc)) from None

    def run(self, ctx: RunContext, req: GenerationRequest, args: Sequence[Any]) -> ScriptOutput:
        at_start, different, prompt_type, delimiter, margin = self._options(args, ctx.kind)
        req = resolve_seeds(req)
        field = "prompt" if prompt_type == "positive" else "negative_prompt"
        parts = str(getattr(req, field)).split("|")
        prompts = matrix_prompts(getattr(req, field), at_start, DELIMITERS[delimiter])
        jobs: list[JobOutput | None] = []
        for i, prompt in enumerate(prompts):
            if ctx.control.interrupted:
                break
            ctx.control.update(phase=f"{self.title}: {i + 1} out of {len(prompts)}")
            one = req.replace(**{field: prompt}, seed=req.seed + (i if different else 0), subseed=req.subseed + i,
                              batch_size=1, n_iter=1)
            jobs.append(self._generate(ctx, one))
        return self._output(ctx, jobs, len(prompts), parts, margin)

    def _generate(self, ctx: RunContext, req: GenerationRequest) -> JobOutput | None:
        try:
            job = ctx.process(req)
        except WebUIError as exc:
            ctx.control.warn(f"{self.title}: an image was not made: {exc}")
            return None
        return job if job.result.images else None

    def _output(self, ctx: RunContext, jobs: list[JobOutput | None], count: int, parts: list[str],
                margin: int) -> ScriptOutput:
        out = ScriptOutput()
        made = [job for job in jobs if job is not None]
        if not made:
            return out
        for job in made:
            out.add_job(job)
        first = made[0].result
        size = first.images[0].size
        cells = [job.result.images[0] if job is not None else Image.new("RGB", size) for job in jobs]
        cells += [Image.new("RGB", size)] * (count - len(cells))
        grid = image_grid(cells, rows=1 << ((len(parts) - 1) // 2))
        grid = draw_prompt_matrix(grid, size[0], size[1], parts, margin)
        info = first.infotexts[0]
        path = ctx.save_grid(grid, info, first.request, "prompt_matrix")
        out.add(grid, info, first.all_seeds[0], first.all_subseeds[0], first.all_prompts[0],
                first.all_negative_prompts[0], path, grid=True)
        out.last = made[0]
        return out

"""A1111's "Loopback": img2img run again and again on its own output, the denoising strength moving from the
request's to a final one along a curve, optionally with the image's interrogated prompt appended each time.

Every image keeps its own infotext (its seed and the strength it was made with), where A1111 repeats the first
one's; a strip of the loops' images comes first when there are several.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules import images as image_utils
from modules.requests import GenerationRequest, Img2ImgRequest
from modules.scripts.base import IMG2IMG, Control, RunContext, Script, ScriptOutput, arg_error
from modules.scripts.sd_upscale import add_params

if TYPE_CHECKING:
    from modules.engine import JobOutput

CURVES = ("Aggressive", "Linear", "Lazy")
INTERROGATORS = {"None": None, "CLIP": "clip", "DeepBooru": "deepdanbooru"}


def curve_value(curve: str, progress: float) -> float:
    """How far along (0 to 1) the strength is at ``progress`` (0 to 1) of the loops."""
    if curve == "Aggressive":
        return math.sin(progress * math.pi * 0.5)
    if curve == "Lazy":
        return 1 - math.cos(progress * math.pi * 0.5)
    return progress


def denoising_strength(initial: float, final: float, curve: str, loop: int, loops: int) -> float:
    """The strength of loop ``loop`` (0-based) of ``loops``: the request's at the first, ``final`` at the last."""
    if loops == 1:
        return initial
    return initial + (final - initial) * curve_value(curve, loop / (loops - 1))


@dataclass(frozen=True)
class _Options:
    loops: int
    final: float
    curve: str
    model: str | None  # the interrogator whose prompt is appended, or None


class Loopback(Script):
    title = "Loopback"
    tabs = frozenset({IMG2IMG})

    def controls(self, kind: str) -> list[Control]:
        return [
            Control("Loops", "slider", 4, 1, 32, 1, elem_id="loops"),
            Control("Final denoising strength", "slider", 0.5, 0, 1, 0.01, elem_id="final_denoising_strength"),
            Control("Denoising strength curve", "dropdown", "Linear", choices=CURVES),
            Control("Append interrogated prompt at each iteration", "dropdown", "None", choices=tuple(INTERROGATORS)),
        ]

    def _args(self, args: Sequence[Any]) -> _Options:
        loops, final, curve, append = args[:4]
        if isinstance(loops, bool) or not isinstance(loops, (int, float)) or loops != int(loops) or not (
                1 <= loops <= 1000):
            raise arg_error(self, f"Loops: must be a whole number from 1 to 1000 (got {loops!r})")
        if isinstance(final, bool) or not isinstance(final, (int, float)) or not 0 <= final <= 1:
            raise arg_error(self, f"Final denoising strength: must be between 0 and 1 (got {final!r})")
        if curve not in CURVES:
            raise arg_error(self, f"Denoising strength curve: must be one of {', '.join(CURVES)} (got {curve!r})")
        if append not in INTERROGATORS:
            raise arg_error(self, f"Append interrogated prompt at each iteration: must be one of "
                                  f"{', '.join(INTERROGATORS)} (got {append!r})")
        return _Options(int(loops), float(final), str(curve), INTERROGATORS[append])

    def check(self, req: GenerationRequest, args: Sequence[Any], kind: str) -> None:
        self._args(args)

    def _prompt(self, ctx: RunContext, base: str, model: str | None, image: Image.Image) -> str:
        """The request's prompt with the interrogated one appended (A1111: after ``", "`` when there is one)."""
        if model is None:
            return base
        ctx.control.update(phase="interrogating")
        app = ctx.services
        found = app.interrogators.interrogate(image, model, dict(app.interrogate_options()))
        return f"{base}, {found}" if base else str(found)

    def run(self, ctx: RunContext, req: GenerationRequest, args: Sequence[Any]) -> ScriptOutput:
        if not isinstance(req, Img2ImgRequest):
            raise arg_error(self, "Loopback needs an init image (img2img)")
        from modules.generation.batches import resolve_seeds

        options = self._args(args)
        if options.model is not None:
            if ctx.services is None:
                raise arg_error(self, "no interrogator here")
            ctx.services.interrogators.check(options.model, dict(ctx.services.interrogate_options()))
        req = resolve_seeds(req)
        history: list[JobOutput] = []
        one = req.replace(batch_size=1, n_iter=1)
        for _ in range(req.n_iter):
            jobs, one = self._batch(ctx, one, req, options)
            if req.n_iter == 1:
                history += jobs
            elif jobs and not ctx.control.should_stop():  # a batch count: each batch's last image
                history.append(jobs[-1])
            if ctx.control.interrupted:
                break
        out = ScriptOutput()
        for job in history:
            out.add_job(job)
        add_params(out, {"Final denoising strength": args[1], "Denoising curve": options.curve})
        if len(history) > 1:
            self._grid(ctx, history, out)
        out.index_of_first_image = 0  # A1111 reports 0 although its strip comes first
        return out

    def _batch(self, ctx: RunContext, one: Img2ImgRequest, req: Img2ImgRequest, options: _Options
               ) -> tuple[list[JobOutput], Img2ImgRequest]:
        """The loops of one batch, from the original image: the generations whose image was kept, and the request
        with the seed to go on with (one more than the last generation's)."""
        images, fill, strength = req.init_images, req.inpainting_fill, req.denoising_strength
        jobs: list[JobOutput] = []
        for i in range(options.loops):
            prompt = self._prompt(ctx, req.prompt, options.model, images[0])
            job = ctx.process(one.replace(init_images=images, denoising_strength=strength, prompt=prompt,
                                          inpainting_fill=fill))
            if ctx.control.interrupted:
                break
            one = one.replace(seed=job.result.all_seeds[0] + 1)
            strength = denoising_strength(req.denoising_strength, options.final, options.curve, i + 1, options.loops)
            if ctx.control.skipped:
                break
            jobs.append(job)
            images, fill = (job.result.images[0],), 1  # later loops keep the masked area's content ("original")
        return jobs, one

    def _grid(self, ctx: RunContext, jobs: list[JobOutput], out: ScriptOutput) -> None:
        images = [job.result.images[0] for job in jobs]
        grid = image_utils.image_grid(images, rows=1)
        info = out.infotexts[out.grids] if len(out.infotexts) > out.grids else ""
        path = ctx.save_grid(grid, info, jobs[0].result.request)
        out.add(grid, info, jobs[0].result.all_seeds[0], jobs[0].result.all_subseeds[0],
                jobs[0].result.all_prompts[0], jobs[0].result.all_negative_prompts[0], path, grid=True)

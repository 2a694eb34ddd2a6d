"""Running a txt2img or img2img job with scripts: the always-on scripts change the request first and see each
generation after; a selected script runs in place of the single generation and its images (grids first) become
the job's result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules import images as image_utils
from modules.engine import JobOutput, write_grid, write_sample
from modules.generation.control import JobControl
from modules.job_types import ImagesResult, Img2ImgJob, OutputImage, Txt2ImgJob
from modules.requests import GenerationRequest, Img2ImgRequest, validate_any
from modules.scripts.base import IMG2IMG, TXT2IMG, RunContext, ScriptOutput
from modules.scripts.registry import ScriptRegistry

if TYPE_CHECKING:
    from modules.app import App

Generation = Callable[[GenerationRequest, bool, bool], JobOutput]  # (request, grid?, save?) -> the engine's output


def kind_of(spec: Txt2ImgJob | Img2ImgJob) -> str:
    return IMG2IMG if isinstance(spec, Img2ImgJob) else TXT2IMG


def check_scripts(scripts: ScriptRegistry, spec: Txt2ImgJob | Img2ImgJob) -> None:
    """Each script's own check of its arguments (before the job is queued)."""
    kind = kind_of(spec)
    for call in (*spec.alwayson, *([spec.script] if spec.script is not None else [])):
        scripts.script(call, kind).check(spec.request, call.args, kind)


def _validated(app: App, req: GenerationRequest) -> None:
    validate_any(req, app.limits())


def run_job(app: App, spec: Txt2ImgJob | Img2ImgJob, control: JobControl, generate: Generation,
            images_result: Callable[[JobOutput, bool], ImagesResult]) -> ImagesResult:
    """The job with its scripts (``generate`` runs one generation as a job without scripts does)."""
    kind = kind_of(spec)
    calls = [(app.scripts.script(c, kind), c.args) for c in spec.alwayson]
    req = spec.request
    for script, args in calls:
        req = script.before(req, args)

    def process(one: GenerationRequest, save: bool = True, grid: bool = False) -> JobOutput:
        _validated(app, one)
        out = generate(one, grid, save)
        for script, args in calls:
            script.after(one, out, args)
        return out

    if spec.script is None:
        return images_result(process(req, True, True), spec.return_grid)
    script = app.scripts.script(spec.script, kind)

    def save_grid(image: Image.Image, infotext: str, used: GenerationRequest, basename: str) -> Path | None:
        if spec.output is None or not spec.output.save_grid:
            return None
        return write_grid(image, infotext, _values(used, used.seed), spec.output, control.warn, basename=basename)

    def save_image(image: Image.Image, infotext: str, used: GenerationRequest, seed: int) -> Path | None:
        out = spec.output
        if out is None or not out.save_samples:
            return None
        return write_sample(image, infotext, _values(used, seed), out, control.warn)

    ctx = RunContext(kind, process, control, save_grid, app, save_image, spec.return_grid)
    return script_result(script.run(ctx, req, spec.script.args), req, control, script.title)


def _values(used: GenerationRequest, seed: int) -> dict[str, object]:
    """What the file and directory name patterns read for an image or grid a script saves."""
    return {"seed": seed, "prompt": used.prompt, "steps": used.steps, "sampler": used.sampler_name,
            "cfg_scale": used.cfg_scale}


def script_result(output: ScriptOutput, req: GenerationRequest, control: JobControl, script_name: str = ""
                  ) -> ImagesResult:
    """A script's output as a job result: its grids and images as PNGs with their infotexts."""
    images = tuple(
        OutputImage(image_utils.encode_image(image, "png", info or None), info, output.seeds[i],
                    output.subseeds[i], output.prompts[i], output.negative_prompts[i], output.paths[i])
        for i, (image, info) in enumerate(zip(output.images, output.infotexts, strict=True)))
    last = output.last.result if output.last is not None else None
    request = req.replace(init_images=(), mask=None, latent_mask=None) if isinstance(req, Img2ImgRequest) else req
    extra: dict[str, Any] = dict(last.extra_params) if last is not None else {}
    return ImagesResult(
        request=request, images=images, model_name=last.model_name if last else "",
        model_hash=last.model_hash if last else None, vae_name=last.vae_name if last else None,
        vae_hash=last.vae_hash if last else None, extra_params=extra,
        warnings=tuple(dict.fromkeys([*output.warnings, *control.warnings])), interrupted=control.interrupted,
        job_timestamp=last.job_timestamp if last else "", script=script_name,
        first_image=output.grids if output.index_of_first_image is None else output.index_of_first_image)

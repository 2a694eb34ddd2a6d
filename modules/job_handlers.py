"""One handler per job kind, registered in one place (:func:`builtin_handlers`).

A registration pairs the handler, which runs in the worker, with an optional check that runs at the edge, before
anything is queued. Handlers take the application's services, the spec and the job's control, and return a plain
result (:mod:`modules.job_types`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules import fileio, outputs
from modules import images as image_utils
from modules.batch import run_batch
from modules.engine import JobOutput
from modules.errors import ModelLoadError, ValidationError
from modules.extras import ExtrasResult, run_extras, validate_extras
from modules.generation.control import JobControl
from modules.interrogate.service import clip_options
from modules.job_types import (
    DeviceConfigJob,
    ExtrasJob,
    ImagesResult,
    Img2ImgBatchJob,
    Img2ImgJob,
    InterrogateJob,
    InterrogateResult,
    JobResult,
    JobSpec,
    LoadModelJob,
    MergeJob,
    MergeResultSummary,
    ModelResult,
    OutputImage,
    ReloadModelJob,
    Txt2ImgJob,
    UnloadModelJob,
)
from modules.requests import SAME_CHECKPOINT, GenerationRequest, Img2ImgRequest, validate, validate_img2img

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)
Run = Callable[["App", Any, JobControl], JobResult]
Check = Callable[["App", Any], None]


@dataclass(frozen=True)
class Registration:
    run: Run
    check: Check | None = None


class JobHandlers:
    """Job kind -> its handler and edge check."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Registration] = {}

    def register(self, spec_type: type, run: Run, check: Check | None = None) -> None:
        kind: str = spec_type.kind  # type: ignore[attr-defined]
        if kind in self._by_kind:
            raise ValueError(f"a handler for {kind!r} is already registered")
        self._by_kind[kind] = Registration(run, check)

    def kinds(self) -> list[str]:
        return list(self._by_kind)

    def _get(self, spec: JobSpec) -> Registration:
        try:
            return self._by_kind[spec.kind]
        except KeyError:
            raise ValueError(f"no handler for job kind {spec.kind!r}") from None

    def check(self, app: App, spec: JobSpec) -> None:
        registration = self._get(spec)
        if registration.check is not None:
            registration.check(app, spec)

    def run(self, app: App, spec: JobSpec, control: JobControl) -> JobResult:
        return self._get(spec).run(app, spec, control)


# -- txt2img / img2img -------------------------------------------------------------------------------------------
def _png(image: Image.Image, infotext: str | None) -> bytes:
    return image_utils.encode_image(image, "png", infotext)


def images_result(out: JobOutput, return_grid: bool) -> ImagesResult:
    """The engine's output as plain data: PNG bytes with their infotext, seeds, prompts and saved paths."""
    r = out.result
    images = tuple(
        OutputImage(_png(image, info), info, r.all_seeds[i], r.all_subseeds[i], r.all_prompts[i],
                    r.all_negative_prompts[i], out.paths.get(i))
        for i, (image, info) in enumerate(zip(r.images, r.infotexts, strict=True)))
    grid = None
    if return_grid and out.grid is not None:
        first = r.infotexts[0] if r.infotexts else ""
        grid = OutputImage(_png(out.grid, first or None), first, path=out.grid_path)
    request = r.request
    if isinstance(request, Img2ImgRequest):
        request = request.replace(init_images=(), mask=None, latent_mask=None)
    return ImagesResult(request=request, images=images, grid=grid, grid_path=out.grid_path,
                        model_name=r.model_name, model_hash=r.model_hash, vae_name=r.vae_name, vae_hash=r.vae_hash,
                        extra_params=dict(r.extra_params), warnings=tuple(dict.fromkeys(r.warnings)),
                        interrupted=r.interrupted, job_timestamp=r.job_timestamp)


def _wants_grid(spec: Txt2ImgJob | Img2ImgJob) -> bool:
    """A1111: no grid when nothing is saved (the API's default); else one to return or to save."""
    return spec.output is not None and (spec.return_grid or spec.output.save_grid)


def _run_generation(app: App, spec: Txt2ImgJob | Img2ImgJob, control: JobControl) -> ImagesResult:
    from modules.scripts.runner import run_job

    control.preview_decoder = app.previews.decoder(app.settings["show_progress_type"])

    def generate(req: GenerationRequest, grid: bool, save: bool) -> JobOutput:
        run = app.engine.img2img if isinstance(req, Img2ImgRequest) else app.engine.txt2img
        return run(req, control, spec.output if save else None, spec.preview_every,  # type: ignore[arg-type]
                   grid and _wants_grid(spec))

    result = run_job(app, spec, control, generate, images_result)
    app.remember_model(update_setting=spec.request.checkpoint is None)
    return result


def run_txt2img(app: App, spec: Txt2ImgJob, control: JobControl) -> ImagesResult:
    return _run_generation(app, spec, control)


def run_img2img(app: App, spec: Img2ImgJob, control: JobControl) -> ImagesResult:
    return _run_generation(app, spec, control)


def _check_other_checkpoints(app: App, req: GenerationRequest) -> None:
    """The hires checkpoint and the refiner a request names must exist (checked before the job is queued)."""
    for field, name in (("hr_checkpoint_name", req.hr_checkpoint_name), ("refiner_checkpoint", req.refiner_checkpoint)):
        if name in (None, "", "None", "none", SAME_CHECKPOINT):
            continue
        try:
            app.models.resolve(str(name))
        except ModelLoadError as exc:
            raise ValidationError(f"{field}: {exc}", field=field) from None


def check_txt2img(app: App, spec: Txt2ImgJob) -> None:
    from modules.scripts.runner import check_scripts

    validate(spec.request, app.limits())
    _check_other_checkpoints(app, spec.request)
    check_scripts(app.scripts, spec)


def check_img2img(app: App, spec: Img2ImgJob) -> None:
    from modules.scripts.runner import check_scripts

    validate_img2img(spec.request, app.limits())
    _check_other_checkpoints(app, spec.request)
    check_scripts(app.scripts, spec)


def check_batch(app: App, spec: Img2ImgBatchJob) -> None:
    base = spec.base
    validate_img2img(base.replace(init_images=(Image.new("RGB", (base.width, base.height)),)), spec.limits)


def run_img2img_batch(app: App, spec: Img2ImgBatchJob, control: JobControl) -> JobResult:
    return run_batch(app.engine, spec, control)


# -- models ------------------------------------------------------------------------------------------------------
def run_load_model(app: App, spec: LoadModelJob, control: JobControl) -> ModelResult:
    control.update(phase="loading model")
    return ModelResult(app.load_model(spec.checkpoint))


def run_reload_model(app: App, spec: ReloadModelJob, control: JobControl) -> ModelResult:
    control.update(phase="loading model")
    parts = app.models.reload()
    app.remember_model()
    for problem in app.workers_model_action("reload"):
        control.warn(problem)
    return ModelResult(parts.info.title if parts is not None and parts.info is not None else None)


def run_unload_model(app: App, spec: UnloadModelJob, control: JobControl) -> ModelResult:
    app.models.unload()
    app.model_unloaded()
    for problem in app.workers_model_action("unload"):
        control.warn(problem)
    return ModelResult(None)


def run_device_config(app: App, spec: DeviceConfigJob, control: JobControl) -> ModelResult:
    control.update(phase="loading model")
    config = dataclasses.replace(app.device_config(app.models.config.device), precision=spec.precision,
                                 attention=spec.attention)
    app.models.apply_config(config)
    current = app.models.current
    return ModelResult(current.info.title if current is not None and current.info is not None else None)


# -- merge -------------------------------------------------------------------------------------------------------
def check_merge(app: App, spec: MergeJob) -> None:
    from modules.merge import service

    service.validate(app, spec.request)


def run_merge_job(app: App, spec: MergeJob, control: JobControl) -> MergeResultSummary:
    from modules.merge import service

    return service.run_merge(app, spec.request, control)


def check_extras(app: App, spec: ExtrasJob) -> None:
    app.upscalers.refresh()  # a model file added since start is found (a walk of a few folders)
    validate_extras(spec.request, app.upscalers, app.extras_tools(spec.interrogate_options))
    training = spec.request.training
    if training is not None and training.caption.enable:  # a missing captioner model is named before queueing
        settings = dict(spec.interrogate_options)
        for name in training.caption.option:
            if name == "Deepbooru":
                app.interrogators.check("deepdanbooru", settings)
            else:  # BLIP's caption needs only the BLIP model
                app.interrogators.clip.check_caption(clip_options(settings))


def run_extras_job(app: App, spec: ExtrasJob, control: JobControl) -> ExtrasResult:
    folder = spec.output_dir
    tools = app.extras_tools(spec.interrogate_options)
    if folder is None:
        return run_extras(app.upscalers, spec.request, control, tools=tools)
    def save(image: Image.Image, chunks: Mapping[str, str], name: str, suffix: str, caption: str | None) -> Path:
        forced = Path(name).stem + suffix if spec.original_names and name else ""
        path = outputs.save_image(image, folder, spec.output_format, chunks.get("parameters"),
                                  pattern=suffix.lstrip("-"),
                                  extra_text={k: v for k, v in chunks.items() if k != "parameters"},
                                  forced_name=forced)
        if caption is not None:  # the caption file beside the image, as A1111 writes it
            fileio.atomic_write_text(path.with_suffix(".txt"), caption)
        return path

    return run_extras(app.upscalers, spec.request, control, save, tools)


def check_interrogate(app: App, spec: InterrogateJob) -> None:
    app.interrogators.check(spec.model, dict(spec.options))


def run_interrogate(app: App, spec: InterrogateJob, control: JobControl) -> InterrogateResult:
    control.update(phase=f"interrogating with {spec.model}")
    return InterrogateResult(app.interrogators.interrogate(spec.image, spec.model, dict(spec.options)))


def builtin_handlers() -> JobHandlers:
    """Every job kind of the application and its handler: the one place where kinds are registered."""
    handlers = JobHandlers()
    handlers.register(Txt2ImgJob, run_txt2img, check_txt2img)
    handlers.register(Img2ImgJob, run_img2img, check_img2img)
    handlers.register(Img2ImgBatchJob, run_img2img_batch, check_batch)
    handlers.register(LoadModelJob, run_load_model)
    handlers.register(ReloadModelJob, run_reload_model)
    handlers.register(UnloadModelJob, run_unload_model)
    handlers.register(DeviceConfigJob, run_device_config)
    handlers.register(MergeJob, run_merge_job, check_merge)
    handlers.register(ExtrasJob, run_extras_job, check_extras)
    handlers.register(InterrogateJob, run_interrogate, check_interrogate)
    _register_training(handlers)
    return handlers


def _register_training(handlers: JobHandlers) -> None:
    from modules.training import runs, service
    from modules.training.specs import CreateEmbeddingJob, TrainEmbeddingJob, TrainLoraJob

    handlers.register(CreateEmbeddingJob, service.run_create_embedding, service.check_create_embedding)
    handlers.register(TrainEmbeddingJob, runs.run_train_embedding, service.check_train_embedding)
    handlers.register(TrainLoraJob, runs.run_train_lora, service.check_train_lora)

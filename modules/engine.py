"""The engine facade: pick the model (and the job's VAE), generate, save each image as soon as it is done.

Requests reach the engine validated (at the edge: the UI, the API, the CLI); the engine does not validate again.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules import images as image_utils
from modules import outputs
from modules.errors import is_out_of_memory
from modules.faces.restorers import FaceRestorers
from modules.generation.batches import FaceRestore, ImageListener, ModelSource
from modules.generation.control import JobControl
from modules.generation.img2img import img2img
from modules.generation.result import GenerationResult
from modules.generation.txt2img import txt2img
from modules.jobs import free_memory
from modules.models import memory
from modules.models.loader import ModelParts
from modules.models.manager import ModelManager
from modules.networks.service import ExtraNetworks
from modules.output_options import OutputOptions
from modules.requests import GenerationRequest, Img2ImgRequest
from modules.upscalers.registry import UpscalerRegistry

if TYPE_CHECKING:
    from modules.job_types import ImagesResult

__all__ = ["Engine", "JobOutput", "OutputOptions"]
log = logging.getLogger(__name__)
Generate = Callable[[ModelParts, Any, JobControl, int, ImageListener | None, ModelSource | None,
                     ExtraNetworks | None, UpscalerRegistry | None, FaceRestore | None], GenerationResult]


@dataclass
class JobOutput:
    result: GenerationResult
    grid: Image.Image | None = None
    paths: dict[int, Path] = field(default_factory=dict)  # image index -> the file it was saved to
    grid_path: Path | None = None

    @property
    def saved(self) -> list[Path]:
        return [self.paths[i] for i in sorted(self.paths)]


class Engine:
    def __init__(self, models: ModelManager, networks: ExtraNetworks | None = None,
                 upscalers: UpscalerRegistry | None = None, faces: FaceRestorers | None = None) -> None:
        self.models = models
        self.networks = networks
        self.upscalers = upscalers
        self.faces = faces

    def txt2img(self, req: GenerationRequest, control: JobControl | None = None, out: OutputOptions | None = None,
                preview_every: int = 0, grid: bool = True) -> JobOutput:
        """Run (and, when ``out`` is given, save) a validated txt2img request. ``grid``: make a grid of the
        images when there are several (or always, when ``out`` says so)."""
        return self._run(txt2img, req, control, out, preview_every, grid)

    def img2img(self, req: Img2ImgRequest, control: JobControl | None = None, out: OutputOptions | None = None,
                preview_every: int = 0, grid: bool = True) -> JobOutput:
        """Run (and, when ``out`` is given, save) a validated img2img or inpainting request."""
        return self._run(img2img, req, control, out, preview_every, grid)

    def _run(self, generate: Generate, req: GenerationRequest, control: JobControl | None,
             out: OutputOptions | None, preview_every: int, grid: bool) -> JobOutput:
        control = control or JobControl()
        control.update(phase="loading model")
        paths: dict[int, Path] = {}
        listener = _saver(out, paths, control) if out is not None and out.save_samples else None
        def load(name: str) -> ModelParts:  # the hires checkpoint or the refiner, with the job's VAE choice
            return self.models.with_vae(self.models.get(name), req.vae)

        faces = self._restore_faces if self.faces is not None else None
        result: GenerationResult | None = None
        retry: str | None = None
        for attempt in range(2):
            parts = self.models.with_vae(self.models.get(req.checkpoint), req.vae)
            before = memory.current_mode(parts)
            try:
                result = generate(parts, req, control, preview_every, listener, load, self.networks,
                                  self.upscalers, faces)
                break
            except Exception as exc:
                # the Automatic memory mode: once more in the next lower mode (the exception, which holds the
                # failed attempt's tensors, is dropped before the retry)
                if attempt or not is_out_of_memory(exc) or control.should_stop():
                    raise
                retry = self.models.lower_memory(parts)
                if retry is None:
                    raise
            free_memory()
            log.warning("out of memory in the %s memory mode; running the job again in %s mode", before, retry)
            control.warn(f"out of memory in the {before} memory mode: the job ran again in {retry} mode (as "
                         f"--{retry}), which the model keeps until it is loaded again")
        assert result is not None
        job = JobOutput(result, paths=paths)
        count = len(job.result.images)
        if grid and count and (count > 1 or (out is not None and not out.grid_only_if_multiple)):
            job.grid = image_utils.image_grid(job.result.images)
            if out is not None and out.save_grid:
                job.grid_path = _save_grid(job, out, control)
        return job


    def _restore_faces(self, image: Image.Image, req: GenerationRequest, control: JobControl) -> Image.Image:
        """"Restore faces" on one generated image; a restorer that cannot run leaves it as it is, with a warning."""
        assert self.faces is not None
        name = req.face_restoration_model
        if name not in self.faces.names():
            control.warn(f"Restore faces: {name} is not installed (its weights file goes in models/"
                         f"{'GFPGAN' if name == 'GFPGAN' else 'Codeformer'}); the images were not restored")
            return image
        result = self.faces.restore(image, name, codeformer_weight=req.code_former_weight,
                                    cancel=control.should_stop)
        if result.warning:
            control.warn(result.warning)
        return result.image


def _values(result: GenerationResult, index: int) -> dict[str, object]:
    return _pattern_values(result.request, index, result.all_seeds, result.all_prompts[index],
                           result.all_negative_prompts[index], result.model_name, result.model_hash)


def _pattern_values(req: GenerationRequest, index: int, seeds: list[int], prompt: str, negative_prompt: str,
                    model_name: str, model_hash: str | None) -> dict[str, object]:
    """What the file name pattern's tags read for image ``index`` of a job."""
    return {
        "seed": seeds[index], "seeds": seeds, "steps": req.steps, "cfg_scale": req.cfg_scale,
        "width": req.width, "height": req.height, "styles": list(req.styles), "sampler": req.sampler_name,
        "scheduler": req.scheduler, "model_hash": model_hash or "", "model_name": model_name,
        "prompt": prompt, "negative_prompt": negative_prompt,
        "job_timestamp": _dt.datetime.now(), "batch_number": index % req.batch_size,
        "generation_number": index, "clip_skip": req.clip_skip, "denoising_strength": req.denoising_strength,
    }


def save_images_result(result: ImagesResult, out: OutputOptions, keep_grid: bool,
                       warn: Callable[[str], None]) -> ImagesResult:
    """Save a result made elsewhere (a generation worker's: images as PNG bytes) as the engine saves its own: each
    image, then the grid; the result with the paths, and its grid only when ``keep_grid`` (the job asked for it)."""
    seeds = [image.seed for image in result.images]
    images = list(result.images)
    if out.save_samples:
        for index, image in enumerate(images):
            values = _pattern_values(result.request, index, seeds, image.prompt, image.negative_prompt,
                                     result.model_name, result.model_hash)
            path = write_sample(image.to_pil(), image.infotext, values, out, warn)
            if path is not None:
                images[index] = replace(image, path=path)
    grid, grid_path = result.grid, result.grid_path
    if out.save_grid and grid is not None:
        values = _pattern_values(result.request, 0, seeds or [-1], grid.prompt, grid.negative_prompt,
                                 result.model_name, result.model_hash)
        grid_path = write_grid(grid.to_pil(), grid.infotext, values, out, warn)
        grid = replace(grid, path=grid_path) if grid_path is not None else grid
    return replace(result, images=tuple(images), grid=grid if keep_grid else None, grid_path=grid_path)


def _folder(root: Path, out: OutputOptions, to_dirs: bool, values: Mapping[str, object]) -> Path:
    """Where an image goes: ``root``, or its subdirectory named by ``directories_filename_pattern``."""
    return root / outputs.subfolder(out.directories_pattern, values) if to_dirs else root


def write_sample(image: Image.Image, infotext: str | None, values: Mapping[str, object], out: OutputOptions,
                 warn: Callable[[str], None]) -> Path | None:
    """One image saved under the samples pattern (with its infotext in a .txt file beside it when ``save_txt``);
    None (logged, said in the job's warnings) when it cannot be."""
    return _write(image, infotext, values, out, warn, grid=False)


def write_grid(image: Image.Image, infotext: str | None, values: Mapping[str, object], out: OutputOptions,
               warn: Callable[[str], None], basename: str = "grid") -> Path | None:
    """A grid saved as ``<basename>-0000.<ext>`` (with its infotext beside it when ``save_txt``); None when it
    cannot be."""
    return _write(image, infotext, values, out, warn, grid=True, basename=basename)


def _write(image: Image.Image, infotext: str | None, values: Mapping[str, object], out: OutputOptions,
           warn: Callable[[str], None], grid: bool, basename: str = "") -> Path | None:
    values = {"max_prompt_words": out.max_prompt_words, **values}
    if grid:
        folder = _folder(out.grids_dir, out, out.grid_save_to_dirs, values)
        naming: dict[str, Any] = {"pattern": "", "basename": basename, "digits": 4}
    else:
        folder = _folder(out.samples_dir, out, out.save_to_dirs, values)
        naming = {"pattern": out.filename_pattern or "[seed]"}
    try:
        path = outputs.save_image(image, folder, out.grid_format if grid else out.samples_format,
                                  infotext if out.enable_pnginfo else None, values=values, quality=out.jpeg_quality,
                                  **naming)
    except OSError as exc:
        what = "the grid" if grid else "an image"
        log.warning("could not save %s: %s", what, exc)
        warn(f"{what} could not be saved ({exc.strerror or exc})" + ("" if grid else "; it is still in the result"))
        return None
    _write_text(path, infotext, out, warn)
    return path


def _write_text(path: Path, infotext: str | None, out: OutputOptions, warn: Callable[[str], None]) -> None:
    if not out.save_txt or infotext is None:
        return
    try:
        outputs.write_infotext_file(path, infotext)
    except OSError as exc:
        log.warning("could not write %s: %s", path.with_suffix(".txt"), exc)
        warn(f"the text file beside {path.name} could not be written ({exc.strerror or exc})")


def _saver(out: OutputOptions, paths: dict[int, Path], control: JobControl) -> ImageListener:
    """Save each image as it is made, so an interrupted or killed job keeps what it finished."""
    def on_image(result: GenerationResult, index: int) -> None:
        path = write_sample(result.images[index], result.infotexts[index], _values(result, index), out,
                             control.warn)
        if path is not None:
            paths[index] = path

    return on_image


def _save_grid(job: JobOutput, out: OutputOptions, control: JobControl) -> Path | None:
    assert job.grid is not None
    result = job.result
    return write_grid(job.grid, result.infotexts[0] if result.infotexts else None, _values(result, 0), out,
                       control.warn)

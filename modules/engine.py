"""The engine facade every front door drives: pick the model, generate, save the outputs."""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from modules import images as image_utils
from modules import outputs
from modules.generation.control import JobControl
from modules.generation.result import GenerationResult
from modules.generation.img2img import img2img
from modules.generation.txt2img import txt2img
from modules.models.manager import ModelManager
from modules.requests import GenerationRequest, Img2ImgRequest, Limits, validate, validate_img2img

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputOptions:
    """Where and how a job's images are saved (a snapshot of the settings taken when the job is submitted)."""

    samples_dir: Path = Path("outputs/txt2img-images")
    grids_dir: Path = Path("outputs/txt2img-grids")
    save_samples: bool = True
    save_grid: bool = True
    samples_format: str = "png"
    grid_format: str = "png"
    filename_pattern: str = "[seed]"
    save_to_dirs: bool = True
    enable_pnginfo: bool = True
    grid_only_if_multiple: bool = True
    jpeg_quality: int = 80

    @classmethod
    def under(cls, root: Path, kind: str = "txt2img", **changes) -> OutputOptions:
        """A1111's default layout below ``root``: ``<kind>-images`` and ``<kind>-grids``."""
        return cls(samples_dir=Path(root) / f"{kind}-images", grids_dir=Path(root) / f"{kind}-grids", **changes)


@dataclass
class JobOutput:
    result: GenerationResult
    grid: Image.Image | None = None
    saved: list[Path] = field(default_factory=list)
    grid_path: Path | None = None


class Engine:
    def __init__(self, models: ModelManager, limits: Limits | None = None) -> None:
        self.models = models
        self.limits = limits or Limits()

    def txt2img(self, req: GenerationRequest, control: JobControl | None = None,
                out: OutputOptions | None = None, preview_every: int = 0) -> JobOutput:
        """Validate, run and (when ``out`` is given) save a txt2img job."""
        validate(req, self.limits)
        return self._run(txt2img, req, control, out, preview_every)

    def img2img(self, req: Img2ImgRequest, control: JobControl | None = None,
                out: OutputOptions | None = None, preview_every: int = 0) -> JobOutput:
        """Validate, run and (when ``out`` is given) save an img2img or inpainting job."""
        validate_img2img(req, self.limits)
        return self._run(img2img, req, control, out, preview_every)

    def _run(self, generate: Callable[..., GenerationResult], req: GenerationRequest, control: JobControl | None,
             out: OutputOptions | None, preview_every: int) -> JobOutput:
        control = control or JobControl()
        control.update(phase="loading model")
        parts = self.models.get(req.checkpoint)
        self.models.apply_vae(parts, req.vae)
        result = generate(parts, req, control, preview_every)
        job = JobOutput(result)
        if len(result.images) > 1 or (out is not None and not out.grid_only_if_multiple):
            job.grid = image_utils.image_grid(result.images)
        if out is not None:
            save_outputs(job, out)
        return job


def _values(result: GenerationResult, index: int) -> dict:
    req = result.request
    return {
        "seed": result.all_seeds[index], "seeds": result.all_seeds, "steps": req.steps, "cfg_scale": req.cfg_scale,
        "width": req.width, "height": req.height, "styles": list(req.styles), "sampler": req.sampler_name,
        "scheduler": req.scheduler, "model_hash": result.model_hash or "", "model_name": result.model_name,
        "prompt": result.all_prompts[index], "negative_prompt": result.all_negative_prompts[index],
        "job_timestamp": _dt.datetime.now(), "batch_number": index % req.batch_size,
        "generation_number": index, "clip_skip": req.clip_skip, "denoising_strength": req.denoising_strength,
    }


def save_outputs(job: JobOutput, out: OutputOptions) -> None:
    """Save samples to ``samples_dir/<date>/`` and the grid to ``grids_dir/<date>/`` (no date folder if off)."""
    result = job.result
    today = _dt.date.today().isoformat()
    if out.save_samples:
        folder = out.samples_dir / today if out.save_to_dirs else out.samples_dir
        for i, image in enumerate(result.images):
            info = result.infotexts[i] if out.enable_pnginfo else None
            job.saved.append(outputs.save_image(image, folder, out.samples_format, info,
                                                pattern=out.filename_pattern or "[seed]",
                                                values=_values(result, i), quality=out.jpeg_quality))
    if job.grid is not None and out.save_grid:
        folder = out.grids_dir / today if out.save_to_dirs else out.grids_dir
        info = result.infotexts[0] if out.enable_pnginfo and result.infotexts else None
        job.grid_path = outputs.save_image(job.grid, folder, out.grid_format, info, pattern="",
                                           values=_values(result, 0), basename="grid", digits=4,
                                           quality=out.jpeg_quality)

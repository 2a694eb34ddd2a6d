"""Every kind of job as a plain, serialisable spec (a frozen dataclass), and the plain results jobs give back.

A spec holds everything its handler needs (no closures over the application); a result is data (PNG bytes with
their infotext, file paths, numbers), so a job can run in another process or on another machine. Handlers are
registered in :mod:`modules.job_handlers`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from PIL import Image

from modules.extras import ExtrasRequest, ExtrasResult
from modules.merge.service import MergeRequest
from modules.output_options import OutputOptions
from modules.requests import GenerationRequest, Img2ImgRequest, Limits
from modules.scripts.registry import ScriptCall
from modules.training.specs import CreateEmbeddingJob, TrainEmbeddingJob, TrainLoraJob, TrainResult


@dataclass(frozen=True)
class Txt2ImgJob:
    kind: ClassVar[str] = "txt2img"
    request: GenerationRequest
    output: OutputOptions | None = None  # None: nothing is saved (and no grid is made), as the API's default
    preview_every: int = 0
    return_grid: bool = False  # put the grid (when one is made) first in the result
    script: ScriptCall | None = None  # the selected script, run in place of the one generation
    alwayson: tuple[ScriptCall, ...] = ()  # always-on scripts


@dataclass(frozen=True)
class Img2ImgJob:
    kind: ClassVar[str] = "img2img"
    request: Img2ImgRequest
    output: OutputOptions | None = None
    preview_every: int = 0
    return_grid: bool = False
    script: ScriptCall | None = None
    alwayson: tuple[ScriptCall, ...] = ()


@dataclass(frozen=True)
class Img2ImgBatchJob:
    """img2img's Batch: every image of a folder (or uploads), written under their own names to ``output_dir``."""

    kind: ClassVar[str] = "img2img-batch"
    base: Img2ImgRequest
    inputs: tuple[Path, ...]
    output_dir: Path
    mask_dir: Path | None = None
    png_info_fields: tuple[str, ...] = ()
    scale_by: float | None = None  # "Resize by": each image's own size times this
    limits: Limits = Limits()  # each input's request (its PNG info applied) is checked against these


@dataclass(frozen=True)
class LoadModelJob:
    kind: ClassVar[str] = "load-model"
    checkpoint: str | None = None  # None: the first checkpoint found


@dataclass(frozen=True)
class ReloadModelJob:
    kind: ClassVar[str] = "reload-model"


@dataclass(frozen=True)
class UnloadModelJob:
    kind: ClassVar[str] = "unload-model"


@dataclass(frozen=True)
class DeviceConfigJob:
    """Load the resident model again with another precision or attention setting."""

    kind: ClassVar[str] = "device-config"
    precision: str
    attention: str


@dataclass(frozen=True)
class MergeJob:
    kind: ClassVar[str] = "merge"
    request: MergeRequest


@dataclass(frozen=True)
class ExtrasJob:
    kind: ClassVar[str] = "extras"
    request: ExtrasRequest
    output_dir: Path | None = None  # None: nothing saved (the API); the Extras tab saves to outputs/extras-images
    output_format: str = "png"
    original_names: bool = False  # batches: each file saved under its source's name (``use_original_name_batch``)
    interrogate_options: tuple[tuple[str, object], ...] = ()  # the settings the captioners use


@dataclass(frozen=True)
class InterrogateJob:
    """A prompt read from an image by ``model`` ("clip" or "deepdanbooru"), with the interrogate settings of the
    moment it was queued."""

    kind: ClassVar[str] = "interrogate"
    image: Image.Image
    model: str = "clip"
    options: tuple[tuple[str, object], ...] = ()  # the interrogate settings (name, value)


@dataclass(frozen=True)
class InterrogateResult:
    caption: str


JobSpec = (Txt2ImgJob | Img2ImgJob | Img2ImgBatchJob | LoadModelJob | ReloadModelJob | UnloadModelJob
           | DeviceConfigJob | MergeJob | ExtrasJob | InterrogateJob | CreateEmbeddingJob | TrainEmbeddingJob
           | TrainLoraJob)


# -- results -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputImage:
    """One image of a result: PNG bytes with its infotext embedded, and where it was saved."""

    png: bytes
    infotext: str
    seed: int = -1
    subseed: int = -1
    prompt: str = ""
    negative_prompt: str = ""
    path: Path | None = None

    def to_pil(self) -> Image.Image:
        with Image.open(io.BytesIO(self.png)) as image:
            image.load()
            return image


@dataclass(frozen=True)
class ImagesResult:
    """What a txt2img or img2img job gives back. ``request`` is the request as run (seeds resolved, no images)."""

    request: GenerationRequest
    images: tuple[OutputImage, ...]
    grid: OutputImage | None = None  # set when the job asked for the grid and one was made
    grid_path: Path | None = None
    model_name: str = ""
    model_hash: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None
    extra_params: dict[str, object] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    interrupted: bool = False
    job_timestamp: str = ""
    first_image: int = 0  # how many of ``images`` are a script's grids (A1111's index_of_first_image)
    script: str = ""  # the script that made the images (its title), if any

    @property
    def infotexts(self) -> list[str]:
        return [image.infotext for image in self.images]

    @property
    def saved(self) -> list[Path]:
        return [image.path for image in self.images if image.path is not None]


@dataclass(frozen=True)
class BatchResult:
    """What an img2img batch job gives back: the files written and the inputs skipped, with why."""

    images: tuple[OutputImage, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    output_dir: Path | None = None
    interrupted: bool = False

    @property
    def saved(self) -> list[Path]:
        return [image.path for image in self.images if image.path is not None]

    @property
    def infotexts(self) -> list[str]:
        return [image.infotext for image in self.images]

    def summary(self) -> str:
        parts = [f"{len(self.saved)} image(s) written"]
        if self.skipped:
            parts.append("skipped: " + "; ".join(f"{name} ({why})" for name, why in self.skipped))
        if self.interrupted:
            parts.append("interrupted")
        return ", ".join(parts)


@dataclass(frozen=True)
class ModelResult:
    """A model job's outcome: the checkpoint now resident (``None`` after an unload)."""

    title: str | None


@dataclass(frozen=True)
class MergeResultSummary:
    path: str
    name: str
    title: str
    sha256: str
    hash: str
    config: str | None
    seconds: float
    message: str

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


JobResult = (ImagesResult | BatchResult | ModelResult | MergeResultSummary | ExtrasResult | InterrogateResult
             | TrainResult)

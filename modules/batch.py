"""img2img "Batch": every image of an input folder (or a list of uploads), with masks and PNG info, A1111's way."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from modules import images as image_utils
from modules.engine import Engine
from modules.errors import ValidationError, WebUIError
from modules.fileio import write_new_file
from modules.generation.control import JobControl
from modules.job_types import BatchResult, Img2ImgBatchJob, OutputImage
from modules.param_io import read_infotext, request_from_values
from modules.params import PARAMS
from modules.requests import Img2ImgRequest, validate_img2img

log = logging.getLogger(__name__)
PNG_INFO_FIELDS = ("Prompt", "Negative prompt", "Seed", "CFG scale", "Sampler", "Steps", "Model hash")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def _find_mask(mask_dir: Path | None, name: str) -> Path | None:
    if mask_dir is None:
        return None
    stem = Path(name).stem
    for candidate in sorted(mask_dir.iterdir()):
        if candidate.is_file() and candidate.stem == stem:
            return candidate
    return None


def with_png_info(req: Img2ImgRequest, image: Image.Image, keys: Iterable[str]) -> Img2ImgRequest:
    """A1111's "Append png info to prompts": the chosen infotext keys of the image's own infotext, prompts appended
    to the request's, other values replacing its own."""
    wanted = set(keys)
    text = image_utils.read_parameters(image)
    if not wanted or not text:
        return req
    values, _ = read_infotext(text, "img2img")
    field_of = {p.key: p.field for p in PARAMS if p.key is not None}
    changes: dict[str, object] = {}
    for key in wanted:
        name = field_of.get(key)
        if name is None or name not in values:
            continue
        if name in ("prompt", "negative_prompt"):
            if values[name]:
                changes[name] = f"{getattr(req, name)} {values[name]}".strip()
        else:
            changes[name] = values[name]
    return request_from_values(Img2ImgRequest, changes, req)


def _output(folder: Path, name: str, image: Image.Image, infotext: str, seed: object) -> OutputImage:
    """Write ``<name>.png`` (``<name>-1.png``... when taken) and describe it."""
    stem = Path(name).stem
    data = image_utils.encode_image(image, "png", infotext)
    path = write_new_file(folder, lambda n: f"{stem}.png" if n == 0 else f"{stem}-{n}.png", 0,
                          lambda f: f.write(data))
    return OutputImage(data, infotext, seed if isinstance(seed, int) else -1, path=path)


def _request_for(base: Img2ImgRequest, path: Path, mask_dir: Path | None, fields: tuple[str, ...],
                 scale_by: float | None) -> Img2ImgRequest:
    """The request for one input: its image, its mask, its PNG info, its size ("Resize by")."""
    image = _open(path)
    req = base.replace(init_images=(image,))
    if scale_by is not None:
        width, height = int(image.width * scale_by), int(image.height * scale_by)
        req = req.replace(width=width - width % 8, height=height - height % 8)
    mask_path = _find_mask(mask_dir, path.name)
    if mask_path is not None:
        try:
            req = req.replace(mask=_open(mask_path))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise _Skip(f"mask {mask_path.name} unreadable: {type(exc).__name__}") from None
    return with_png_info(req, image, fields)


class _Skip(Exception):
    """This input is skipped, for the reason given."""


def run_batch(engine: Engine, job: Img2ImgBatchJob, control: JobControl | None = None) -> BatchResult:
    """Run ``job.base`` on each input image, writing ``<name>.png`` files to ``job.output_dir`` (never
    overwriting). An input that cannot be read or whose request is invalid is skipped with the reason."""
    control = control or JobControl()
    written: list[OutputImage] = []
    skipped: list[tuple[str, str]] = []
    interrupted = False
    for i, path in enumerate(job.inputs):
        if control.interrupted:
            interrupted = True
            break
        control.update(job_no=i, job_count=len(job.inputs), phase=f"batch {i + 1}/{len(job.inputs)}")
        try:
            req = _request_for(job.base, path, job.mask_dir, job.png_info_fields, job.scale_by)
            validate_img2img(req, job.limits)
            out = engine.img2img(req, control, grid=False)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            skipped.append((path.name, f"not an image: {type(exc).__name__}"))
            continue
        except (_Skip, WebUIError) as exc:
            skipped.append((path.name, str(exc)))
            continue
        for image_out, info, seed in zip(out.result.images, out.result.infotexts, out.result.all_seeds,
                                         strict=False):
            written.append(_output(job.output_dir, path.name, image_out, info, seed))
        control.clear_skip()
    return BatchResult(tuple(written), tuple(skipped), job.output_dir, interrupted or control.interrupted)


def list_inputs(folder: Path) -> list[Path]:
    """The files of an input folder, in name order (non-images are reported when processed, not hidden)."""
    if not folder.is_dir():
        raise ValidationError(f"input directory not found: {folder}", field="img2img_batch_input_dir")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

"""img2img "Batch": every image of an input folder (or a list of uploads), with masks and PNG info, A1111's way."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from modules import images as image_utils
from modules.errors import ValidationError, WebUIError
from modules.fileio import write_new_file
from modules.generation.control import JobControl
from modules.infotext import parse_infotext
from modules.requests import Img2ImgRequest

log = logging.getLogger(__name__)
PNG_INFO_FIELDS = ("Prompt", "Negative prompt", "Seed", "CFG scale", "Sampler", "Steps", "Model hash")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class BatchReport:
    saved: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    interrupted: bool = False

    def summary(self) -> str:
        parts = [f"{len(self.saved)} image(s) written"]
        if self.skipped:
            parts.append("skipped: " + "; ".join(f"{name} ({why})" for name, why in self.skipped))
        if self.interrupted:
            parts.append("interrupted")
        return ", ".join(parts)


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


def with_png_info(req: Img2ImgRequest, image: Image.Image, fields: Iterable[str]) -> Img2ImgRequest:
    """A1111's "Append png info to prompts": the chosen values of the image's own infotext added to the request."""
    fields = set(fields)
    text = image_utils.read_parameters(image)
    if not fields or not text:
        return req
    params = {k: v for k, v in parse_infotext(text).items() if k in fields}
    changes: dict[str, Any] = {}
    if params.get("Prompt"):
        changes["prompt"] = f"{req.prompt} {params['Prompt']}".strip()
    if params.get("Negative prompt"):
        changes["negative_prompt"] = f"{req.negative_prompt} {params['Negative prompt']}".strip()
    for key, name in (("Seed", "seed"), ("CFG scale", "cfg_scale"), ("Sampler", "sampler_name"), ("Steps", "steps")):
        if key in params:
            changes[name] = params[key]
    if "Model hash" in params:
        changes["checkpoint"] = str(params["Model hash"])
    return req.replace(**changes)


def _save(folder: Path, name: str, image: Image.Image, infotext: str | None) -> Path:
    stem = Path(name).stem
    data = image_utils.encode_image(image, "png", infotext)
    return write_new_file(folder, lambda n: f"{stem}.png" if n == 0 else f"{stem}-{n}.png", 0,
                          lambda f: f.write(data))


def run_batch(engine: Any, base: Img2ImgRequest, inputs: list[Path], output_dir: Path,
              mask_dir: Path | None = None, png_info_fields: Iterable[str] = (),
              control: JobControl | None = None) -> BatchReport:
    """Run ``base`` on each input image, writing ``<name>.png`` files to ``output_dir`` (never overwriting)."""
    control = control or JobControl()
    report = BatchReport()
    fields = tuple(png_info_fields)
    for i, path in enumerate(inputs):
        if control.interrupted:
            report.interrupted = True
            break
        control.update(job_no=i, job_count=len(inputs), phase=f"batch {i + 1}/{len(inputs)}")
        try:
            image = _open(path)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            report.skipped.append((path.name, f"not an image: {type(exc).__name__}"))
            continue
        req = base.replace(init_images=(image,))
        mask_path = _find_mask(mask_dir, path.name)
        if mask_path is not None:
            try:
                req = req.replace(mask=_open(mask_path))
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                report.skipped.append((path.name, f"mask {mask_path.name} unreadable: {type(exc).__name__}"))
                continue
        req = with_png_info(req, image, fields)
        try:
            job = engine.img2img(req, control)
        except ValidationError as exc:
            report.skipped.append((path.name, str(exc)))
            continue
        except WebUIError as exc:
            report.skipped.append((path.name, str(exc)))
            continue
        for image_out, info in zip(job.result.images, job.result.infotexts):
            report.saved.append(_save(output_dir, path.name, image_out, info))
            report.images.append(image_out)
            report.infotexts.append(info)
        control.clear_skip()
    return report


def list_inputs(folder: Path) -> list[Path]:
    """The files of an input folder, in name order (non-images are reported when processed, not hidden)."""
    if not folder.is_dir():
        raise ValidationError(f"input directory not found: {folder}", field="img2img_batch_input_dir")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

"""The face restorers A1111 offers, GFPGAN and CodeFormer, over the user's weights files.

Files are found as A1111 finds them: GFPGAN is the first ``.pth`` (or ``.safetensors``) file under
``models/GFPGAN`` whose name contains "GFPGAN" (``GFPGANv1.4.pth``); CodeFormer is the first one under
``models/Codeformer`` (``codeformer-v0.1.0.pth``), leaving out the face helper files. Extra folders given for a
restorer are searched before its standard one. Networks are read weights-only and identified by spandrel.

Each restorer needs facexlib's face detector, ``detection_Resnet50_Final.pth``, looked up in the restorer's own
folders, then the other restorer's, then ``models/facexlib``; without it the image comes back unchanged with a
warning saying where to put it. Nothing is downloaded. ``parsing_parsenet.pth``, found the same way, gives the
face-parsing blend mask A1111 uses; without it the faces are blended with facexlib's feathered square.

GFPGAN runs as ``net(x, return_rgb=False)[0]`` with its noise drawn from a fixed seed (so a face restores the same
every time), CodeFormer as ``net(x, weight=w, adain=True)[0]``, both in float32 (spandrel marks neither safe in
half precision). One restorer network is kept loaded at a time, with the detector and parsing net.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from PIL import Image

from modules.errors import ValidationError
from modules.faces.parsenet import face_mask, load_parsenet
from modules.faces.pipeline import Cancel, FaceMask, OnProgress, RestoreNet, restore_faces
from modules.faces.retinaface import DETECT_SIZE, RetinaFace, load_retinaface
from modules.faces.weights import FaceModelError, read_weights
from modules.upscalers.spandrel_loader import spandrel

__all__ = ["FaceModelError", "FaceRestoreResult", "FaceRestorers", "blend_visibility", "load_restorer",
           "restorer_from_state_dict"]

log = logging.getLogger(__name__)

GFPGAN, CODEFORMER = "GFPGAN", "CodeFormer"
FOLDERS = MappingProxyType({CODEFORMER: "Codeformer", GFPGAN: "GFPGAN"})  # A1111 lists CodeFormer first
ARCHITECTURES = MappingProxyType({GFPGAN: "GFPGAN", CODEFORMER: "CodeFormer"})  # spandrel's architecture ids
EXTENSIONS = (".pth", ".safetensors")
DETECTOR_FILE = "detection_Resnet50_Final.pth"
PARSER_FILE = "parsing_parsenet.pth"
HELPER_FOLDER = "facexlib"
GFPGAN_NOISE_SEED = 0


@dataclass(frozen=True)
class FaceRestoreResult:
    image: Image.Image
    faces: int  # faces restored
    warning: str | None = None  # why nothing (or not everything) was done, for the user


def blend_visibility(original: Image.Image, restored: Image.Image, visibility: float) -> Image.Image:
    """A1111's visibility: ``restored`` over ``original`` at ``visibility`` (0 the original, 1 the restored)."""
    if visibility >= 1:
        return restored
    base = original.convert("RGB")
    return Image.blend(base, restored.convert("RGB").resize(base.size), max(0.0, float(visibility)))


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS]
    return sorted((p for p in found if not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=_natural_key)


def _is_helper(path: Path) -> bool:
    return path.stem.lower().startswith(("detection_", "parsing_"))


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Draws on ``device`` (and the CPU) from ``seed``; the generators are restored afterwards."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


class FaceRestorers:
    """Finds the restorers' files, loads their networks lazily (weights-only) and restores faces."""

    def __init__(self, models_dir: Path, device_fn: Callable[[], torch.device], *,
                 gfpgan_dirs: Sequence[Path] = (), codeformer_dirs: Sequence[Path] = (),
                 detect_size: int = DETECT_SIZE) -> None:
        self.models_dir = models_dir
        self.detect_size = detect_size  # the shorter side images are resized to for detection (A1111: 640)
        self.device_fn = device_fn
        extra = {GFPGAN: list(gfpgan_dirs), CODEFORMER: list(codeformer_dirs)}
        self.dirs = {name: [*extra[name], models_dir / folder] for name, folder in FOLDERS.items()}
        self._lock = threading.Lock()
        self._net: tuple[tuple[str, str], torch.nn.Module] | None = None  # ((path, device), network)
        self._helpers: dict[tuple[str, str], torch.nn.Module] = {}  # (path, device) -> detector / parser

    # --- files ----------------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The restorers whose weights file is present, in A1111's order."""
        return [name for name in FOLDERS if self.model_path(name) is not None]

    def api(self) -> list[dict[str, str | None]]:
        """A1111's ``/sdapi/v1/face-restorers`` entries."""
        return [{"name": name, "cmd_dir": None} for name in self.names()]

    def model_path(self, name: str) -> Path | None:
        """The weights file of restorer ``name``, or None."""
        for folder in self.dirs.get(name, []):
            for path in _files(folder):
                if name == GFPGAN and "GFPGAN" not in path.name:
                    continue
                if name == CODEFORMER and _is_helper(path):
                    continue
                return path
        return None

    def helper_path(self, name: str, file: str) -> Path | None:
        """A face helper file (``file``, or the same stem as ``.safetensors``) for restorer ``name``."""
        others = [d for other in FOLDERS if other != name for d in self.dirs[other]]
        for folder in [*self.dirs.get(name, []), *others, self.models_dir / HELPER_FOLDER]:
            for candidate in (folder / file, (folder / file).with_suffix(".safetensors")):
                if candidate.is_file():
                    return candidate
        return None

    # --- models ---------------------------------------------------------------------------------------------------

    def unload(self) -> None:
        """Forgets every loaded network (the next restore reads the files again)."""
        with self._lock:
            self._net = None
            self._helpers.clear()

    def network(self, name: str, path: Path, device: torch.device) -> torch.nn.Module:
        """The restorer network of ``path`` on ``device``, loaded once (the previous one is let go)."""
        key = (str(path.resolve()), str(device))
        with self._lock:
            if self._net is not None and self._net[0] == key:
                return self._net[1]
            self._net = None
        net = load_restorer(path, ARCHITECTURES[name], device)
        with self._lock:
            self._net = (key, net)
        return net

    def _helper(self, path: Path, device: torch.device, load: Callable[[Path, torch.device], torch.nn.Module],
                ) -> torch.nn.Module:
        key = (str(path.resolve()), str(device))
        with self._lock:
            hit = self._helpers.get(key)
        if hit is None:
            hit = load(path, device)
            with self._lock:
                self._helpers = {k: v for k, v in self._helpers.items() if k[1] == key[1]}
                self._helpers[key] = hit
        return hit

    # --- running --------------------------------------------------------------------------------------------------

    def restore(self, image: Image.Image, name: str, *, codeformer_weight: float = 0.5,
                on_progress: OnProgress | None = None, cancel: Cancel | None = None) -> FaceRestoreResult:
        """``image`` with its faces restored by ``name`` ("GFPGAN" or "CodeFormer"). ``codeformer_weight`` is
        CodeFormer's fidelity (0 the strongest restoration, 1 the closest to the input). A missing weights file
        gives the image back (as RGB) with a warning; an unreadable or unknown one raises FaceModelError."""
        if name not in FOLDERS:
            raise ValidationError(f"unknown face restorer {name!r}; known: {', '.join(FOLDERS)}")
        rgb = image.convert("RGB")
        path = self.model_path(name)
        if path is None:
            return FaceRestoreResult(rgb, 0, self._missing_model(name))
        detector_path = self.helper_path(name, DETECTOR_FILE)
        if detector_path is None:
            folder = self._shown(self.dirs[name][-1])
            helpers = self._shown(self.models_dir / HELPER_FOLDER)
            return FaceRestoreResult(rgb, 0, f"{name}: face restoration needs the face detector {DETECTOR_FILE}; "
                                             f"place it in {folder} (or {helpers})")
        device = self.device_fn()
        net = self.network(name, path, device)
        detector = self._helper(detector_path, device, load_retinaface)
        assert isinstance(detector, RetinaFace)
        parser_path = self.helper_path(name, PARSER_FILE)
        mask: FaceMask | None = None
        if parser_path is not None:
            parser = self._helper(parser_path, device, load_parsenet)

            def mask(face: torch.Tensor) -> torch.Tensor:
                return face_mask(parser, face)
        else:
            log.info("%s not found: faces are blended with a feathered square", PARSER_FILE)
        run = self._runner(name, net, device, codeformer_weight)
        detect = functools.partial(detector.detect, resize=self.detect_size)
        result = restore_faces(rgb, detect, run, device=device, mask=mask, on_progress=on_progress, cancel=cancel)
        warning = None
        if result.failed:
            warning = f"{name}: restoring {result.failed} of {result.found} faces failed; they were left as they were"
        elif result.interrupted:
            warning = f"{name}: interrupted after {result.faces} of {result.found} faces"
        return FaceRestoreResult(result.image, result.faces - result.failed, warning)

    def face_boxes(self, image: Image.Image) -> list[tuple[float, float, float, float]]:
        """The faces' boxes in ``image`` (for the focal-point crop), found with the face detector when its file is
        installed in a restorer's folder or ``models/facexlib``; none without it."""
        path = self.helper_path(GFPGAN, DETECTOR_FILE)
        if path is None:
            return []
        detector = self._helper(path, self.device_fn(), load_retinaface)
        assert isinstance(detector, RetinaFace)
        return [face.box for face in detector.detect(image.convert("RGB"), resize=self.detect_size)]

    @staticmethod
    def _runner(name: str, net: torch.nn.Module, device: torch.device, codeformer_weight: float) -> RestoreNet:
        param = next(net.parameters())

        def run(x: torch.Tensor) -> torch.Tensor:
            x = x.to(device=param.device, dtype=param.dtype)
            if name == GFPGAN:
                with _seeded(param.device, GFPGAN_NOISE_SEED):
                    out = net(x, return_rgb=False)[0]
            else:
                out = net(x, weight=float(codeformer_weight), adain=True)[0]
            assert isinstance(out, torch.Tensor)
            return out.to(device)

        return run

    def _shown(self, folder: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(folder.relative_to(self.models_dir.parent))
        return str(folder)

    def _missing_model(self, name: str) -> str:
        folder = self._shown(self.dirs[name][-1])
        if name == GFPGAN:
            return f"GFPGAN: no model file in {folder} (a .pth or .safetensors file whose name contains GFPGAN)"
        return f"CodeFormer: no model file in {folder} (such as codeformer-v0.1.0.pth)"


def load_restorer(path: Path, architecture: str, device: torch.device) -> torch.nn.Module:
    """The network of a GFPGAN or CodeFormer weights file (read weights-only, identified by spandrel) on
    ``device`` in eval mode; a FaceModelError naming the file when it cannot be used."""
    return restorer_from_state_dict(read_weights(path), path.name, architecture, device)


def restorer_from_state_dict(state: dict[str, object], file_name: str, architecture: str,
                             device: torch.device) -> torch.nn.Module:
    """The network of ``state`` (a file's top-level dict, unwrapped as spandrel does) if spandrel identifies it as
    ``architecture`` ("GFPGAN" or "CodeFormer"): on ``device``, in eval mode, in float32 unless spandrel says half
    precision is safe and the device is CUDA."""
    sp = spandrel()
    try:
        state = sp.canonicalize_state_dict(state)
        support = next((a for a in sp.MAIN_REGISTRY.architectures("detection") if a.detect(state)), None)
    except Exception:  # noqa: BLE001 - a dict spandrel cannot even inspect
        support = None
    if support is None:
        raise FaceModelError(f"{file_name}: not a model architecture spandrel knows")
    if support.architecture.id != architecture:  # told before the network is built
        raise FaceModelError(f"{file_name}: a {support.architecture.name} model, not {architecture}")
    try:
        with torch.random.fork_rng(devices=[]):  # building the network draws initial weights: not from our stream
            descriptor = support.architecture.load(state)
    except Exception as exc:  # noqa: BLE001 - a state dict that does not fit its architecture, and the like
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise FaceModelError(f"{file_name}: cannot be loaded ({reason})") from None
    descriptor.to(device)
    if device.type == "cuda" and descriptor.supports_half:
        descriptor.half()
    descriptor.eval()
    model = descriptor.model
    assert isinstance(model, torch.nn.Module)
    return model

"""Restoring every face of an image, as A1111 does with facexlib's FaceRestoreHelper (face size 512, upscale 1).

The faces are found on the original image; each is aligned to the 512 template (8-bit levels, grey outside the
image), handed to the network as RGB in [-1, 1], its output clamped to [-1, 1] and cut down to 8-bit levels
(truncated, as A1111's ``astype('uint8')``), then warped back and blended over the image (with the parsing mask when
there is one, else the feathered square). A face the network fails on is pasted back as it was. Faces are done in
detection order; each pasted face is cut to 8-bit levels before the next (A1111 keeps full precision until the end,
which can differ by one level where two faces overlap).

The detector, the network and the parsing mask are passed in, so this runs the same with the real models and with
stand-ins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from modules.errors import is_out_of_memory
from modules.faces.align import FACE_SIZE, align_face, paste_face
from modules.faces.retinaface import Face

log = logging.getLogger(__name__)

Detect = Callable[[Image.Image], Sequence[Face]]  # image -> its faces
RestoreNet = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, 512, 512) RGB in [-1, 1] -> the same, restored
FaceMask = Callable[[torch.Tensor], torch.Tensor]  # restored face (3, 512, 512), RGB 0-255 -> (512, 512) in [0, 1]
OnProgress = Callable[[int, int], None]  # (faces done, faces in all)
Cancel = Callable[[], bool]  # -> stop now?


@dataclass(frozen=True)
class PipelineResult:
    image: Image.Image
    faces: int  # faces restored and pasted back
    found: int  # faces detected
    failed: int  # faces the network failed on (pasted back unrestored)
    interrupted: bool


def to_tensor(image: Image.Image, device: torch.device) -> torch.Tensor:
    """An image as a float tensor (3, H, W) of RGB levels 0-255."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(device)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """A float tensor (3, H, W) of levels 0-255 as an RGB image (values truncated to whole levels)."""
    array = tensor.detach().floor().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def restore_one(face: torch.Tensor, net: RestoreNet) -> tuple[torch.Tensor, bool]:
    """The aligned ``face`` (3, S, S, levels 0-255) through ``net`` and back to whole levels; and whether it worked
    (if not, the face comes back as it was)."""
    x = ((face / 255 - 0.5) / 0.5).unsqueeze(0)
    try:
        with torch.no_grad():
            y = net(x)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        log.warning("face restoration failed on a face", exc_info=True)
        y, ok = x, False
    else:
        ok = True
    y = y.detach().to(torch.float32).reshape(1, 3, face.shape[1], face.shape[2]).clamp(-1, 1)
    return ((y[0] + 1) / 2 * 255).floor().to(face.device), ok


def restore_faces(image: Image.Image, detect: Detect, net: RestoreNet, *, device: torch.device,
                  mask: FaceMask | None = None, on_progress: OnProgress | None = None,
                  cancel: Cancel | None = None) -> PipelineResult:
    """``image`` (as RGB) with every face ``detect`` finds restored by ``net`` and pasted back; the image itself
    when there is none. ``mask`` gives the parsing mask of a restored face (None: the square mask)."""
    rgb = image.convert("RGB")
    faces = list(detect(rgb))
    if not faces:
        return PipelineResult(rgb, 0, 0, 0, False)
    source = to_tensor(rgb, device)
    canvas = source.clone()
    done = failed = 0
    for face in faces:
        if cancel is not None and cancel():
            break
        aligned, matrix = align_face(source, face.landmarks, FACE_SIZE)
        restored, ok = restore_one(aligned, net)
        failed += not ok
        region, (x0, y0, x1, y1) = paste_face(canvas, restored, matrix, mask(restored) if mask else None)
        canvas[:, y0:y1, x0:x1] = region.floor().clamp(0, 255)
        done += 1
        if on_progress is not None:
            on_progress(done, len(faces))
    return PipelineResult(to_image(canvas), done, len(faces), failed, done < len(faces))

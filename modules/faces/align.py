"""Aligning a face to the 512 x 512 FFHQ template and pasting it back, as facexlib's FaceRestoreHelper does.

A face's five landmarks (eyes, nose tip, mouth corners; "left" is the image's left) are mapped onto the template
by the similarity transform (rotation, uniform scale, translation) that fits them best in the least-squares sense.
The face is warped with it (bilinear, outside the image a constant grey), restored, and warped back with the inverse
transform. It is blended in with a soft mask: either the face-parsing mask (see ``parsenet``) or, without one, the
warped square eroded by 2 pixels, then eroded again and blurred by a width that grows with the face's area.

Matrices are 2 x 3 ``float64`` arrays mapping source pixel coordinates to destination pixel coordinates, pixel
centres at integer coordinates (OpenCV's convention). Images are float tensors ``(C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from modules.faces.imageops import erode, gaussian_blur

FACE_SIZE = 512
# the five landmarks of an FFHQ face at 512 x 512: left eye, right eye, nose tip, left and right mouth corner
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]])
BORDER_RGB = (132.0, 133.0, 135.0)  # the grey the aligned face gets where it reaches past the image

Points = Sequence[Sequence[float]] | np.ndarray


def similarity_transform(src: Points, dst: Points) -> np.ndarray:
    """The 2 x 3 matrix ``[[a, -b, tx], [b, a, ty]]`` that maps the points ``src`` closest onto ``dst`` (least
    squares over all points)."""
    s = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    d = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(s) != len(d) or len(s) < 2:
        raise ValueError("similarity_transform needs two equally long lists of at least 2 points")
    ones, zeros = np.ones(len(s)), np.zeros(len(s))
    rows_x = np.stack([s[:, 0], -s[:, 1], ones, zeros], axis=1)  # u = a x - b y + tx
    rows_y = np.stack([s[:, 1], s[:, 0], zeros, ones], axis=1)  # v = b x + a y + ty
    a, b, tx, ty = np.linalg.lstsq(np.concatenate([rows_x, rows_y]), np.concatenate([d[:, 0], d[:, 1]]),
                                   rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2 x 3 affine matrix (``cv2.invertAffineTransform``)."""
    linear = np.linalg.inv(matrix[:, :2])
    out: np.ndarray = np.concatenate([linear, -linear @ matrix[:, 2:]], axis=1)
    return out


def apply_affine(matrix: np.ndarray, points: Points) -> np.ndarray:
    """``points`` (N, 2) mapped by ``matrix``."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    out: np.ndarray = p @ matrix[:, :2].T + matrix[:, 2]
    return out


def shift_affine(matrix: np.ndarray, src_origin: tuple[float, float] = (0.0, 0.0),
                 dst_origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``matrix`` for a source crop whose top left is ``src_origin`` and a destination crop at ``dst_origin``."""
    out: np.ndarray = matrix.astype(np.float64).copy()
    out[:, 2] = matrix[:, :2] @ np.asarray(src_origin, dtype=np.float64) + matrix[:, 2] - np.asarray(dst_origin)
    return out


def warp_affine(image: torch.Tensor, matrix: np.ndarray, size: tuple[int, int],
                border: float | Sequence[float] = 0.0) -> torch.Tensor:
    """``image`` (C, H, W) warped by ``matrix`` into ``size`` (width, height): each output pixel is the bilinear
    sample at its inverse-mapped position, a constant ``border`` (one value or one per channel) outside the image
    (``cv2.warpAffine`` with INTER_LINEAR and BORDER_CONSTANT)."""
    channels, height, width = image.shape
    out_w, out_h = size
    inverse = torch.as_tensor(invert_affine(matrix), dtype=torch.float64, device=image.device)
    ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float64, device=image.device),
                            torch.arange(out_w, dtype=torch.float64, device=image.device), indexing="ij")
    sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    grid = torch.stack([(2 * sx + 1) / width - 1, (2 * sy + 1) / height - 1], dim=-1)
    fill = torch.as_tensor(border, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
    fill = fill.expand(channels, 1, 1)
    sampled = F.grid_sample((image - fill).unsqueeze(0), grid.unsqueeze(0).to(image.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)[0]
    return sampled + fill


def footprint(matrix: np.ndarray, size: tuple[int, int], bounds: tuple[int, int],
              margin: int = 2) -> tuple[int, int, int, int]:
    """The pixel box ``(x0, y0, x1, y1)`` (end exclusive) of ``bounds`` (width, height) that the ``size`` (width,
    height) rectangle mapped by ``matrix`` touches, widened by ``margin`` pixels; empty when it lies outside."""
    w, h = size
    corners = apply_affine(matrix, [[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
    x0 = max(0, int(np.floor(corners[:, 0].min())) - margin)
    y0 = max(0, int(np.floor(corners[:, 1].min())) - margin)
    x1 = min(bounds[0], int(np.ceil(corners[:, 0].max())) + margin + 1)
    y1 = min(bounds[1], int(np.ceil(corners[:, 1].max())) + margin + 1)
    return x0, y0, max(x0, x1), max(y0, y1)


def align_face(image: torch.Tensor, landmarks: Points, size: int = FACE_SIZE) -> tuple[torch.Tensor, np.ndarray]:
    """The face with ``landmarks`` cut out of ``image`` (C, H, W, values 0-255) aligned to the template at ``size``,
    rounded to whole levels as an 8-bit image is, and the matrix from image to face."""
    matrix = similarity_transform(landmarks, FFHQ_TEMPLATE_512 * (size / FACE_SIZE))
    inverse = invert_affine(matrix)
    x0, y0, x1, y1 = footprint(inverse, (size, size), (image.shape[2], image.shape[1]))
    if x1 <= x0 or y1 <= y0:  # the face lies wholly outside the image: all border
        grey = torch.tensor(BORDER_RGB, dtype=image.dtype, device=image.device).view(3, 1, 1)
        return grey.expand(3, size, size).clone(), matrix
    region = image[:, y0:y1, x0:x1]
    face = warp_affine(region, shift_affine(matrix, src_origin=(x0, y0)), (size, size), BORDER_RGB)
    return face.round().clamp(0, 255), matrix


def square_mask(area_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """facexlib's masks without face parsing, from the face square warped into the image (``area_mask``: 1 inside,
    0 outside, fractional along the edge): ``(eroded, soft)``. ``eroded`` is the square eroded by 2 pixels (the
    pasted face is multiplied by it); ``soft``, the blending weight, is ``eroded`` eroded again by ``2 * edge`` and
    blurred with a ``2 * edge + 1`` Gaussian, where ``edge = int(sqrt(sum(eroded))) // 20``."""
    eroded = erode(area_mask, 2)
    edge = int(float(eroded.sum()) ** 0.5) // 20
    soft = gaussian_blur(erode(eroded, edge * 2), edge * 2 + 1)
    return eroded, soft


def paste_face(canvas: torch.Tensor, face: torch.Tensor, matrix: np.ndarray,
               face_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The region of ``canvas`` (C, H, W, values 0-255) that the aligned ``face`` (C, S, S, 0-255) covers once
    warped back with the inverse of ``matrix`` (image to face), with the face blended in, and that region's box
    ``(x0, y0, x1, y1)``. ``face_mask`` (S, S, 0-1) is a parsing mask warped along with the face; without one the
    square mask is used. Only the box changes: outside it the mask is zero."""
    size = face.shape[-1]
    inverse = invert_affine(matrix)
    height, width = canvas.shape[1:]
    x0, y0, x1, y1 = footprint(inverse, (size, size), (width, height))
    if x1 <= x0 or y1 <= y0:
        return canvas[:, y0:y1, x0:x1].clone(), (x0, y0, x1, y1)
    if face_mask is None:  # room for the erosion and blur, which reach about 1/10 of the face's side
        x0, y0, x1, y1 = footprint(inverse, (size, size), (width, height),
                                   margin=4 + max(x1 - x0, y1 - y0) // 10)
    local = shift_affine(inverse, dst_origin=(x0, y0))
    box = (x1 - x0, y1 - y0)
    pasted = warp_affine(face, local, box).round().clamp(0, 255)
    background = canvas[:, y0:y1, x0:x1].to(torch.float64)
    if face_mask is None:
        square = torch.ones(1, size, size, dtype=face.dtype, device=face.device)
        eroded, soft = square_mask(warp_affine(square, local, box)[0])
        pasted = pasted * eroded
    else:
        soft = warp_affine(face_mask.unsqueeze(0).to(face.dtype), local, box)[0]
    soft64 = soft.to(torch.float64)
    blended = soft64 * pasted.to(torch.float64) + (1 - soft64) * background
    return blended.to(canvas.dtype), (x0, y0, x1, y1)

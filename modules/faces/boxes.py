"""RetinaFace's anchor boxes and their decoding, and non-maximum suppression, in torch.

Anchors ("priors") are square boxes centred on every cell of the three feature maps (strides 8, 16, 32), two sizes
per cell (16 and 32, 64 and 128, 256 and 512 pixels), in ``(cx, cy, w, h)`` relative to the network's input size.
The network predicts, per anchor, a box offset and five landmark offsets scaled by the variances 0.1 (centres) and
0.2 (log sizes).
"""

from __future__ import annotations

import math

import torch

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)


def prior_boxes(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """(N, 4) anchors ``(cx, cy, w, h)`` in [0, 1] units of the input, in the order the heads emit them: level by
    level, cells row by row, then the sizes of a cell."""
    out = []
    for sizes, step in zip(MIN_SIZES, STEPS, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * step / height
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * step / width
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        extent = torch.tensor([[s / width, s / height] for s in sizes], dtype=torch.float64)
        out.append(torch.cat([centres, extent.expand(centres.shape[0], -1, -1)], dim=-1).reshape(-1, 4))
    return torch.cat(out).to(device=device, dtype=torch.float32)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """(N, 4) predicted offsets -> (N, 4) boxes ``(x1, y1, x2, y2)`` in [0, 1] units of the input."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """(N, 10) predicted offsets -> (N, 5, 2) landmark points in [0, 1] units of the input."""
    offsets = pre.reshape(-1, 5, 2)
    return priors[:, None, :2] + offsets * VARIANCES[0] * priors[:, None, 2:]


def box_iou(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Intersection over union of one ``(x1, y1, x2, y2)`` box with each of ``others`` (M, 4)."""
    left_top = torch.maximum(box[:2], others[:, :2])
    right_bottom = torch.minimum(box[2:], others[:, 2:])
    inter = (right_bottom - left_top).clamp(min=0).prod(dim=1)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first: a box is dropped when it
    overlaps a better kept box by an IoU above ``iou_threshold``."""
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order].to(torch.float64).cpu()
    alive = torch.ones(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(i)
        if i + 1 < len(order):
            overlap = box_iou(boxes[i], boxes[i + 1:]) > iou_threshold
            alive[i + 1:] &= ~overlap
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]

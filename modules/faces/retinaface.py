"""RetinaFace with a ResNet-50 backbone, the face detector of facexlib (``detection_Resnet50_Final.pth``), in torch.

The modules carry the names of that file's keys: ``body.*`` (ResNet-50's stem and ``layer1``-``layer4``, without its
classifier), ``fpn.*`` (three lateral 1x1 convolutions and two merges), ``ssh1``-``ssh3`` (context modules) and the
per-level ``ClassHead``, ``BboxHead`` and ``LandmarkHead`` 1x1 convolutions, two anchors per cell.

Detection follows facexlib as A1111 calls it: the image is resized (Lanczos) so that its shorter side is 640
pixels, turned into BGR minus the means (104, 117, 123), and run once; anchors scoring above 0.97 are decoded,
suppressed at an IoU of 0.4, and faces whose eyes are closer than 5 pixels are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from modules.faces.boxes import decode_boxes, decode_landmarks, nms, prior_boxes
from modules.faces.imageops import resize_lanczos4
from modules.faces.weights import load_strict, read_state_dict

BGR_MEAN = (104.0, 117.0, 123.0)
DETECT_SIZE = 640  # the shorter side the image is resized to before detection
CONFIDENCE = 0.97
NMS_IOU = 0.4
EYE_DISTANCE = 5.0  # faces whose eyes are closer (in pixels of the image) are skipped


@dataclass(frozen=True)
class Face:
    """A detected face in image pixels: its box ``(x1, y1, x2, y2)``, score, and five landmarks (left eye, right
    eye, nose tip, left and right mouth corner, "left" being the image's left)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    @property
    def eye_distance(self) -> float:
        (lx, ly), (rx, ry) = self.landmarks[0], self.landmarks[1]
        return float(np.hypot(lx - rx, ly - ry))


def _conv_bn(inp: int, out: int, kernel: int, stride: int = 1, leaky: float | None = 0.0) -> nn.Sequential:
    """Convolution (no bias), batch norm, and a leaky ReLU unless ``leaky`` is None."""
    layers: list[nn.Module] = [nn.Conv2d(inp, out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out)]
    if leaky is not None:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1, 3x3 (strided), 1x1 (4x the width), plus the shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out: torch.Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.relu(self.bn3(self.conv3(out)) + identity)
        return out


class ResNet50Body(nn.Module):
    """ResNet-50 up to ``layer4``; returns the outputs of ``layer2``-``layer4`` (strides 8, 16, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for index, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layer = [Bottleneck(inplanes, planes, stride)] + [Bottleneck(planes * 4, planes, 1)
                                                                for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*layer))
            inplanes = planes * 4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.get_submodule("layer1")(x)
        out = []
        for name in ("layer2", "layer3", "layer4"):
            x = self.get_submodule(name)(x)
            out.append(x)
        return out


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.output1 = _conv_bn(in_channels[0], out, 1, leaky=leaky)
        self.output2 = _conv_bn(in_channels[1], out, 1, leaky=leaky)
        self.output3 = _conv_bn(in_channels[2], out, 1, leaky=leaky)
        self.merge1 = _conv_bn(out, out, 3, leaky=leaky)
        self.merge2 = _conv_bn(out, out, 3, leaky=leaky)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out1, out2, out3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[-2:], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[-2:], mode="nearest"))
        return [out1, out2, out3]


class SSH(nn.Module):
    """The context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches concatenated."""

    def __init__(self, inp: int, out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.conv3X3 = _conv_bn(inp, out // 2, 3, leaky=None)
        self.conv5X5_1 = _conv_bn(inp, out // 4, 3, leaky=leaky)
        self.conv5X5_2 = _conv_bn(out // 4, out // 4, 3, leaky=None)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, 3, leaky=leaky)
        self.conv7x7_3 = _conv_bn(out // 4, out // 4, 3, leaky=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        branch7 = self.conv7x7_3(self.conv7X7_2(branch5))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(branch5), branch7], dim=1))


class Head(nn.Module):
    """A 1x1 convolution giving ``values`` numbers per anchor, flattened to (B, cells * anchors, values)."""

    def __init__(self, inp: int, values: int, anchors: int = 2) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(inp, anchors * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """The detector network; ``forward`` gives per-anchor box offsets, class probabilities (background, face) and
    landmark offsets. ``detect`` finds the faces of an image."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ResNet50Body()
        self.fpn = FPN((512, 1024, 2048), 256)
        self.ssh1, self.ssh2, self.ssh3 = SSH(256, 256), SSH(256, 256), SSH(256, 256)
        self.ClassHead = nn.ModuleList([Head(256, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([Head(256, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([Head(256, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(x))
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features, strict=True)], dim=1)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, features, strict=True)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features, strict=True)], dim=1)
        return loc, F.softmax(conf, dim=-1), landmarks

    @torch.no_grad()
    def detect(self, image: Image.Image, *, resize: int | None = DETECT_SIZE, confidence: float = CONFIDENCE,
               nms_iou: float = NMS_IOU, eye_distance: float | None = EYE_DISTANCE) -> list[Face]:
        """The faces of ``image``, best score first, in the image's pixels (see the module's docstring)."""
        param = next(self.parameters())
        rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy())
        bgr = rgb.flip(-1).permute(2, 0, 1).to(param.device)
        height, width = bgr.shape[1:]
        scale = 1.0
        if resize is not None:
            scale = min(height, width) / resize
            bgr = resize_lanczos4(bgr, int(width / scale), int(height / scale)).round().clamp(0, 255)
        x = bgr - torch.tensor(BGR_MEAN, device=bgr.device).view(3, 1, 1)
        loc, conf, landmark_offsets = self(x.unsqueeze(0).to(param.dtype))
        faces = decode_faces(loc[0].float(), conf[0, :, 1].float(), landmark_offsets[0].float(),
                             (x.shape[2], x.shape[1]), confidence, nms_iou)
        out = []
        for box, score, points in faces:
            x1, y1, x2, y2 = (float(v) * scale for v in box)
            face = Face((x1, y1, x2, y2), score, tuple((float(px) * scale, float(py) * scale) for px, py in points))
            if eye_distance is None or face.eye_distance >= eye_distance:
                out.append(face)
        return out


def decode_faces(loc: torch.Tensor, scores: torch.Tensor, landmark_offsets: torch.Tensor, size: tuple[int, int],
                 confidence: float, nms_iou: float) -> list[tuple[list[float], float, list[list[float]]]]:
    """The network's outputs for one image of ``size`` (width, height) -> ``(box, score, landmarks)`` in its pixels
    for the anchors scoring above ``confidence`` that survive non-maximum suppression, best first."""
    width, height = size
    priors = prior_boxes(height, width, loc.device)
    keep = scores > confidence
    if not bool(keep.any()):
        return []
    scale = torch.tensor([width, height], dtype=torch.float32, device=loc.device)
    boxes = decode_boxes(loc[keep], priors[keep]) * scale.repeat(2)
    points = decode_landmarks(landmark_offsets[keep], priors[keep]) * scale
    kept = nms(boxes, scores[keep], nms_iou)
    return [(boxes[i].tolist(), float(scores[keep][i]), points[i].tolist()) for i in kept.tolist()]


def load_retinaface(path: Path, device: torch.device | None = None) -> RetinaFace:
    """The detector with the weights of ``path`` (keys as facexlib's, a ``module.`` prefix allowed), in eval mode;
    a FaceModelError naming the file when they do not fit."""
    net = load_strict(RetinaFace, read_state_dict(path), path, "RetinaFace ResNet-50 (detection_Resnet50_Final.pth)")
    return net.eval().to(device or torch.device("cpu"))

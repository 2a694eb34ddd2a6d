"""ParseNet, facexlib's face-parsing network (``parsing_parsenet.pth``), and the blending mask it gives.

The network (512 in, 512 out, 19 classes) labels each pixel of an aligned face. Skin, brows, eyes, glasses, ears,
nose and mouth (every class but background, neck, cloth, hair and hat) make the mask; it is blurred twice with a
101-pixel Gaussian (sigma 11) and its outer 10 pixels are cleared, so the face blends in softly without its
square's edges. The module names follow the file's keys (``encoder.*``, ``body.*``, ``decoder.*``,
``out_img_conv.*``, ``out_mask_conv.*``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from modules.faces.imageops import gaussian_blur
from modules.faces.weights import load_strict, read_state_dict

# per class: part of the face mask? (0 background, 14 neck, 16 cloth, 17 hair, 18 hat are not)
MASK_CLASSES = (0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0)
BLUR_SIZE, BLUR_SIGMA, EDGE = 101, 11.0, 10


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ConvLayer(nn.Module):
    """Optional 2x nearest upsampling, reflection padding, a convolution (strided to go down), optional batch norm
    (then no bias) and optional leaky ReLU (0.2)."""

    def __init__(self, inp: int, out: int, kernel: int = 3, scale: str = "none", norm: bool = False,
                 relu: bool = False) -> None:
        super().__init__()
        self.up = scale == "up"
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(inp, out, kernel, 2 if scale == "down" else 1, bias=not norm)
        self.norm = _Norm(out) if norm else _Identity()
        self.relu: nn.Module = nn.LeakyReLU(0.2, inplace=True) if relu else _Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        out: torch.Tensor = self.relu(self.norm(self.conv2d(self.reflection_pad(x))))
        return out


class _Norm(nn.Module):
    """The batch norm, under the name the file gives it (``norm.norm``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.norm(x)
        return out


class ResidualBlock(nn.Module):
    def __init__(self, inp: int, out: int, scale: str = "none") -> None:
        super().__init__()
        self.shortcut_func: nn.Module = (_Identity() if scale == "none" and inp == out
                                         else ConvLayer(inp, out, 3, scale))
        first, second = {"down": ("none", "down"), "up": ("up", "none"), "none": ("none", "none")}[scale]
        self.conv1 = ConvLayer(inp, out, 3, first, norm=True, relu=True)
        self.conv2 = ConvLayer(out, out, 3, second, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.shortcut_func(x) + self.conv2(self.conv1(x))
        return out


class ParseNet(nn.Module):
    """facexlib's ParseNet at 512 x 512: 4 steps down to 32 x 32 (64 to 256 channels), 10 residual blocks, 4 up."""

    def __init__(self, classes: int = 19) -> None:
        super().__init__()

        def clip(channels: int) -> int:
            return max(32, min(channels, 256))

        encoder: list[nn.Module] = [ConvLayer(3, 64, 3)]
        head = 64
        for _ in range(4):
            encoder.append(ResidualBlock(clip(head), clip(head * 2), "down"))
            head *= 2
        self.encoder = nn.Sequential(*encoder)
        self.body = nn.Sequential(*[ResidualBlock(clip(head), clip(head)) for _ in range(10)])
        decoder: list[nn.Module] = []
        for _ in range(4):
            decoder.append(ResidualBlock(clip(head), clip(head // 2), "up"))
            head //= 2
        self.decoder = nn.Sequential(*decoder)
        self.out_img_conv = ConvLayer(clip(head), 3)
        self.out_mask_conv = ConvLayer(clip(head), classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 512, 512) RGB in [-1, 1] -> (class logits (B, 19, 512, 512), image (B, 3, 512, 512))."""
        feat = self.encoder(x)
        out = self.decoder(feat + self.body(feat))
        return self.out_mask_conv(out), self.out_img_conv(out)


def load_parsenet(path: Path, device: torch.device | None = None) -> ParseNet:
    """ParseNet with the weights of ``path``, in eval mode; a FaceModelError naming the file when they do not fit."""
    net = load_strict(ParseNet, read_state_dict(path), path, "ParseNet (parsing_parsenet.pth)")
    return net.eval().to(device or torch.device("cpu"))


def mask_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """The soft mask (H, W, in [0, 1]) from per-pixel class labels (H, W): face classes at 255, blurred twice,
    the outer 10 pixels cleared, divided by 255."""
    table = torch.tensor(MASK_CLASSES, dtype=torch.float64, device=labels.device) * 255
    mask = table[labels.long().clamp(0, len(MASK_CLASSES) - 1)]
    mask = gaussian_blur(gaussian_blur(mask, BLUR_SIZE, BLUR_SIGMA), BLUR_SIZE, BLUR_SIGMA)
    mask[:EDGE, :] = 0
    mask[-EDGE:, :] = 0
    mask[:, :EDGE] = 0
    mask[:, -EDGE:] = 0
    return mask / 255


@torch.no_grad()
def face_mask(net: nn.Module, face: torch.Tensor) -> torch.Tensor:
    """The blending mask (S, S, in [0, 1]) of a restored face (3, S, S, RGB 0-255, S = 512)."""
    param = next(net.parameters())
    x = (face.to(device=param.device, dtype=param.dtype) / 255 - 0.5) / 0.5
    logits = net(x.unsqueeze(0))[0]
    return mask_from_labels(logits.argmax(dim=1)[0]).to(face.device)

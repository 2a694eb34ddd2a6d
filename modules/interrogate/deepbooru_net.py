"""The DeepDanbooru ``resnet_custom_v3`` tagging network, as torch.

A bottleneck ResNet read from NHWC images in [0, 1]: a 7x7 stem, six stages of bottleneck blocks, a 1x1 convolution
to one logit per tag, a global average and a sigmoid. Its parameters are named ``n_Conv_<i>.weight`` /
``n_Conv_<i>.bias``, numbered in the order the file ``model-resnet_custom_v3.pt`` numbers them, so that file's state
dict loads strictly. Padding follows the TensorFlow "same" rule the weights were trained with: 3x3 convolutions pad
one pixel on every side at stride 1 and only on the right and bottom at stride 2; the stem pads 2 before and 3 after;
the max pool pads right and bottom with -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TAG_COUNT = 9176
STEM_WIDTH = 64


@dataclass(frozen=True)
class Stage:
    """A run of bottleneck blocks; the first one changes the width (and the resolution when ``stride`` is 2)."""

    blocks: int
    mid: int  # the bottleneck width of the 1x1 -> 3x3 -> 1x1 branch
    out: int
    stride: int
    shortcut_last: bool = False  # the first block's projection is numbered after its branch, not before


STAGES: tuple[Stage, ...] = (
    Stage(3, 64, 256, 1),
    Stage(8, 128, 512, 2),
    Stage(20, 256, 1024, 2),
    Stage(20, 256, 1024, 2, shortcut_last=True),
    Stage(3, 512, 2048, 2),
    Stage(3, 1024, 4096, 2),
)


@dataclass(frozen=True)
class ConvSpec:
    """One convolution: its number in the parameter names and its shape."""

    index: int
    in_ch: int
    out_ch: int
    kernel: int
    stride: int = 1
    bias: bool = True


@dataclass(frozen=True)
class Block:
    """A bottleneck block by convolution numbers: the three branch convolutions and the projection (None: identity)."""

    branch: tuple[int, int, int]
    shortcut: int | None
    stride: int


@dataclass(frozen=True)
class Layout:
    """Every convolution of the network and how the blocks use them."""

    convs: tuple[ConvSpec, ...]
    blocks: tuple[Block, ...]
    head: int


def build_layout(width_divisor: int = 1, tag_count: int = TAG_COUNT) -> Layout:
    """The convolutions in file order; ``width_divisor`` divides every width (1 gives the released model)."""
    if width_divisor < 1 or STEM_WIDTH % width_divisor:
        raise ValueError(f"width_divisor must divide {STEM_WIDTH}, got {width_divisor}")
    convs = [ConvSpec(0, 3, STEM_WIDTH // width_divisor, 7, 2)]
    blocks: list[Block] = []
    width = STEM_WIDTH // width_divisor
    for stage in STAGES:
        mid, out = stage.mid // width_divisor, stage.out // width_divisor
        for number in range(stage.blocks):
            stride = stage.stride if number == 0 else 1
            first = len(convs)
            projection = number == 0
            offset = 1 if projection and not stage.shortcut_last else 0
            branch = (first + offset, first + offset + 1, first + offset + 2)
            shortcut = (first + 3 if stage.shortcut_last else first) if projection else None
            specs = [ConvSpec(branch[0], width, mid, 1), ConvSpec(branch[1], mid, mid, 3, stride),
                     ConvSpec(branch[2], mid, out, 1)]
            if shortcut is not None:
                specs.append(ConvSpec(shortcut, width, out, 1, stride))
            convs += sorted(specs, key=lambda spec: spec.index)
            blocks.append(Block(branch, shortcut, stride))
            width = out
    head = len(convs)
    convs.append(ConvSpec(head, width, tag_count, 1, bias=False))
    return Layout(tuple(convs), tuple(blocks), head)


def parameter_shapes(layout: Layout) -> dict[str, tuple[int, ...]]:
    """The state dict's key names and shapes for ``layout``, without building the network."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in layout.convs:
        shapes[f"n_Conv_{spec.index}.weight"] = (spec.out_ch, spec.in_ch, spec.kernel, spec.kernel)
        if spec.bias:
            shapes[f"n_Conv_{spec.index}.bias"] = (spec.out_ch,)
    return shapes


class DeepDanbooruNet(nn.Module):
    """NHWC images in [0, 1], 512x512 for the released weights -> (batch, tags) probabilities."""

    def __init__(self, width_divisor: int = 1, tag_count: int = TAG_COUNT) -> None:
        super().__init__()
        self.layout = build_layout(width_divisor, tag_count)
        for spec in self.layout.convs:
            conv = nn.Conv2d(spec.in_ch, spec.out_ch, spec.kernel, stride=spec.stride, bias=spec.bias)
            self.add_module(f"n_Conv_{spec.index}", conv)

    @property
    def tag_count(self) -> int:
        return self.layout.convs[-1].out_ch

    def conv(self, index: int) -> nn.Conv2d:
        module = self.get_submodule(f"n_Conv_{index}")
        assert isinstance(module, nn.Conv2d)
        return module

    def forward(self, images: Tensor) -> Tensor:
        stem = self.conv(0)
        x = images.permute(0, 3, 1, 2).to(stem.weight.dtype)
        x = F.relu(stem(F.pad(x, [2, 3, 2, 3], value=0.0)))
        x = F.max_pool2d(F.pad(x, [0, 1, 0, 1], value=-math.inf), kernel_size=3, stride=2)
        for block in self.layout.blocks:
            x = self._block(block, x)
        logits = self.conv(self.layout.head)(x)
        pooled = F.avg_pool2d(logits, kernel_size=tuple(logits.shape[-2:]))
        return torch.sigmoid(pooled.flatten(1))

    def _block(self, block: Block, x: Tensor) -> Tensor:
        reduce, spatial, expand = (self.conv(index) for index in block.branch)
        h = F.relu(reduce(x))
        h = F.relu(spatial(F.pad(h, [1, 1, 1, 1] if block.stride == 1 else [0, 1, 0, 1], value=0.0)))
        skip = x if block.shortcut is None else self.conv(block.shortcut)(x)
        return F.relu(expand(h) + skip)

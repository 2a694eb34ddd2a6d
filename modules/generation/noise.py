"""Seeds and noise: one generator per image, variation seeds, seed resize, eta noise seed delta.

As in A1111, image ``i`` of a job gets seed ``seed + i``; its starting noise depends only on its own seed, so the
same seed gives the same image whatever the batch size. With ``randn_source`` CPU the noise is drawn on the CPU and
is the same on every device.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

MAX_RANDOM_SEED = 4294967294
Randn = Callable[[torch.Generator, Sequence[int]], torch.Tensor]  # (generator, shape) -> float32 noise


def pick_seed(seed: int) -> int:
    """-1 means a random seed, drawn as A1111 does (0 .. 2**32-2)."""
    return int(random.randrange(MAX_RANDOM_SEED)) if seed is None or int(seed) == -1 else int(seed)


def all_seeds(seed: int, count: int) -> list[int]:
    return [(seed + i) % 2**64 for i in range(count)]


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (A1111's variation seeds)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * (1 - t) + high * t
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * low + (torch.sin(t * omega) / so).unsqueeze(1) * high


@dataclass
class ImageRNG:
    """Per-image random state for one batch: starting noise, then the sampler's noise from the same generators."""

    shape: tuple[int, ...]  # (C, H, W) of one latent
    seeds: Sequence[int]
    subseeds: Sequence[int] = ()
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] = (0, 0)  # latent (h, w) of the resize source, 0 = off
    source: str = "CPU"
    device: torch.device = torch.device("cpu")
    eta_noise_seed_delta: int = 0

    def __post_init__(self) -> None:
        gen_device = torch.device("cpu") if self.source == "CPU" else self.device
        self._gen_device = gen_device
        self.generators = [torch.Generator(gen_device).manual_seed(int(s)) for s in self.seeds]

    def _randn(self, gen: torch.Generator, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=gen, device=self._gen_device, dtype=torch.float32)

    def first(self) -> torch.Tensor:
        """The starting noise of the whole batch, shape (B, C, H, W), float32 on ``device``."""
        out = []
        src_h, src_w = self.seed_resize_from
        for i, gen in enumerate(self.generators):
            shape = self.shape if not (src_h and src_w) else (self.shape[0], src_h, src_w)
            noise = self._randn(gen, shape)
            if self.subseed_strength > 0 and i < len(self.subseeds):
                sub_gen = torch.Generator(self._gen_device).manual_seed(int(self.subseeds[i]))
                subnoise = self._randn(sub_gen, shape)
                noise = slerp(self.subseed_strength, noise.unsqueeze(0), subnoise.unsqueeze(0))[0]
            if shape != tuple(self.shape):
                noise = _paste_centered(noise, tuple(self.shape), gen, self._randn)
            out.append(noise)
        if self.eta_noise_seed_delta:
            self.generators = [torch.Generator(self._gen_device).manual_seed(int(s) + self.eta_noise_seed_delta)
                               for s in self.seeds]
        return torch.stack(out).to(self.device)

    def sampler_generators(self) -> list[torch.Generator]:
        """Generators for the sampler's own noise (ancestral/SDE samplers), continuing each image's stream."""
        return self.generators


def _paste_centered(noise: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator, randn: Randn
                    ) -> torch.Tensor:
    """Noise generated at the "seed resize from" size, placed in the centre of fresh noise of the target size."""
    target = randn(gen, shape)
    _, sh, sw = noise.shape
    _, th, tw = shape
    h, w = min(sh, th), min(sw, tw)
    dy, dx = (th - h) // 2, (tw - w) // 2
    sy, sx = (sh - h) // 2, (sw - w) // 2
    target[:, dy:dy + h, dx:dx + w] = noise[:, sy:sy + h, sx:sx + w]
    return target

"""Seeds and noise as A1111 makes them: one generator per image, variation seeds, seed resize, eta noise seed delta,
the RNG sources CPU, GPU and NV, and the Brownian-tree noise of the SDE samplers.

Image ``i`` of a job gets seed ``seed + i``; its starting noise depends only on its own seed, so the same seed gives
the same image whatever the batch size. The sampler's own noise (ancestral and SDE steps) continues each image's
generator, reseeded with ``seed + ENSD`` after the starting noise when an eta noise seed delta is set.

Sources: ``CPU`` is torch's CPU generator (the same numbers on every machine); ``GPU`` is the generator of the device
the model runs on, which on an NVIDIA GPU is Philox; ``NV`` computes those Philox numbers itself (with numpy on the
CPU; on a CUDA device with torch's integer kernels there, so that the noise is not the step's bottleneck). On a machine
without CUDA, ``GPU`` is served by ``NV``, so an infotext made on an NVIDIA card (no ``RNG`` key) gives the same noise.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from modules.sampling import brownian, philox

MAX_RANDOM_SEED = 4294967294


def pick_seed(seed: int) -> int:
    """-1 means a random seed, drawn as A1111 does (0 .. 2**32-2)."""
    return int(random.randrange(MAX_RANDOM_SEED)) if seed is None or int(seed) == -1 else int(seed)


def all_seeds(seed: int, count: int) -> list[int]:
    return [(seed + i) % 2**64 for i in range(count)]


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors, A1111's variation seeds.

    As in A1111, one image's noise (C, H, W) is normalised along its second axis, and nearly parallel inputs fall
    back to ``low * t + high * (1 - t)`` (A1111's order)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * t + high * (1 - t)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * low + (torch.sin(t * omega) / so).unsqueeze(1) * high


def effective_source(source: str, device: torch.device) -> str:
    """The source that really runs: GPU on a device without its own generator of NVIDIA's numbers becomes NV."""
    if source == "GPU" and device.type != "cuda":
        return "NV"
    return source


class NoiseGenerator:
    """One seeded stream of standard normal noise from an RNG source; ``randn`` continues the stream."""

    def __init__(self, seed: int, source: str, device: torch.device) -> None:
        self.source = source
        self.device = device
        self._philox: philox.Generator | None = None
        self._torch: torch.Generator | None = None
        if source == "NV":
            self._philox = philox.Generator(int(seed) % 2**64)
        else:
            gen_device = device if source == "GPU" else torch.device("cpu")
            self._torch = torch.Generator(gen_device).manual_seed(int(seed) % 2**64)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Float32 noise of ``shape`` on ``device``."""
        if self._philox is not None:
            return self._philox.randn_on(tuple(shape), self.device)
        assert self._torch is not None
        out = torch.randn(tuple(shape), generator=self._torch, device=self._torch.device, dtype=torch.float32)
        return out.to(self.device)


def randn_local(seed: int, shape: Sequence[int], source: str, device: torch.device) -> torch.Tensor:
    """The first draw of a fresh generator seeded with ``seed``."""
    return NoiseGenerator(seed, source, device).randn(shape)


@dataclass
class ImageRNG:
    """Per-image random state for one batch: the starting noise, then the sampler's noise from the same streams."""

    shape: tuple[int, ...]  # (C, H, W) of one latent
    seeds: Sequence[int]
    subseeds: Sequence[int] = ()
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] = (0, 0)  # latent (h, w) of the resize source, 0 = off
    source: str = "GPU"
    device: torch.device = torch.device("cpu")
    eta_noise_seed_delta: int = 0
    _first_done: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.source = effective_source(self.source, self.device)
        self.generators = [self._generator(s) for s in self.seeds]

    def _generator(self, seed: int) -> NoiseGenerator:
        return NoiseGenerator(seed, self.source, self.device)

    def _local(self, seed: int, shape: Sequence[int]) -> torch.Tensor:
        return randn_local(seed, shape, self.source, self.device)

    def first(self) -> torch.Tensor:
        """The starting noise of the whole batch, shape (B, C, H, W), float32 on ``device``."""
        self._first_done = True
        src_h, src_w = self.seed_resize_from
        noise_shape = self.shape if src_h <= 0 or src_w <= 0 else (self.shape[0], src_h, src_w)
        out = []
        for i, (seed, gen) in enumerate(zip(self.seeds, self.generators, strict=True)):
            subnoise = None
            if self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                subnoise = self._local(subseed, noise_shape)
            noise = gen.randn(noise_shape) if noise_shape == self.shape else self._local(seed, noise_shape)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != self.shape:
                noise = _paste_centered(noise, gen.randn(self.shape))
            out.append(noise)
        if self.eta_noise_seed_delta:
            self.generators = [self._generator(int(s) + int(self.eta_noise_seed_delta)) for s in self.seeds]
        return torch.stack(out).to(self.device)

    def next(self) -> torch.Tensor:
        """The next noise of the batch: the starting noise the first time, then each image's stream continued."""
        if not self._first_done:
            return self.first()
        return torch.stack([gen.randn(self.shape) for gen in self.generators]).to(self.device)

    def noise_sampler(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The sampler's per-step noise (``noise(sigma, sigma_next)``), drawn from the images' streams."""
        return lambda _sigma, _sigma_next: self.next()

    def brownian_noise(self, x: torch.Tensor, sigmas: torch.Tensor) -> BrownianTreeNoise:
        """The Brownian-tree noise of the SDE samplers, one tree per image seeded with its seed, over the range of
        ``sigmas`` (the full schedule, also for img2img), as A1111 builds it."""
        return BrownianTreeNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), list(self.seeds), self.source)


def _paste_centered(noise: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Noise made at the "seed resize from" size, placed in the centre of noise of the target size (cropped centred
    when larger), as A1111 does."""
    _, sh, sw = noise.shape
    _, th, tw = target.shape
    dx, dy = (tw - sw) // 2, (th - sh) // 2
    w = sw if dx >= 0 else sw + 2 * dx
    h = sh if dy >= 0 else sh + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    target[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
    return target


# --- Brownian-tree noise -----------------------------------------------------------------------------------------

def _tree_draw(source: str, device: torch.device, shape: tuple[int, ...]) -> Callable[[Any], Any]:
    """The Brownian tree's draws from the job's RNG source, as A1111 makes them: each the first draw of a fresh
    generator seeded with the tree's seed (NV: all of a query's draws in one Philox pass). On a CPU the tree works
    on numpy arrays, elsewhere on tensors of the device."""

    def draw(seeds: Any) -> Any:
        rows, cols = seeds.shape
        if source == "NV" and philox.computes_on(device):
            flat_seeds = [int(s) for s in seeds.reshape(-1)]
            n = int(np.prod(shape, dtype=np.int64))
            return philox.torch_rows(flat_seeds, [0] * len(flat_seeds), n, device).reshape(rows, cols, *shape)
        if source == "NV":
            flat = philox.randn_many(seeds.reshape(-1), shape)
            return flat.reshape(rows, cols, *shape) if device.type == "cpu" else torch.from_numpy(flat).to(device)
        generator = torch.Generator(device if source == "GPU" else "cpu")
        out = torch.empty((rows * cols, *shape), device=generator.device)
        for i, seed in enumerate(seeds.reshape(-1)):  # each draw: a fresh generator's first numbers
            generator.manual_seed(int(seed))
            torch.randn(shape, generator=generator, out=out[i])
        out = out.reshape(rows, cols, *shape).to(device)
        return out.numpy() if device.type == "cpu" else out

    return draw


class BrownianTreeNoise:
    """Noise of a Brownian motion W over sigma, normalised: (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|).

    One Brownian tree per image, seeded with the image's seed, so the SDE samplers give the same image whatever the
    batch size and whatever the order of the queries: the numbers of torchsde's ``BrownianTree`` that A1111 uses,
    with its normals from the job's RNG source (``modules.sampling.brownian``)."""

    def __init__(self, x: torch.Tensor, sigma_min: torch.Tensor, sigma_max: torch.Tensor, seeds: list[int],
                 source: str) -> None:
        self.source, self.device = source, x.device
        t0, t1 = float(sigma_min), float(sigma_max)
        self.sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        self.dtype = x.dtype
        draw = _tree_draw(source, x.device, tuple(x.shape[1:]))
        self.tree = brownian.BrownianTree(t0, t1, [int(s) % 2**64 for s in seeds], draw)

    def prepare(self, sigmas: Iterable[torch.Tensor | float]) -> None:
        """Compute ahead the tree's nodes for queries between these sigmas (a sampler's schedule): the same numbers,
        made for all steps at once (``BrownianTree.prepare``)."""
        self.tree.prepare(float(s) for s in sigmas)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        f0, f1 = float(t0), float(t1)
        a, b, sign = (f0, f1, 1) if f0 < f1 else (f1, f0, -1)
        w = self.tree(a, b)
        if isinstance(w, np.ndarray) and t0.dtype == t1.dtype == torch.float32 and self.dtype == torch.float32:
            # the same float32 operations as below (the scale from torch: its square root can differ from numpy's
            # in the last place), the array arithmetic in numpy: cheaper for a small latent
            scale = np.float32((t1 - t0).abs().sqrt().item())
            return torch.from_numpy(w * np.float32(self.sign * sign) / scale)
        out = torch.as_tensor(w, device=self.device).to(self.dtype) * (self.sign * sign)
        return out / (t1 - t0).abs().sqrt()

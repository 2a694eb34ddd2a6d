"""A1111's "NV" noise source: the numbers `torch.randn` gives on an NVIDIA GPU, computed on the CPU with numpy.

torch draws normal noise on CUDA from curand's Philox 4x32-10 counter-based generator (Salmon et al., "Parallel
random numbers: as easy as 1, 2, 3", SC 2011). Element `i` of a draw is made by its own GPU thread, whose Philox
counter is `(offset, i)` as two 64-bit halves, each split into two 32-bit words, low word first; the key is the
seed's two 32-bit words. Of the four 32-bit words that Philox returns, the first two become uniforms in (0, 1) and
the sine branch of the Box-Muller transform turns them into one standard normal value; the other two are unused.

Each draw from a `Generator` advances its offset by one, as torch's CUDA generator moves to fresh counters after
each `torch.randn`, and as A1111's NV generator does. The uniforms and the transform are evaluated in double
precision with curand's float32 constants and rounded once to float32, as A1111's NV source does; the GPU's float32
kernel agrees with this to within a few float32 units in the last place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

U32Array = npt.NDArray[np.uint32]
F32Array = npt.NDArray[np.float32]

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # golden ratio, the first key's Weyl increment
PHILOX_W1 = 0xBB67AE85  # sqrt(3) - 1, the second key's Weyl increment
PHILOX_ROUNDS = 10

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF

# curand's constants (curand_normal.h): 2^-32 and 2^-32 * 2pi, both as float32.
TWO_POW32_INV = float(np.float32(2.3283064e-10))
TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10) * np.float32(6.2831855))

LATENT_CHANNELS = 4
LATENT_SCALE = 8


def philox4x32(counter: U32Array, key: tuple[int, int] | tuple[U32Array, U32Array],
               rounds: int = PHILOX_ROUNDS) -> U32Array:
    """Philox 4x32 over a (4, ...) array of counters; returns a new uint32 array of the same shape.

    The key is two 32-bit words, each a number or an array broadcast against one counter word (one key per row
    draws many seeds' numbers in one pass). The words are held in 64-bit integers, so each round's two 32x32-bit
    products are exact and their high and low halves are a shift and a mask."""
    if counter.ndim < 2 or counter.shape[0] != 4:
        raise ValueError("Philox counters must be a (4, ...) array")
    mask, shift = np.uint64(_MASK32), np.uint64(32)
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    c0, c1, c2, c3 = (counter[i].astype(np.uint64) for i in range(4))
    k0 = np.asarray(key[0], dtype=np.uint64) & mask
    k1 = np.asarray(key[1], dtype=np.uint64) & mask
    p0, p1 = np.empty_like(c0), np.empty_like(c0)
    for round_index in range(rounds):  # in place: fresh arrays for every step cost more than the arithmetic
        if round_index:
            k0 = (k0 + np.uint64(PHILOX_W0)) & mask
            k1 = (k1 + np.uint64(PHILOX_W1)) & mask
        np.multiply(c0, m0, out=p0)
        np.multiply(c2, m1, out=p1)
        np.right_shift(p1, shift, out=c0)
        c0 ^= c1
        c0 ^= k0
        np.right_shift(p0, shift, out=c2)
        c2 ^= c3
        c2 ^= k1
        np.bitwise_and(p1, mask, out=c1)
        np.bitwise_and(p0, mask, out=c3)
    return np.stack([c0, c1, c2, c3]).astype(np.uint32)


def box_muller_sin(x: U32Array, y: U32Array) -> F32Array:
    """One standard normal per pair of uint32 words: curand's Box-Muller, sine branch, rounded to float32.

    The words map to the open interval (0, 1) as `(w + 1/2) * 2^-32`, so the logarithm is always finite."""
    u = x.astype(np.float64) * TWO_POW32_INV + TWO_POW32_INV / 2
    v = y.astype(np.float64) * TWO_POW32_INV_2PI + TWO_POW32_INV_2PI / 2
    radius = np.sqrt(-2.0 * np.log(u))
    return (radius * np.sin(v)).astype(np.float32)


def _split64(values: npt.NDArray[np.uint64]) -> tuple[U32Array, U32Array]:
    return (values & np.uint64(_MASK32)).astype(np.uint32), (values >> np.uint64(32)).astype(np.uint32)


def _shape_tuple(shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0 for d in dims):
        raise ValueError(f"Noise shape must be non-negative integers, got {shape!r}")
    return tuple(int(d) for d in dims)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"Seed must be an integer, got {seed!r}")
    if not 0 <= int(seed) <= _MASK64:
        raise ValueError(f"Seed must be between 0 and 2^64 - 1, got {seed}")
    return int(seed)


class Generator:
    """Standard normal noise equal to `torch.randn(..., device="cuda")` after `torch.manual_seed(seed)`.

    `offset` counts the draws made so far; each `randn` uses it and then adds one."""

    def __init__(self, seed: int, offset: int = 0) -> None:
        self.seed = _check_seed(seed)
        if offset < 0:
            raise ValueError(f"Generator offset must not be negative, got {offset}")
        self.offset = int(offset)

    def randn(self, shape: int | Sequence[int]) -> F32Array:
        """A float32 array of `shape` standard normal values; advances the offset by one."""
        dims = _shape_tuple(shape)
        n = int(np.prod(dims, dtype=np.int64))
        index_lo, index_hi = _split64(np.arange(n, dtype=np.uint64))
        offset = self.offset & _MASK64
        counter = np.empty((4, n), dtype=np.uint32)
        counter[0] = offset & _MASK32
        counter[1] = offset >> 32
        counter[2] = index_lo
        counter[3] = index_hi
        words = philox4x32(counter, (self.seed & _MASK32, self.seed >> 32))
        self.offset += 1
        return box_muller_sin(words[0], words[1]).reshape(dims)


def randn_many(seeds: Sequence[int] | npt.NDArray[np.integer], shape: int | Sequence[int]) -> F32Array:
    """The first draws of fresh generators, one per seed, in one pass: row ``i`` of the ``(len(seeds), *shape)``
    result equals ``Generator(seeds[i]).randn(shape)``."""
    dims = _shape_tuple(shape)
    if isinstance(seeds, np.ndarray) and seeds.dtype in (np.uint32, np.uint64):
        keys = seeds.astype(np.uint64).reshape(-1, 1)  # unsigned words need no range check
    else:
        keys = np.asarray([_check_seed(int(s)) for s in seeds], dtype=np.uint64).reshape(-1, 1)
    n = int(np.prod(dims, dtype=np.int64))
    index_lo, index_hi = _split64(np.arange(n, dtype=np.uint64))
    counter = np.zeros((4, len(keys), n), dtype=np.uint32)  # offset 0: the first two words stay zero
    counter[2] = index_lo
    counter[3] = index_hi
    words = philox4x32(counter, (keys & np.uint64(_MASK32), keys >> np.uint64(32)))
    return box_muller_sin(words[0], words[1]).reshape((len(keys), *dims))


def image_noise(seed: int, width: int, height: int, channels: int = LATENT_CHANNELS) -> F32Array:
    """A1111's initial latent noise for one image with the NV source: shape (channels, height // 8, width // 8).

    This is the first draw of a fresh generator seeded with `seed`, as A1111 makes it for each image of a batch."""
    if width < LATENT_SCALE or height < LATENT_SCALE:
        raise ValueError(f"Image size must be at least {LATENT_SCALE}x{LATENT_SCALE}, got {width}x{height}")
    if channels < 1:
        raise ValueError(f"Latent channels must be at least 1, got {channels}")
    return Generator(seed).randn((channels, height // LATENT_SCALE, width // LATENT_SCALE))

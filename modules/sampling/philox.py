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

import functools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

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
    draws many seeds' numbers in one pass). The four words are held as two 64-bit pairs, ``(c0 << 32) | c1`` and
    ``(c2 << 32) | c3``: a round's 32x32-bit product already has the new pair's layout (its high half, xored with
    the other word and the key, in the high word; its low half in the low word), so a round is five whole-array
    operations on contiguous 64-bit integers."""
    if counter.ndim < 2 or counter.shape[0] != 4:
        raise ValueError("Philox counters must be a (4, ...) array")
    mask, shift = np.uint64(_MASK32), np.uint64(32)
    key0 = np.asarray(key[0], dtype=np.uint64) & mask
    key1 = np.asarray(key[1], dtype=np.uint64) & mask
    shape = np.broadcast_shapes(counter.shape[1:], key0.shape, key1.shape)
    lead = (2,) + (1,) * len(shape)
    pairs = np.empty((2, *shape), dtype=np.uint64)
    for row, (high, low) in enumerate(((counter[0], counter[1]), (counter[2], counter[3]))):
        np.left_shift(high.astype(np.uint64), shift, out=pairs[row])
        pairs[row] |= low
    keys = np.stack(np.broadcast_arrays(key0, key1))
    keys = keys.reshape((1, 2) + (1,) * (len(shape) - keys.ndim + 1) + keys.shape[1:])
    weyl = np.arange(rounds, dtype=np.uint64).reshape((rounds,) + (1,) * len(lead)) * np.array(
        [PHILOX_W0, PHILOX_W1], dtype=np.uint64).reshape(lead)
    round_keys = ((keys + weyl) & mask) << shift  # (rounds, 2, ...): each round's key, in the high word
    multipliers = np.array([PHILOX_M1, PHILOX_M0], dtype=np.uint64).reshape(lead)  # for (c2, c0)
    high_words, product = np.empty_like(pairs), np.empty_like(pairs)
    for round_index in range(rounds):
        np.right_shift(pairs, shift, out=high_words)  # (c0, c2)
        np.multiply(high_words[::-1], multipliers, out=product)  # (c2 * m1, c0 * m0)
        np.left_shift(pairs, shift, out=pairs)  # (c1, c3) in the high word
        pairs ^= product
        pairs ^= round_keys[round_index]
    out = np.empty((4, *shape), dtype=np.uint32)
    for row in range(2):
        out[2 * row] = pairs[row] >> shift
        out[2 * row + 1] = pairs[row] & mask
    return out


def box_muller_sin(x: U32Array, y: U32Array) -> F32Array:
    """One standard normal per pair of uint32 words: curand's Box-Muller, sine branch, rounded to float32.

    The words map to the open interval (0, 1) as `(w + 1/2) * 2^-32`, so the logarithm is always finite."""
    u = x.astype(np.float64) * TWO_POW32_INV + TWO_POW32_INV / 2
    v = y.astype(np.float64) * TWO_POW32_INV_2PI + TWO_POW32_INV_2PI / 2
    radius = np.sqrt(-2.0 * np.log(u))
    return (radius * np.sin(v)).astype(np.float32)


def _pair0_normals(pair0: npt.NDArray[np.uint64], out: F32Array) -> None:
    """Box-Muller (as ``box_muller_sin``) of the first two Philox words, held as one 64-bit pair, into ``out``."""
    word = np.empty_like(pair0)
    u = np.empty(pair0.shape, dtype=np.float64)
    np.right_shift(pair0, np.uint64(32), out=word)
    np.multiply(word, TWO_POW32_INV, out=u)  # the word is exact in float64: the same as converting it first
    u += TWO_POW32_INV / 2
    np.log(u, out=u)
    u *= -2.0
    np.sqrt(u, out=u)
    v = np.empty_like(u)
    np.bitwise_and(pair0, np.uint64(_MASK32), out=word)
    np.multiply(word, TWO_POW32_INV_2PI, out=v)
    v += TWO_POW32_INV_2PI / 2
    np.sin(v, out=v)  # numpy's, as A1111's NV source: torch's float64 sine differs in the last place at times
    np.multiply(u, v, out=out, casting="same_kind")  # the float64 product rounded once to float32


_M0, _M1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
_MULTIPLIERS = np.array([PHILOX_M1, PHILOX_M0], dtype=np.uint64).reshape(2, 1, 1)  # for (c2, c0)
_WEYL = np.array([PHILOX_W0, PHILOX_W1], dtype=np.uint64).reshape(1, 2, 1, 1)


@functools.lru_cache(maxsize=8)
def _index_products(n: int) -> npt.NDArray[np.uint64]:
    """``i * M1`` for the element indices 0..n-1: the first round's product of every draw of that size."""
    out: npt.NDArray[np.uint64] = np.arange(n, dtype=np.uint64) * _M1
    out.flags.writeable = False
    return out


def _rows_normals(keys: npt.NDArray[np.uint64], offsets: npt.NDArray[np.uint64], columns: slice, n: int,
                  out: F32Array) -> None:
    """Normals for rows of counters ``(offset, i)``, ``i`` in ``columns`` of 0..n-1, each row with its own 64-bit
    key and offset (``(rows,)`` arrays), into ``out`` (``(rows, len(columns))``): Philox 4x32-10 and Box-Muller as
    ``philox4x32`` and ``box_muller_sin``, to the bit.

    Only the element index varies along a row, and it enters the counter's third word alone: so the first round's
    product is the same for every row (cached per size), the second word pair is a per-row constant until the
    second round, the second round's product for the first pair is per-row too, and the last round computes only
    the first pair (the two words Box-Muller reads). 81 whole-array operations instead of 100."""
    mask, shift = np.uint64(_MASK32), np.uint64(32)
    rows = keys.shape[0]
    key_words = np.stack([keys & mask, keys >> shift]).reshape(1, 2, rows, 1)
    weyl = np.arange(PHILOX_ROUNDS, dtype=np.uint64).reshape(-1, 1, 1, 1) * _WEYL
    round_keys = ((key_words + weyl) & mask) << shift  # (rounds, 2, rows, 1): each round's key, in the high word
    off_lo, off_hi = (offsets & mask).reshape(rows, 1), (offsets >> shift).reshape(rows, 1)
    pairs = np.empty((2, rows, len(range(n)[columns])), dtype=np.uint64)
    pair0, pair1 = pairs[0], pairs[1]
    # round 0 on the counter (off_lo, off_hi, i, 0): pair 0 = (off_hi << 32) ^ i * M1 ^ key0; pair 1 per row: q
    np.bitwise_xor(_index_products(n)[columns], (off_hi << shift) ^ round_keys[0, 0], out=pair0)
    q = (off_lo * _M0) ^ round_keys[0, 1]
    # round 1: pair 1's words are the per-row (q_hi, q_lo)
    np.right_shift(pair0, shift, out=pair1)
    pair1 *= _M0
    pair1 ^= ((q & mask) << shift) ^ round_keys[1, 1]
    pair0 <<= shift
    pair0 ^= ((q >> shift) * _M1) ^ round_keys[1, 0]
    # rounds 2 .. 8 on both pairs at once (as philox4x32)
    high_words, product = np.empty_like(pairs), np.empty_like(pairs)
    for index in range(2, PHILOX_ROUNDS - 1):
        np.right_shift(pairs, shift, out=high_words)
        np.multiply(high_words[::-1], _MULTIPLIERS, out=product)
        pairs <<= shift
        pairs ^= product
        pairs ^= round_keys[index]
    # the last round: the first pair only
    np.right_shift(pair1, shift, out=product[0])
    product[0] *= _M1
    pair0 <<= shift
    pair0 ^= product[0]
    pair0 ^= round_keys[PHILOX_ROUNDS - 1, 0]
    _pair0_normals(pair0, out)


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


PASS_ELEMENTS = 1 << 14  # values per pass (measured fastest for small and real-size latents)
AHEAD_ELEMENTS = 1 << 15  # a repeated draw computes up to this many values ahead (at most AHEAD_DRAWS draws)
AHEAD_DRAWS = 16


class Generator:
    """Standard normal noise equal to `torch.randn(..., device="cuda")` after `torch.manual_seed(seed)`.

    `offset` counts the draws made so far; each `randn` uses it and then adds one. When a draw has the shape of the
    one before it (a sampler's noise, step after step), the next few draws of that shape are computed with it in one
    pass and handed out as they are asked for: the numbers do not depend on when they are computed, and one pass
    over many draws costs little more than one over a small draw."""

    def __init__(self, seed: int, offset: int = 0) -> None:
        self.seed = _check_seed(seed)
        if offset < 0:
            raise ValueError(f"Generator offset must not be negative, got {offset}")
        self.offset = int(offset)
        self._last_dims: tuple[int, ...] | None = None
        self._ahead: tuple[tuple[int, ...], int, F32Array] | None = None  # (shape, first offset, draws)

    def randn_on(self, shape: int | Sequence[int], device: torch.device) -> torch.Tensor:
        """The next draw as a float32 tensor on ``device``: computed there when it is a CUDA device (``torch_rows``),
        else here and moved; advances the offset by one."""
        if not computes_on(device):
            return torch.from_numpy(self.randn(shape)).to(device)
        dims = _shape_tuple(shape)
        n = int(np.prod(dims, dtype=np.int64))
        out = torch_rows([self.seed], [self.offset], n, device)
        self.offset += 1
        return out.reshape(dims)

    def randn(self, shape: int | Sequence[int]) -> F32Array:
        """A float32 array of `shape` standard normal values; advances the offset by one."""
        dims = _shape_tuple(shape)
        offset = self.offset
        ahead = self._ahead
        if ahead is not None and ahead[0] == dims and 0 <= offset - ahead[1] < len(ahead[2]):
            out = ahead[2][offset - ahead[1]]
        else:
            n = int(np.prod(dims, dtype=np.int64))
            count = max(1, min(AHEAD_DRAWS, AHEAD_ELEMENTS // max(n, 1))) if dims == self._last_dims else 1
            draws = self._draws(offset, count, n).reshape((count, *dims))
            self._ahead = (dims, offset, draws) if count > 1 else None
            out = draws[0]
        self._last_dims = dims
        self.offset = offset + 1
        return np.array(out, dtype=np.float32)  # a copy the caller owns

    def _draws(self, offset: int, count: int, n: int) -> F32Array:
        """Draws ``offset .. offset + count - 1`` of ``n`` values each, as a (count, n) array."""
        offsets = np.array([o & _MASK64 for o in range(offset, offset + count)], dtype=np.uint64)  # may pass 2^63
        return _normals(np.full(count, self.seed, dtype=np.uint64), offsets, n)


def _normals(keys: npt.NDArray[np.uint64], offsets: npt.NDArray[np.uint64], n: int) -> F32Array:
    """A ``(rows, n)`` array of normals, row ``r`` the draw at ``offsets[r]`` of a generator seeded ``keys[r]``,
    computed in passes of about ``PASS_ELEMENTS`` values (many rows of a small draw, or parts of a large one)."""
    if n >= 2**32:
        raise ValueError(f"A draw of {n} values is too large")
    out = np.empty((len(keys), n), dtype=np.float32)
    if n >= PASS_ELEMENTS:
        for row in range(len(keys)):
            for first in range(0, n, PASS_ELEMENTS):
                columns = slice(first, min(first + PASS_ELEMENTS, n))
                _rows_normals(keys[row:row + 1], offsets[row:row + 1], columns, n, out[row:row + 1, columns])
        return out
    rows = max(1, PASS_ELEMENTS // max(n, 1))  # rows per pass: larger arrays fall out of the processor's caches
    for first in range(0, len(keys), rows):
        part = slice(first, first + rows)
        _rows_normals(keys[part], offsets[part], slice(0, n), n, out[part])
    return out


def computes_on(device: torch.device) -> bool:
    """Whether draws for ``device`` are computed on it (CUDA: 64-bit integer and float64 kernels) rather than with
    numpy on the CPU and copied."""
    return device.type == "cuda"


_TORCH_PASS_ELEMENTS = 1 << 22  # values per pass on a device (bounds the pass's temporary memory to ~100 MB)


def torch_rows(keys: Sequence[int], offsets: Sequence[int], n: int, device: torch.device) -> torch.Tensor:
    """``_normals`` with torch on ``device``: a ``(rows, n)`` float32 tensor, row ``r`` the draw at ``offsets[r]`` of
    a generator seeded ``keys[r]``. The same operations as the numpy rounds on 64-bit words held in int64 (products
    wrap as unsigned ones do; high words are masked after each right shift, which extends the sign), and the same
    float64 Box-Muller. The integer words are numpy's exactly. torch's float64 logarithm and sine can differ from
    numpy's in their last place, which changes a float32 result in its last bit: about one value in 10^11 on a CPU
    (estimated from how often they differ); CUDA's functions, not measured here, may differ more often. One noise
    value off by one float32 step does not show in a picture."""
    if n >= 2**32:
        raise ValueError(f"A draw of {n} values is too large")
    signed = [k - 2**64 if k >= 2**63 else k for k in (int(k) for k in keys)]
    signed_offsets = [o - 2**64 if o >= 2**63 else o for o in (int(o) & _MASK64 for o in offsets)]
    out = torch.empty((len(signed), n), dtype=torch.float32, device=device)
    rows = max(1, _TORCH_PASS_ELEMENTS // max(n, 1))
    for first in range(0, len(signed), rows):
        part = slice(first, first + rows)
        key = torch.tensor(signed[part], dtype=torch.int64, device=device)
        offset = torch.tensor(signed_offsets[part], dtype=torch.int64, device=device)
        out[part] = _torch_rows_pass(key, offset, n)
    return out


def _torch_rows_pass(keys: torch.Tensor, offsets: torch.Tensor, n: int) -> torch.Tensor:
    mask = _MASK32
    rows = keys.shape[0]

    def high(x: torch.Tensor) -> torch.Tensor:  # the high word (>> extends the sign of an int64)
        return (x >> 32) & mask

    key_words = torch.stack([keys & mask, high(keys)]).reshape(1, 2, rows, 1)
    weyl = torch.arange(PHILOX_ROUNDS, dtype=torch.int64, device=keys.device).reshape(-1, 1, 1, 1) * torch.tensor(
        [PHILOX_W0, PHILOX_W1], dtype=torch.int64, device=keys.device).reshape(1, 2, 1, 1)
    round_keys = ((key_words + weyl) & mask) << 32
    off_lo, off_hi = (offsets & mask).reshape(rows, 1), high(offsets).reshape(rows, 1)
    index_products = torch.arange(n, dtype=torch.int64, device=keys.device) * PHILOX_M1
    pair0 = index_products ^ ((off_hi << 32) ^ round_keys[0, 0])
    q = (off_lo * PHILOX_M0) ^ round_keys[0, 1]
    pair1 = (high(pair0) * PHILOX_M0) ^ (((q & mask) << 32) ^ round_keys[1, 1])
    pair0 = (pair0 << 32) ^ ((high(q) * PHILOX_M1) ^ round_keys[1, 0])
    pairs = torch.stack([pair0, pair1])
    multipliers = torch.tensor([PHILOX_M1, PHILOX_M0], dtype=torch.int64, device=keys.device).reshape(2, 1, 1)
    for index in range(2, PHILOX_ROUNDS - 1):
        product = high(pairs).flip(0) * multipliers
        pairs = (pairs << 32) ^ product ^ round_keys[index]
    pair0 = (pairs[0] << 32) ^ (high(pairs[1]) * PHILOX_M1) ^ round_keys[PHILOX_ROUNDS - 1, 0]
    u = high(pair0).double() * TWO_POW32_INV + TWO_POW32_INV / 2
    v = (pair0 & mask).double() * TWO_POW32_INV_2PI + TWO_POW32_INV_2PI / 2
    return ((-2.0 * u.log()).sqrt() * v.sin()).float()


def randn_many(seeds: Sequence[int] | npt.NDArray[np.integer], shape: int | Sequence[int]) -> F32Array:
    """The first draws of fresh generators, one per seed, in one pass: row ``i`` of the ``(len(seeds), *shape)``
    result equals ``Generator(seeds[i]).randn(shape)``."""
    dims = _shape_tuple(shape)
    if isinstance(seeds, np.ndarray) and seeds.dtype in (np.uint32, np.uint64):
        keys = seeds.astype(np.uint64).reshape(-1)  # unsigned words need no range check
    else:
        keys = np.asarray([_check_seed(int(s)) for s in seeds], dtype=np.uint64).reshape(-1)
    n = int(np.prod(dims, dtype=np.int64))
    return _normals(keys, np.zeros(len(keys), dtype=np.uint64), n).reshape((len(keys), *dims))


def image_noise(seed: int, width: int, height: int, channels: int = LATENT_CHANNELS) -> F32Array:
    """A1111's initial latent noise for one image with the NV source: shape (channels, height // 8, width // 8).

    This is the first draw of a fresh generator seeded with `seed`, as A1111 makes it for each image of a batch."""
    if width < LATENT_SCALE or height < LATENT_SCALE:
        raise ValueError(f"Image size must be at least {LATENT_SCALE}x{LATENT_SCALE}, got {width}x{height}")
    if channels < 1:
        raise ValueError(f"Latent channels must be at least 1, got {channels}")
    return Generator(seed).randn((channels, height // LATENT_SCALE, width // LATENT_SCALE))

"""The Brownian tree of the SDE samplers: torchsde's ``BrownianTree`` (Li et al. 2020, "Scalable Gradients for
Stochastic Differential Equations"), the numbers A1111 and k-diffusion get from it, computed for a whole batch at
once and without its per-query bookkeeping.

The tree is the dyadic one over ``[t0, t1]``: each node splits at its midpoint, rounded (as every end point) to six
decimals (torchsde's ``tol=1e-6``). A node at depth ``d`` with index ``k`` (its path from the root as a binary
number) has a seed, the first word of numpy's ``SeedSequence(entropy, spawn_key=(k, d), pool_size=24)``; the
increment ``W`` over the root is one standard normal draw times ``sqrt(t1 - t0)``, and a node's two children share
``W`` by the Brownian bridge: ``left = l * W / h + sqrt(l * r / h) * Z``, ``right = W - left``, where ``Z`` is the
draw made with the node's seed, ``h`` its length and ``l``, ``r`` the lengths of its halves. A query ``[ta, tb]`` is
the sum, from left to right, of the largest nodes that tile it. Every operation is the one torchsde makes, in its
order, so the result is the same to the bit for the same draws.

What is not torchsde's: the seeds of all new nodes come from one vectorised evaluation of the ``SeedSequence`` hash
(only the part a node's own spawn key changes is recomputed; the rest is shared by all nodes of a tree), the draws
of a query come in one call to the source (one pass of the Philox generator for the ``NV`` source), both children of
a split are kept, and one tree serves every image of the batch. A sampler that knows its schedule has every node its
queries will read computed at once (``BrownianTree.prepare``); which nodes those are, like the split points and each
query's tiles, depends on the interval alone and is shared by later trees over it.
"""

from __future__ import annotations

import collections
import functools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

TOLERANCE_DIGITS = 6  # torchsde's BrownianTree default tol=1e-6
POOL_SIZE = 24  # torchsde's BrownianTree default pool_size
MAX_DEPTH = 64

# numpy's SeedSequence constants (O'Neill's seed_seq alternative)
_INIT_A = 0x43B0D7E5
_MULT_A = 0x931E8875
_INIT_B = 0x8B51F9DD
_MULT_B = 0x58F38DED
_MIX_MULT_L = 0xCA01F9DD
_MIX_MULT_R = 0x4973F715
_M32 = 0xFFFFFFFF

# draw(seeds of shape (images, nodes)) -> draws of shape (images, nodes, *shape): a float numpy array (arithmetic on
# small arrays is several times cheaper in numpy than in torch on a CPU) or a torch tensor (on an accelerator)
Array = Any
Draw = Callable[[npt.NDArray[np.uint32]], Array]
Node = tuple[int, int]  # (depth, index)


def _words(n: int) -> list[int]:
    """An integer as numpy's SeedSequence reads it: little-endian 32-bit words, ``[0]`` for zero."""
    if n < 0:
        raise ValueError("seed entropy must be non-negative")
    out = [] if n else [0]
    while n:
        out.append(n & _M32)
        n >>= 32
    return out


def _hashmix(value: int, hash_const: int) -> tuple[int, int]:
    value ^= hash_const
    hash_const = (hash_const * _MULT_A) & _M32
    value = (value * hash_const) & _M32
    return value ^ (value >> 16), hash_const


def _mix(x: int, y: int) -> int:
    result = (_MIX_MULT_L * x - _MIX_MULT_R * y) & _M32
    return result ^ (result >> 16)


@functools.lru_cache(maxsize=64)
def _entropy_pool(entropy: int, pool_size: int = POOL_SIZE) -> tuple[int, int]:
    """The first pool word of a spawned SeedSequence of ``entropy`` before its spawn key is mixed in, and the hash
    constant at that point: shared by every node of one tree."""
    run = _words(entropy)
    if len(run) > pool_size:
        raise ValueError(f"seed entropy longer than {pool_size} words")
    run += [0] * (pool_size - len(run))  # a spawned sequence pads its own entropy to the pool size
    hash_const = _INIT_A
    pool = []
    for word in run:
        value, hash_const = _hashmix(word, hash_const)
        pool.append(value)
    for src in range(pool_size):
        for dst in range(pool_size):
            if src != dst:
                hashed, hash_const = _hashmix(pool[src], hash_const)
                pool[dst] = _mix(pool[dst], hashed)
    return pool[0], hash_const


def _after(hash_const: int, calls: int) -> int:
    return (hash_const * pow(_MULT_A, calls, 2**32)) & _M32


def node_seeds(entropies: Sequence[int], nodes: Sequence[Node], pool_size: int = POOL_SIZE) -> npt.NDArray[np.uint32]:
    """``SeedSequence(entropy, spawn_key=(index, depth), pool_size).generate_state(1)[0]`` for every entropy and
    node, as a ``(len(entropies), len(nodes))`` array.

    Each word of the spawn key is mixed into each pool word on its own, and the first output word reads only the
    first pool word: so only that word's chain is computed here, for all nodes at once."""
    out = np.empty((len(entropies), len(nodes)), dtype=np.uint32)
    if not nodes:
        return out
    one_word = all(index <= _M32 and depth <= _M32 for depth, index in nodes)
    spawn = np.array([(index, depth) for depth, index in nodes], dtype=np.uint64) if one_word else None
    for row, entropy in enumerate(entropies):
        pool0, hash_const = _entropy_pool(int(entropy), pool_size)
        if spawn is not None:  # the usual case (index and depth each one word): one vectorised pass
            out[row] = _first_word_vectorised(pool0, hash_const, spawn, pool_size)
        else:
            for col, (depth, index) in enumerate(nodes):
                out[row, col] = _first_word(pool0, hash_const, _words(index) + _words(depth), pool_size)
    return out


def _first_word(pool0: int, hash_const: int, spawn_words: list[int], pool_size: int) -> int:
    for word in spawn_words:  # each word is hashed once per pool word; pool word 0 takes the first of them
        hashed, _ = _hashmix(word, hash_const)
        pool0 = _mix(pool0, hashed)
        hash_const = _after(hash_const, pool_size)
    value = pool0 ^ _INIT_B
    value = (value * ((_INIT_B * _MULT_B) & _M32)) & _M32
    return value ^ (value >> 16)


def _first_word_vectorised(pool0: int, hash_const: int, spawn: npt.NDArray[np.uint64],
                           pool_size: int) -> npt.NDArray[np.uint32]:
    mask = np.uint64(_M32)
    pool = np.full(spawn.shape[0], pool0, dtype=np.uint64)
    for column in range(spawn.shape[1]):
        after = _after(hash_const, 1)
        hashed = ((spawn[:, column] ^ np.uint64(hash_const)) * np.uint64(after)) & mask
        hashed ^= hashed >> np.uint64(16)
        pool = (np.uint64(_MIX_MULT_L) * pool + (np.uint64(2**32 - _MIX_MULT_R) * hashed)) & mask
        pool ^= pool >> np.uint64(16)
        hash_const = _after(hash_const, pool_size)
    value: npt.NDArray[np.uint64] = ((pool ^ np.uint64(_INIT_B)) * np.uint64((_INIT_B * _MULT_B) & _M32)) & mask
    value ^= value >> np.uint64(16)
    return value.astype(np.uint32)


def _stack(arrays: list[Array]) -> Array:
    """Arrays of one shape stacked on a new second axis (numpy arrays or torch tensors)."""
    if isinstance(arrays[0], np.ndarray):
        return np.stack(arrays, axis=1)
    import torch

    return torch.stack(arrays, dim=1)


def _column(values: list[float], like: Array) -> Array:
    """Per-node numbers as an array that broadcasts along the second axis of ``like``, in its dtype: the same
    rounding as multiplying by each number on its own."""
    shape = (1, len(values)) + (1,) * (like.ndim - 2)
    if isinstance(like, np.ndarray):
        return np.asarray(values, dtype=like.dtype).reshape(shape)
    import torch

    return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(shape)


def _empty_like_columns(like: Array, columns: int) -> Array:
    """An uninitialised array like ``like`` with ``columns`` entries on its second axis."""
    shape = (like.shape[0], columns, *like.shape[2:])
    if isinstance(like, np.ndarray):
        return np.empty(shape, dtype=like.dtype)
    import torch

    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _bridge(w: Array, left_diff: Array, h_reciprocal: Array, scale: Array, noise: Array, left_w: Array,
            right_w: Array) -> None:
    """One depth of splits: ``left = left_diff * w * h_reciprocal + scale * noise`` (in that order, as torchsde) and
    ``right = w - left``, written into ``left_w`` and ``right_w``."""
    if isinstance(w, np.ndarray):
        np.multiply(left_diff, w, out=left_w)
        left_w *= h_reciprocal
        left_w += scale * noise
        np.subtract(w, left_w, out=right_w)
    else:
        left_w.copy_(left_diff * w * h_reciprocal + scale * noise)
        right_w.copy_(w - left_w)


def _sum_in_order(values: list[Array]) -> Array:
    """``values[0] + values[1] + ...``, added left to right (a query's tiles, as torchsde adds them)."""
    if len(values) == 1:
        return values[0]
    total = values[0] + values[1]  # a new array: the tiles themselves stay as they are
    for value in values[2:]:  # (not a reduction: numpy may add a reduction's terms pairwise, in another order)
        total += value
    return total


def root_seeds(entropies: Sequence[int], pool_size: int = POOL_SIZE) -> npt.NDArray[np.uint32]:
    """The seed of the whole interval's own draw: the first word of an unspawned SeedSequence."""
    words = [[int(np.random.SeedSequence(int(e), pool_size=pool_size).generate_state(1)[0])] for e in entropies]
    return np.array(words, dtype=np.uint32)


@dataclass(frozen=True)
class _Plan:
    """How to compute ahead the nodes for a set of query points, worked out from the geometry alone: the parents to
    split (by depth, then index), their bridge coefficients, and each depth's parents as columns of the children
    made at the depth above (None where some come from elsewhere: the root, or nodes made before)."""

    order: list[Node]
    left_diff: list[float]
    h_reciprocal: list[float]
    scale: list[float]
    levels: list[tuple[int, int, list[int] | None]]  # (first, last) into ``order``, and the gather columns
    made_at: dict[Node, int]  # each child -> its column among the children (read-only once made)


class _Geometry:
    """What depends on a tree's interval alone, shared by every tree over it (each image of a batch, each job with
    the same schedule range): the split points, the tiles of each query, the plans of fresh trees' preparations.
    Bounded: the split points and tiles are forgotten all at once past their limit (they are cheap to find again),
    the plans (a few hundred kB for a long schedule) are kept for the most recent schedules only."""

    SPLITS, TILES, PLANS = 32768, 2048, 8

    def __init__(self) -> None:
        self.splits: dict[Node, tuple[float, float, float]] = {}
        self.tiles: dict[tuple[float, float], list[Node]] = {}
        self._plans: collections.OrderedDict[tuple[float, ...], _Plan] = collections.OrderedDict()
        self._lock = threading.Lock()

    def split(self, node: Node, start: float, end: float) -> tuple[float, float, float]:
        """The node's (start, rounded midpoint, end), from its bounds."""
        split = self.splits.get(node)
        if split is None:
            if len(self.splits) >= self.SPLITS:
                self.splits.clear()
            split = self.splits[node] = (start, round(0.5 * (end + start), TOLERANCE_DIGITS), end)
        return split

    def remember_tiles(self, key: tuple[float, float], tiles: list[Node]) -> None:
        if len(self.tiles) >= self.TILES:
            self.tiles.clear()
        self.tiles[key] = tiles

    def plan(self, targets: tuple[float, ...]) -> _Plan | None:
        with self._lock:
            plan = self._plans.get(targets)
            if plan is not None:
                self._plans.move_to_end(targets)
            return plan

    def remember_plan(self, targets: tuple[float, ...], plan: _Plan) -> None:
        with self._lock:
            self._plans[targets] = plan
            while len(self._plans) > self.PLANS:
                self._plans.popitem(last=False)


@functools.lru_cache(maxsize=4)
def _geometry_of(start: float, end: float) -> _Geometry:
    return _Geometry()


class BrownianTree:
    """Increments ``W(tb) - W(ta)`` of one Brownian motion per entropy over ``[t0, t1]``, stacked on a first axis,
    as arrays of the kind ``draw`` makes.

    ``draw`` turns a ``(images, n)`` array of seeds into standard normal draws ``(images, n, *shape)``, each the
    first draw of a fresh generator with that seed (the job's RNG source). Recent node increments are kept (``keep``
    nodes; the root always), so a sampler's queries walk down from their common ancestor."""

    def __init__(self, t0: float, t1: float, entropies: Sequence[int], draw: Draw, keep: int = 96) -> None:
        t0, t1 = float(t0), float(t1)
        if t0 > t1:  # equal ends are a tree of one point (a one-step schedule): every increment is zero
            raise ValueError(f"the tree's start {t0} must not be above its end {t1}")
        self.entropies = [int(e) for e in entropies]
        self.draw, self.keep = draw, keep
        self.start, self.end = self._round(t0), self._round(t1)
        self._root_scale = math.sqrt(t1 - t0)
        self._root_w: Array | None = None  # drawn on first use, or with the first prepared nodes (one draw call)
        self._geometry = _geometry_of(self.start, self.end)
        self._w: collections.OrderedDict[Node, Array] = collections.OrderedDict()  # nodes made one query at a time
        self._made: Array | None = None  # the first preparation's children (on the second axis) ...
        self._made_at: dict[Node, int] = {}  # ... and each one's column

    @staticmethod
    def _round(t: float) -> float:
        return round(t, TOLERANCE_DIGITS)

    @property
    def root_w(self) -> Array:
        """The increment over the whole interval: one draw with the root's seed times the square root of its length."""
        if self._root_w is None:
            self._root_w = self.draw(root_seeds(self.entropies))[:, 0] * self._root_scale
        return self._root_w

    def zeros(self) -> Array:
        return self.root_w * 0.0

    # --- the tree -----------------------------------------------------------------------------------------------

    def _split(self, node: Node) -> tuple[float, float, float]:
        """A node's start, rounded midpoint and end."""
        split = self._geometry.splits.get(node)
        if split is None:
            if node == (0, 0):
                start, end = self.start, self.end
            else:
                depth, index = node
                p_start, p_mid, p_end = self._split((depth - 1, index >> 1))
                start, end = (p_mid, p_end) if index & 1 else (p_start, p_mid)
            split = self._geometry.split(node, start, end)
        return split

    def held(self) -> int:
        """How many node increments the tree holds (computed ahead or by queries)."""
        return len(self._w) + len(self._made_at)

    def _has(self, node: Node) -> bool:
        return node in self._w or node in self._made_at

    def _value(self, node: Node) -> Array | None:
        """A held node's increment (the root's is always there), or None."""
        if node == (0, 0):
            return self.root_w
        value = self._w.get(node)
        if value is not None:
            return value
        column = self._made_at.get(node)
        if column is None:
            return None
        assert self._made is not None
        return self._made[:, column]

    def _tiles(self, ta: float, tb: float) -> list[Node]:
        """The largest nodes that tile ``[ta, tb]``, left to right (torchsde's search of the dyadic tree)."""
        cached = self._geometry.tiles.get((ta, tb))
        if cached is not None:
            return cached
        out = self._search_tiles(ta, tb)
        self._geometry.remember_tiles((ta, tb), out)
        return out

    def _search_tiles(self, ta: float, tb: float) -> list[Node]:
        out: list[Node] = []
        geometry = self._geometry
        splits = geometry.splits
        stack: list[tuple[Node, float, float, float, float]] = [((0, 0), self.start, self.end, ta, tb)]
        while stack:
            node, start, end, a, b = stack.pop()  # a node, its bounds, and the part of the query inside it
            depth, index = node
            if depth > MAX_DEPTH:
                raise RuntimeError(f"Brownian tree query [{ta}, {tb}] is not resolved at depth {MAX_DEPTH}")
            if a == start and b == end:
                out.append(node)
                continue
            mid = (splits.get(node) or geometry.split(node, start, end))[1]
            if b <= mid:
                stack.append(((depth + 1, 2 * index), start, mid, a, b))
            elif a >= mid:
                stack.append(((depth + 1, 2 * index + 1), mid, end, a, b))
            else:  # right half pushed first so the left one is taken first
                stack.append(((depth + 1, 2 * index + 1), mid, end, mid, b))
                stack.append(((depth + 1, 2 * index), start, mid, a, mid))
        return out

    def _increment(self, node: Node) -> Array:
        """The node's increment, computed down from its nearest kept ancestor with one call to ``draw``."""
        if node == (0, 0):
            return self.root_w
        kept = self._w
        if node in kept:
            kept.move_to_end(node)
            return kept[node]
        held = self._value(node)
        if held is not None:
            return held
        chain: list[Node] = []  # the ancestors to split, from the held one down to the node's parent
        current = node
        while current != (0, 0) and not self._has(current):
            current = (current[0] - 1, current[1] >> 1)
            chain.append(current)
        chain.reverse()
        if current in kept:
            kept.move_to_end(current)
        w = self._value(current)
        assert w is not None  # the walk stops at a held node or the root
        noise = self.draw(node_seeds(self.entropies, chain))
        path = [*chain[1:], node]
        for i, parent in enumerate(chain):
            start, mid, end = self._split(parent)
            h_reciprocal = 1 / (end - start)
            left_diff, right_diff = mid - start, end - mid
            left_w = left_diff * w * h_reciprocal + math.sqrt(left_diff * right_diff * h_reciprocal) * noise[:, i]
            right_w = w - left_w
            depth, index = parent[0] + 1, parent[1] * 2
            kept[(depth, index)] = left_w
            kept[(depth, index + 1)] = right_w
            w = right_w if path[i][1] & 1 else left_w
        while len(kept) > self.keep:
            kept.popitem(last=False)
        return w

    def prepare(self, points: Iterable[float]) -> None:
        """Compute ahead every node that queries between these points will read: the splits on the way from the root
        down to each point, all splits of one depth in one vectorised bridge step, and all their draws in one call
        to ``draw`` (with the root's own draw when it is not made yet). The nodes are those the queries would make
        one by one, to the bit (the same operations on the same numbers); a sampler that knows its schedule saves
        the per-query walk. The plan (which nodes, in which order) depends on the points and the interval alone:
        a fresh tree reuses the plan of an earlier tree over the same interval and points."""
        targets = tuple(sorted({self._round(min(max(float(t), self.start), self.end)) for t in points}))
        fresh = not self._w and not self._made_at
        plan = self._geometry.plan(targets) if fresh else None
        if plan is None:
            plan = self._plan(targets)
            if fresh:
                self._geometry.remember_plan(targets, plan)
        if not plan.order:
            return
        seeds = node_seeds(self.entropies, plan.order)
        if self._root_w is None:  # the root's draw in the same call, as its first column
            noise = self.draw(np.concatenate([root_seeds(self.entropies), seeds], axis=1))
            self._root_w = noise[:, 0] * self._root_scale
            noise = noise[:, 1:]
        else:
            noise = self.draw(seeds)
        left_diff, h_reciprocal, scale = (_column(v, noise) for v in (plan.left_diff, plan.h_reciprocal, plan.scale))
        made = _empty_like_columns(noise, 2 * len(plan.order))  # a depth's left children, then its right ones
        for first, last, gather in plan.levels:
            if gather is not None:  # the depth above made them all: one gather
                w = made[:, gather]
            else:
                w = _stack([made[:, plan.made_at[node]] if node in plan.made_at else self._value(node)
                            for node in plan.order[first:last]])
            count = last - first
            _bridge(w, left_diff[:, first:last], h_reciprocal[:, first:last], scale[:, first:last],
                    noise[:, first:last], made[:, 2 * first:2 * first + count], made[:, 2 * first + count:2 * last])
        if self._made is None:  # the tree's first preparation: its nodes are looked up through the plan's map
            self._made, self._made_at = made, plan.made_at
        else:  # a later one: its nodes join those made by queries
            self.keep = max(self.keep, len(self._w) + len(plan.made_at) + 96)
            for node, column in plan.made_at.items():
                self._w[node] = made[:, column]

    def _plan(self, targets: tuple[float, ...]) -> _Plan:
        """The parents to split for queries between ``targets``: on the way down from the root to each point, every
        node whose children are not both held yet."""
        geometry = self._geometry
        bounds: dict[Node, tuple[float, float, float]] = {}  # this plan's own (the shared table may be cleared)
        parents: set[Node] = set()
        for t in targets:  # down from the root to each point, the bounds carried along
            node: Node = (0, 0)
            start, end = self.start, self.end
            while node[0] <= MAX_DEPTH:  # deeper than that is the query's own error to raise
                if t == start or t == end:
                    break
                split = bounds[node] = geometry.splits.get(node) or geometry.split(node, start, end)
                mid = split[1]
                depth, index = node
                left, right = (depth + 1, 2 * index), (depth + 1, 2 * index + 1)
                if not self._has(left) or not self._has(right):
                    parents.add(node)
                node, start, end = (right, mid, end) if t >= mid else (left, start, mid)
        order = sorted(parents)  # by depth, then index: the bridge runs one depth at a time
        columns = [bounds[node] for node in order]
        left_diff = [mid - start for start, mid, _ in columns]
        right_diff = [end - mid for _, mid, end in columns]
        h_reciprocal = [1 / (end - start) for start, _, end in columns]
        scale = [math.sqrt(lo * hi * h) for lo, hi, h in zip(left_diff, right_diff, h_reciprocal, strict=True)]
        levels: list[tuple[int, int, list[int] | None]] = []
        made_at: dict[Node, int] = {}
        first = 0
        while first < len(order):
            depth = order[first][0]
            last = first
            while last < len(order) and order[last][0] == depth:
                last += 1
            level = order[first:last]
            gather = [made_at[node] for node in level] if all(node in made_at for node in level) else None
            levels.append((first, last, gather))
            for j, (node_depth, index) in enumerate(level):
                made_at[(node_depth + 1, 2 * index)] = 2 * first + j
                made_at[(node_depth + 1, 2 * index + 1)] = 2 * first + (last - first) + j
            first = last
        return _Plan(order, left_diff, h_reciprocal, scale, levels, made_at)

    # --- queries ------------------------------------------------------------------------------------------------

    def __call__(self, ta: float, tb: float) -> Array:
        """``W(tb) - W(ta)`` for ``ta <= tb``; points outside ``[t0, t1]`` are moved to its ends, as torchsde does."""
        ta = min(max(float(ta), self.start), self.end)
        tb = min(max(float(tb), self.start), self.end)
        if ta > tb:
            raise ValueError(f"query times must be ordered, got {ta} > {tb}")
        ta, tb = self._round(ta), self._round(tb)
        if ta == tb:
            return self.zeros()
        tiles = self._tiles(ta, tb)
        values = [self._value(node) for node in tiles]
        if any(value is None for value in values):
            # the deepest tile of each end first: its chain makes the shallower tiles of that end (its ancestors'
            # siblings) on the way, so a query costs one draw call per new end point
            increments = {node: self._increment(node) for node in sorted(tiles, key=lambda n: -n[0])}
            values = [increments[node] for node in tiles]
        return _sum_in_order(values)

"""Seeds and noise as A1111 makes them, and A1111's classifier-free guidance, on small tensors (no model files)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from modules.generation.conditioning import Cond, ImageConds, ScheduledCond
from modules.generation.denoise import CFGDenoiser, SamplingStopped
from modules.generation.image_prep import gaussian_blur_u8
from modules.generation.noise import BrownianTreeNoise, ImageRNG, effective_source, slerp
from modules.sampling import brownian, philox

SHAPE = (4, 6, 5)


def _cpu(seed: int, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_first_noise_is_each_seeds_first_draw_and_sampler_noise_continues_the_stream():
    rng = ImageRNG(SHAPE, [42, 43], source="CPU")
    first = rng.first()
    assert torch.equal(first[0], _cpu(42)) and torch.equal(first[1], _cpu(43))
    gen = torch.Generator().manual_seed(43)
    torch.randn(SHAPE, generator=gen)
    assert torch.equal(rng.next()[1], torch.randn(SHAPE, generator=gen))


def test_same_seed_same_noise_whatever_the_batch():
    alone = ImageRNG(SHAPE, [43], source="CPU")
    batch = ImageRNG(SHAPE, [42, 43], source="CPU")
    assert torch.equal(alone.next()[0], batch.next()[1])
    assert torch.equal(alone.next()[0], batch.next()[1])


def test_eta_noise_seed_delta_reseeds_the_sampler_noise_only():
    rng = ImageRNG(SHAPE, [7], source="CPU", eta_noise_seed_delta=31337)
    assert torch.equal(rng.next()[0], _cpu(7))
    assert torch.equal(rng.next()[0], _cpu(7 + 31337))


def test_variation_seed_is_a1111s_slerp_over_the_second_axis():
    rng = ImageRNG(SHAPE, [1], subseeds=[2], subseed_strength=0.25, source="CPU")
    low, high = _cpu(1), _cpu(2)
    # the spherical interpolation, normalised along H for each (channel, column), written out
    ln, hn = low / low.norm(dim=1, keepdim=True), high / high.norm(dim=1, keepdim=True)
    omega = torch.acos((ln * hn).sum(1))
    want = (torch.sin(0.75 * omega) / torch.sin(omega)).unsqueeze(1) * low + (
        torch.sin(0.25 * omega) / torch.sin(omega)).unsqueeze(1) * high
    assert torch.allclose(rng.first()[0], want, atol=1e-6)
    same = slerp(0.3, low, low)  # parallel inputs: A1111's linear fallback, weights in its order
    assert torch.allclose(same, low, atol=1e-6)


def test_seed_resize_pastes_the_other_sizes_noise_centred_as_a1111():
    smaller = ImageRNG(SHAPE, [5], seed_resize_from=(3, 2), source="CPU").first()[0]
    own = _cpu(5)  # outside the pasted block: the seed's own first draw at the full size
    assert torch.equal(smaller[:, 1:4, 1:3], _cpu(5, (4, 3, 2)))
    assert torch.equal(smaller[:, 0], own[:, 0]) and torch.equal(smaller[:, :, 3:], own[:, :, 3:])
    # larger: A1111 floors the negative offsets, so a 9x8 source gives a 5x4 block from (2, 2), the rest own noise
    larger = ImageRNG(SHAPE, [5], seed_resize_from=(9, 8), source="CPU").first()[0]
    assert torch.equal(larger[:, 0:5, 0:4], _cpu(5, (4, 9, 8))[:, 2:7, 2:6])
    assert torch.equal(larger[:, 5], own[:, 5]) and torch.equal(larger[:, :, 4], own[:, :, 4])


def test_nv_source_is_philox_and_gpu_without_cuda_means_nv():
    assert effective_source("GPU", torch.device("cpu")) == "NV"
    assert effective_source("CPU", torch.device("cpu")) == "CPU"
    rng = ImageRNG(SHAPE, [11], source="GPU")
    gen = philox.Generator(11)
    assert np.array_equal(rng.next()[0].numpy(), gen.randn(SHAPE))
    assert np.array_equal(rng.next()[0].numpy(), gen.randn(SHAPE))


def test_no_global_rng_is_used():
    state = torch.random.get_rng_state()
    rng = ImageRNG(SHAPE, [1, 2], subseeds=[3, 4], subseed_strength=0.5, source="CPU")
    rng.next()
    rng.next()
    tree = BrownianTreeNoise(torch.zeros(2, *SHAPE), torch.tensor(0.03), torch.tensor(14.6), [1, 2], "CPU")
    tree(torch.tensor(14.6), torch.tensor(3.0))
    assert torch.equal(state, torch.random.get_rng_state())


def test_brownian_noise_is_per_image_unit_and_order_free():
    x = torch.zeros(2, *SHAPE)
    a = BrownianTreeNoise(x, torch.tensor(0.03), torch.tensor(14.6), [1, 2], "CPU")
    b = BrownianTreeNoise(x[:1], torch.tensor(0.03), torch.tensor(14.6), [2], "CPU")
    late = a(torch.tensor(2.0), torch.tensor(1.0))
    early = a(torch.tensor(14.6), torch.tensor(2.0))
    assert torch.allclose(late[1], b(torch.tensor(2.0), torch.tensor(1.0))[0], atol=1e-6)  # batch independent
    c = BrownianTreeNoise(x, torch.tensor(0.03), torch.tensor(14.6), [1, 2], "CPU")
    assert torch.allclose(early, c(torch.tensor(14.6), torch.tensor(2.0)), atol=1e-6)  # query order free
    big = BrownianTreeNoise(torch.zeros(1, 4, 64, 64), torch.tensor(0.03), torch.tensor(14.6), [9], "CPU")
    sample = big(torch.tensor(5.0), torch.tensor(4.0))
    assert abs(float(sample.mean())) < 0.05 and abs(float(sample.std()) - 1) < 0.05  # normalised increments
    nv = BrownianTreeNoise(x, torch.tensor(0.03), torch.tensor(14.6), [1, 2], "NV")
    assert not torch.allclose(nv(torch.tensor(2.0), torch.tensor(1.0)), late)  # the source reaches the tree


# --- guidance -----------------------------------------------------------------------------------------------------


class _Recorder:
    """A stand-in inner model: D(x, sigma) = x * scale(conditioning) so each row's conditioning shows in the
    output; it records each call's rows."""

    def __init__(self) -> None:
        self.calls: list[list[float]] = []

    def __call__(self, x, sigma, contexts, image_idx):
        scales = torch.tensor([float(c.context[0, 0, 0]) for c in contexts])
        self.calls.append(scales.tolist())
        return x * scales.view(-1, 1, 1, 1)


def _cond(value: float, tokens: int = 77) -> list[ScheduledCond]:
    context = torch.full((1, tokens, 2), value)
    context[0, -1] = value + 100  # a distinct last vector, to see padding
    return [ScheduledCond(1000, Cond(context))]


def test_guidance_combines_and_parts_with_weights_in_one_batched_call():
    conds = [ImageConds([(1.0, _cond(2.0)), (0.5, _cond(3.0))], _cond(1.0)),
             ImageConds([(1.0, _cond(4.0))], _cond(1.5))]
    inner = _Recorder()
    cfg = CFGDenoiser(inner, conds, cfg_scale=7.0)  # type: ignore[arg-type]
    x = torch.ones(2, 1, 1, 1)
    out = cfg(x, torch.tensor([1.0, 1.0]))
    assert inner.calls == [[2.0, 3.0, 4.0, 1.0, 1.5]]  # positives of every image, then the negatives
    assert out[0].item() == pytest.approx(1.0 + 7 * (2 - 1) + 0.5 * 7 * (3 - 1))
    assert out[1].item() == pytest.approx(1.5 + 7 * (4 - 1.5))


def test_different_token_lengths_pad_with_the_last_vector_and_split_the_calls():
    conds = [ImageConds([(1.0, _cond(2.0, 154)), (1.0, _cond(3.0))], _cond(1.0))]
    inner = _Recorder()
    seen: list[torch.Tensor] = []

    def model(x, sigma, contexts, idx):
        seen.extend(c.context for c in contexts)
        return inner(x, sigma, contexts, idx)

    CFGDenoiser(model, conds, cfg_scale=5.0)(torch.ones(1, 1, 1, 1), torch.tensor([1.0]))  # type: ignore[arg-type]
    assert inner.calls == [[2.0, 3.0], [1.0]]  # positives together (padded), the negative alone
    padded = seen[1]
    assert padded.shape[1] == 154 and torch.equal(padded[0, 77:], padded[0, 76:77].expand(77, 2))


def test_ngms_skips_the_negative_on_odd_calls_below_the_sigma():
    conds = [ImageConds([(1.0, _cond(2.0))], _cond(1.0))]
    inner = _Recorder()
    cfg = CFGDenoiser(inner, conds, cfg_scale=7.0, s_min_uncond=5.0)  # type: ignore[arg-type]
    x = torch.ones(1, 1, 1, 1)
    for _ in range(3):
        out = cfg(x, torch.tensor([1.0]))
    assert inner.calls == [[2.0, 1.0], [2.0], [2.0, 1.0]]
    assert cfg.used_ngms and out.item() == pytest.approx(1 + 7 * (2 - 1))


def test_mask_blends_the_original_after_each_call_and_stop_raises():
    conds = [ImageConds([(1.0, _cond(2.0))], _cond(2.0))]
    init = torch.full((1, 1, 1, 2), 9.0)
    mask = torch.tensor([[[[1.0, 0.0]]]])
    stop = {"now": False}
    cfg = CFGDenoiser(_Recorder(), conds, cfg_scale=3.0, init_latent=init, mask=mask,  # type: ignore[arg-type]
                      should_stop=lambda: stop["now"])
    out = cfg(torch.ones(1, 1, 1, 2), torch.tensor([1.0]))
    assert out.flatten().tolist() == [2.0, 9.0]
    stop["now"] = True
    with pytest.raises(SamplingStopped):
        cfg(torch.ones(1, 1, 1, 2), torch.tensor([1.0]))


def test_mask_blur_matches_recorded_opencv_values():
    # cv2.GaussianBlur(a, (ksize, 1), 4) and (1, ksize) with ksize = 2 * int(2.5 * 4 + 0.5) + 1 = 21, recorded
    # from OpenCV 4.10 on a 1x24 step edge (0 then 255 from column 12) and on its transpose
    a = np.zeros((1, 24), np.uint8)
    a[0, 12:] = 255
    want = [0, 0, 1, 3, 7, 12, 21, 32, 48, 67, 90, 115, 140, 165, 188, 207, 223, 234, 243, 248, 252, 254, 255, 255]
    assert gaussian_blur_u8(a, 4, axis=1)[0].tolist() == want
    assert gaussian_blur_u8(a.T, 4, axis=0)[:, 0].tolist() == want


def _torchsde_noise(lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor,
                    seeds: list[int]) -> Callable[..., torch.Tensor]:
    """torchsde's own BrownianTree per image, as k-diffusion's Brownian noise sampler queries it."""
    import torchsde

    trees = [torchsde.BrownianTree(lo, torch.zeros_like(x[0]), hi, entropy=s) for s in seeds]

    def noise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # torchsde's own float32-vs-float64 end point note
            warnings.simplefilter("ignore", UserWarning)
            lo_t, hi_t, sign = (a, b, 1) if a < b else (b, a, -1)
            return torch.stack([t(lo_t, hi_t) for t in trees]) * sign / (b - a).abs().sqrt()

    return noise


def _sde_queries(hi: float, lo: float, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The queries of the SDE samplers: each step and its midpoint (DPM++ SDE), then a jump back and the whole range."""
    sigmas = torch.linspace(hi, lo, steps + 1)
    out = []
    for a, b in zip(sigmas[:-1], sigmas[1:], strict=True):
        out += [(a, b), (a, (a * b).sqrt())]
    return [*out, (sigmas[steps // 3], sigmas[-2]), (sigmas[0], sigmas[-1])]


@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (3, 1, 2, 3)])  # batch of images; fewer than 16 numbers each
@pytest.mark.parametrize("lo,hi", [(0.0292, 14.6146), (0.002, 80.0), (0.1, 3.0)])
@pytest.mark.parametrize("prepared", ["lazy", "prepared", "half-prepared"])
def test_brownian_noise_equals_torchsde_trees_with_the_cpu_source(shape, lo, hi, prepared):
    """The tree gives torchsde's BrownianTree numbers to the bit (torchsde draws with torch's generator seeded per
    node, as the CPU source does), whatever the query order, for every image of a batch; and so do trees whose
    nodes were computed ahead for the queries' points (all of them, or every other one and the rest on demand)."""
    x = torch.zeros(shape)
    seeds = [77, 2**32 + 5, 0][: shape[0]]
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    ours = BrownianTreeNoise(x, lo_t, hi_t, seeds, "CPU")
    want = _torchsde_noise(lo_t, hi_t, x, seeds)
    queries = _sde_queries(hi, lo, 12)
    points = sorted({float(t) for query in queries for t in query})
    if prepared != "lazy":
        ours.prepare(points if prepared == "prepared" else points[::2])
        assert ours.tree.held() > 100  # the nodes are there before the first query
    for a, b in queries:
        assert torch.equal(ours(a, b), want(a, b)), (float(a), float(b))
    if prepared == "lazy":
        assert len(ours.tree._w) <= ours.tree.keep  # memory stays bounded


def test_brownian_noise_with_the_nv_source_equals_torchsde_drawing_nv_numbers(monkeypatch):
    """A1111 makes torchsde draw its normals from the job's RNG source; with the NV source, the tree's numbers are
    torchsde's with each draw the Philox numbers of its seed."""
    import torchsde._brownian.brownian_interval as bi  # type: ignore[import-untyped]

    def nv_randn(size: Any, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
        return torch.from_numpy(philox.Generator(int(seed)).randn(tuple(size))).to(device=device, dtype=dtype)

    monkeypatch.setattr(bi, "_randn", nv_randn)
    x = torch.zeros(2, 4, 8, 8)
    lo_t, hi_t = torch.tensor(0.0292), torch.tensor(14.6146)
    ours = BrownianTreeNoise(x, lo_t, hi_t, [1, 2], "NV")
    want = _torchsde_noise(lo_t, hi_t, x, [1, 2])
    queries = _sde_queries(14.6146, 0.0292, 8)
    ours.prepare([t for query in queries[:8] for t in query])
    for a, b in queries:
        assert torch.equal(ours(a, b), want(a, b))


def test_tree_node_seeds_are_numpy_seed_sequence_words():
    rng = np.random.default_rng(0)
    entropies = [0, 1, 77, 2**32 - 2, 2**32 + 5, 2**64 - 1]
    nodes = [(d, int(rng.integers(0, 2**d))) for d in range(31)] + [(1, 1), (33, 2**32), (40, 2**39 + 3)]
    got = brownian.node_seeds(entropies, nodes)
    for i, entropy in enumerate(entropies):
        for j, (depth, index) in enumerate(nodes):
            want = np.random.SeedSequence(entropy, spawn_key=(index, depth), pool_size=24).generate_state(1)[0]
            assert got[i, j] == want, (entropy, depth, index)
    assert brownian.root_seeds([5])[0, 0] == np.random.SeedSequence(5, pool_size=24).generate_state(1)[0]


def test_philox_draws_for_many_seeds_in_one_pass_equal_single_draws():
    seeds = [0, 1, 12345, 2**32 + 7, 2**64 - 1]
    many = philox.randn_many(seeds, (4, 3, 5))
    for i, seed in enumerate(seeds):
        assert np.array_equal(many[i], philox.Generator(seed).randn((4, 3, 5)))
    with pytest.raises(ValueError):
        philox.randn_many([-1], (2,))


def test_brownian_tree_rejects_a_reversed_range_and_unordered_queries():
    draw = lambda seeds: np.ones((*seeds.shape, 2), dtype=np.float32)  # noqa: E731
    with pytest.raises(ValueError):
        brownian.BrownianTree(1.0, 0.5, [1], draw)
    point = brownian.BrownianTree(1.0, 1.0, [1], draw)  # a one-step schedule: one point, no increments
    assert not point(0.0, 2.0).any()
    tree = brownian.BrownianTree(0.0, 1.0, [1], draw)
    with pytest.raises(ValueError):
        tree(0.7, 0.2)
    assert not tree(0.3, 0.3).any()
    assert np.array_equal(tree(-5.0, 9.0), tree(0.0, 1.0))  # points outside the range go to its ends


@pytest.mark.parametrize("v_prediction", [False, True])
def test_denoiser_with_one_sigma_for_all_rows_gives_the_tensor_formulas_numbers(v_prediction: bool) -> None:
    # a sampler's call (one sigma for every row, on the CPU) takes the scalings as floats: the same bits as the
    # per-row tensor formulas, which a call with different sigmas per row still uses
    from modules.generation.conditioning import Cond
    from modules.generation.denoise import ModelDenoiser
    from modules.sampling.schedules import SigmaTable, scaled_linear_alphas_cumprod

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor, **_: object) -> tuple[torch.Tensor]:
            self.seen = (x.clone(), t.clone())
            return (x * 0.3 + torch.sin(x),)

    unet = Recorder()
    denoiser = ModelDenoiser(unet, SigmaTable.from_alphas_cumprod(scaled_linear_alphas_cumprod()),  # type: ignore[arg-type]
                             v_prediction=v_prediction)
    contexts = [Cond(torch.zeros(1, 3, 4))] * 3
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((3, 4, 2, 2), generator=gen)
    values = torch.cat([torch.exp(torch.rand(300, generator=gen) * 13 - 5), torch.tensor([0.0291675, 14.614642])])
    for value in values.tolist():
        sigma = torch.full((3,), value)
        fast = denoiser(x, sigma, contexts, [0, 1, 2])
        fast_seen = unet.seen
        mixed = torch.tensor([value, value, 1.0])  # rows with different sigmas: the tensor formulas
        slow = denoiser(x, torch.cat([sigma[:2], mixed[2:]]), contexts, [0, 1, 2])
        assert torch.equal(fast[:2], slow[:2]) and torch.equal(fast_seen[0][:2], unet.seen[0][:2])
        assert torch.equal(fast_seen[1][:2], unet.seen[1][:2])


def test_nv_draws_computed_with_torch_integer_kernels_are_numpys(monkeypatch):
    # on a CUDA device the NV numbers are computed there with torch (int64 words, float64 Box-Muller): the same
    # rounds as numpy's, checked here on the CPU, for keys and offsets with their high bit set and in several passes
    rng = np.random.default_rng(3)
    cases = [(0, 0, 7), (2**64 - 1, 2**64 - 1, 5), (2**63 + 9, 2**63, 300), (3999999999, 1, 64)]
    cases += [(int(rng.integers(0, 2**63)) * 2 + 1, int(rng.integers(0, 2**63)), int(rng.integers(1, 5000)))
              for _ in range(8)]
    for seed, offset, n in cases:
        got = philox.torch_rows([seed], [offset], n, torch.device("cpu"))
        assert got.dtype == torch.float32 and got.shape == (1, n)
        np.testing.assert_array_equal(got[0].numpy(), philox.Generator(seed, offset=offset).randn(n))
    monkeypatch.setattr(philox, "_TORCH_PASS_ELEMENTS", 1000)  # 300-value rows: three to a pass
    seeds = list(range(10))
    np.testing.assert_array_equal(philox.torch_rows(seeds, [0] * 10, 300, torch.device("cpu")).numpy(),
                                  philox.randn_many(seeds, 300))


def test_nv_noise_and_trees_computed_on_the_device_equal_the_cpu_ones(monkeypatch):
    # the device path (torch draws, the tree's arithmetic on tensors) run on the CPU: the same noise as numpy's
    x = torch.zeros(2, 4, 8, 8)
    lo_t, hi_t = torch.tensor(0.0292), torch.tensor(14.6146)
    queries = _sde_queries(14.6146, 0.0292, 6)

    def run() -> list[torch.Tensor]:
        rng = ImageRNG((4, 8, 8), [5, 6], source="NV", eta_noise_seed_delta=31337)
        out = [rng.first(), rng.next(), rng.next()]
        tree = BrownianTreeNoise(x, lo_t, hi_t, [5, 6], "NV")
        tree.prepare([t for query in queries[:6] for t in query])
        return out + [tree(a, b) for a, b in queries]

    want = run()
    monkeypatch.setattr(philox, "computes_on", lambda device: True)
    got = run()
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_fresh_trees_over_the_same_interval_share_the_preparation_plan_and_get_their_own_numbers():
    def draw(seeds: np.ndarray) -> np.ndarray:
        return philox.randn_many(seeds.reshape(-1), (3,)).reshape(*seeds.shape, 3)

    points = [9.5, 4.25, 1.125, 0.3]
    queries = list(zip(points[1:], points[:-1], strict=True))
    first = brownian.BrownianTree(0.3, 9.5, [11], draw)
    first.prepare(points)
    geometry = brownian._geometry_of(first.start, first.end)
    plan = geometry.plan(tuple(sorted(points)))
    assert plan is not None
    second = brownian.BrownianTree(0.3, 9.5, [12], draw)
    second.prepare(points)
    assert second._made_at is plan.made_at  # the plan was reused, not worked out again
    for seed, tree in ((11, first), (12, second)):
        lazy = brownian.BrownianTree(0.3, 9.5, [seed], draw)  # node by node, no plan
        for a, b in queries:
            assert np.array_equal(tree(a, b), lazy(a, b))
    assert not np.array_equal(first(0.3, 9.5), second(0.3, 9.5))


def test_the_shared_geometry_stays_bounded(monkeypatch):
    # many different schedules over one interval: the plans of the latest few are kept, the split points and tiles
    # are forgotten past their limits (small here: forgotten in the middle of a preparation), and trees still get
    # their numbers
    monkeypatch.setattr(brownian._Geometry, "SPLITS", 64)
    monkeypatch.setattr(brownian._Geometry, "TILES", 4)

    def draw(seeds: np.ndarray) -> np.ndarray:
        return philox.randn_many(seeds.reshape(-1), (2,)).reshape(*seeds.shape, 2)

    geometry = brownian._geometry_of(0.01, 7.0)
    for steps in range(3, 3 + 3 * brownian._Geometry.PLANS):  # each plan reaches far more than 64 split points
        points = np.geomspace(7.0, 0.01, steps).tolist()
        tree = brownian.BrownianTree(0.01, 7.0, [steps], draw)
        tree.prepare(points)
        lazy = brownian.BrownianTree(0.01, 7.0, [steps], draw)
        assert np.array_equal(tree(points[1], points[0]), lazy(points[1], points[0]))
        assert len(geometry.splits) <= brownian._Geometry.SPLITS and len(geometry.tiles) <= brownian._Geometry.TILES
    assert len(geometry._plans) == brownian._Geometry.PLANS

"""The NV noise source: Philox 4x32-10 known answers, torch-on-CUDA values for seed 0, offsets, shapes."""

from __future__ import annotations

import numpy as np
import pytest

from modules.sampling.philox import PASS_ELEMENTS, Generator, box_muller_sin, image_noise, philox4x32, randn_many

# torch.randn((3, 4), device="cuda") after seeding with 0, as A1111's modules/rng_philox.py documents it.
CUDA_SEED0_3x4 = np.array(
    [
        [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
        [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
        [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
    ]
)
# The GPU evaluates Box-Muller in float32; the values above agree with ours to a few float32 ulps.
CUDA_ATOL = 1e-6

# A1111 1.10.1's NV generator (modules/rng_philox.py), run for a seed above 2^31 and one above 2^32 (key high word):
# the first two draws of seed 3999999999 (offsets 0 and 1), and the first draw of seed 2**40 + 5. Exact float32.
A1111_NV_SEED_3999999999 = [
    [
        1.3361334800720215,
        1.1869224309921265,
        -0.369341641664505,
        0.25038599967956543,
        0.3376495838165283,
        -0.3834329843521118,
    ],
    [
        1.1522427797317505,
        -0.7428048253059387,
        -1.7616417407989502,
        0.8866705298423767,
        -1.1274781227111816,
        -1.434736967086792,
    ],
]
A1111_NV_SEED_2POW40_PLUS_5 = [1.0671086311340332, -1.1719361543655396, 0.7128459215164185, 0.028116507455706596]

# Random123's known-answer vectors for philox4x32 with 10 rounds: counter (4 words), key (2 words), output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
def test_philox_known_answers(counter: tuple[int, ...], key: tuple[int, int], expected: tuple[int, ...]) -> None:
    words = philox4x32(np.array(counter, dtype=np.uint32).reshape(4, 1), key)
    assert words.dtype == np.uint32
    assert [int(w) for w in words[:, 0]] == list(expected)


def test_philox_counters_are_independent_columns_and_input_is_kept() -> None:
    counters = np.array([kat[0] for kat in PHILOX_KAT[:2]], dtype=np.uint32).T.copy()
    before = counters.copy()
    words = philox4x32(counters, (0, 0))
    assert [int(w) for w in words[:, 0]] == list(PHILOX_KAT[0][2])
    np.testing.assert_array_equal(counters, before)


def test_seed0_matches_documented_cuda_values() -> None:
    noise = Generator(0).randn((3, 4))
    assert noise.dtype == np.float32
    assert noise.shape == (3, 4)
    np.testing.assert_allclose(noise, CUDA_SEED0_3x4, rtol=0, atol=CUDA_ATOL)


def test_matches_a1111_nv_exactly() -> None:
    gen = Generator(3999999999)
    for expected in A1111_NV_SEED_3999999999:
        np.testing.assert_array_equal(gen.randn(6), np.array(expected, dtype=np.float32))
    np.testing.assert_array_equal(
        Generator(2**40 + 5).randn(4), np.array(A1111_NV_SEED_2POW40_PLUS_5, dtype=np.float32)
    )


def test_same_seed_reproduces_and_other_seeds_differ() -> None:
    first = Generator(1234).randn((4, 8, 8))
    np.testing.assert_array_equal(first, Generator(1234).randn((4, 8, 8)))
    assert not np.array_equal(first, Generator(1235).randn((4, 8, 8)))
    # the seed's high 32-bit word is part of the key, not dropped
    assert not np.array_equal(Generator(0).randn(16), Generator(2**32).randn(16))


def test_offset_advances_by_one_per_draw() -> None:
    gen = Generator(42)
    draws = [gen.randn((2, 3)) for _ in range(3)]
    assert gen.offset == 3
    for offset, draw in enumerate(draws):
        np.testing.assert_array_equal(draw, Generator(42, offset=offset).randn((2, 3)))
    assert not np.array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[1], draws[2])
    # the offset's high word is used too
    assert not np.array_equal(Generator(42, offset=2**32).randn(6), Generator(42).randn(6))


def test_repeated_draws_computed_ahead_are_the_same_numbers() -> None:
    # a draw of the same shape as the one before computes the next few with it: each still equals a fresh
    # generator's draw at that offset, also when the shape changes or the offset is set between draws
    gen = Generator(9)
    shapes = [(4, 8, 8)] * 20 + [(3,), (4, 8, 8), (4, 8, 8), (2, 2)] + [(4, 8, 8)] * 3
    for offset, shape in enumerate(shapes):
        np.testing.assert_array_equal(gen.randn(shape), Generator(9, offset=offset).randn(shape))
    gen.offset = 3
    np.testing.assert_array_equal(gen.randn((4, 8, 8)), Generator(9, offset=3).randn((4, 8, 8)))
    first = gen.randn((4, 8, 8))
    want = Generator(9, offset=4).randn((4, 8, 8))
    np.testing.assert_array_equal(first, want)
    first[:] = 0  # the caller owns what it gets: changing it does not change a later draw
    gen.offset = 4
    np.testing.assert_array_equal(gen.randn((4, 8, 8)), want)


def test_a_draw_is_the_flat_sequence_reshaped() -> None:
    # element i uses counter index i, whatever the shape: shapes share their leading values
    flat = Generator(0).randn(20)
    np.testing.assert_array_equal(Generator(0).randn((4, 5)).ravel(), flat)
    np.testing.assert_array_equal(Generator(0).randn([2, 2, 5]).ravel(), flat)
    np.testing.assert_allclose(Generator(0).randn(12), CUDA_SEED0_3x4.ravel(), rtol=0, atol=CUDA_ATOL)


def test_shapes() -> None:
    gen = Generator(7)
    assert gen.randn(5).shape == (5,)
    assert gen.randn((1, 4, 3, 2)).shape == (1, 4, 3, 2)
    assert gen.randn(np.array([2, 3]).tolist()).shape == (2, 3)
    assert gen.randn((np.int64(2), 3)).shape == (2, 3)
    assert gen.randn((0, 4)).shape == (0, 4)
    assert gen.randn(()).shape == ()


@pytest.mark.parametrize("shape", [(-1, 4), (2.5, 3), (True, 2)])
def test_bad_shapes_are_refused(shape: tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        Generator(0).randn(shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5])
def test_bad_seeds_are_refused(seed: object) -> None:
    with pytest.raises(ValueError, match="Seed"):
        Generator(seed)  # type: ignore[arg-type]


def test_image_noise_is_first_draw_with_latent_shape() -> None:
    noise = image_noise(0, width=32, height=24)
    assert noise.shape == (4, 3, 4)
    assert noise.dtype == np.float32
    np.testing.assert_allclose(noise.ravel()[:12], CUDA_SEED0_3x4.ravel(), rtol=0, atol=CUDA_ATOL)
    np.testing.assert_array_equal(image_noise(5, 64, 64), Generator(5).randn((4, 8, 8)))
    assert image_noise(5, 64, 64, channels=16).shape == (16, 8, 8)
    with pytest.raises(ValueError, match="size"):
        image_noise(0, 4, 64)


def test_512px_latent_draw_completes_and_looks_normal() -> None:
    noise = Generator(3).randn((4, 64, 64))
    assert noise.shape == (4, 64, 64)
    assert np.isfinite(noise).all()
    assert abs(float(noise.mean())) < 0.05
    assert abs(float(noise.std()) - 1.0) < 0.05


def _reference_draw(seed: int, offset: int, n: int) -> np.ndarray:
    """The draw from the whole Philox (all four words, every round) and the plain Box-Muller."""
    counter = np.zeros((4, n), dtype=np.uint32)
    counter[0], counter[1] = offset & 0xFFFFFFFF, offset >> 32
    counter[2] = np.arange(n, dtype=np.uint32)
    words = philox4x32(counter, (seed & 0xFFFFFFFF, seed >> 32))
    return box_muller_sin(words[0], words[1])


def test_the_per_row_shortcuts_give_the_whole_generator_numbers() -> None:
    # draws skip the work that is the same for every element (the first rounds' per-row words, the last round's
    # unused pair): the same float32 numbers as the whole computation, for keys and offsets with high words, small
    # draws in passes of many rows and a draw larger than one pass (split by columns)
    rng = np.random.default_rng(1)
    cases = [(0, 0, 7), (2**64 - 1, 2**64 - 1, 5), (2**40 + 5, 2**33 + 3, 300), (3999999999, 1, 64)]
    cases += [(int(rng.integers(0, 2**63)), int(rng.integers(0, 2**40)), int(rng.integers(1, 2000))) for _ in range(6)]
    cases.append((77, 2, PASS_ELEMENTS * 2 + 17))
    for seed, offset, n in cases:
        np.testing.assert_array_equal(Generator(seed, offset=offset).randn(n), _reference_draw(seed, offset, n))
    seeds = np.arange(PASS_ELEMENTS // 64 * 2 + 3, dtype=np.uint32)  # more rows than one pass holds
    many = randn_many(seeds, (4, 4, 4))
    for seed in (0, 1, len(seeds) // 2, len(seeds) - 1):
        np.testing.assert_array_equal(many[seed].ravel(), _reference_draw(seed, 0, 64))

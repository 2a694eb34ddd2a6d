"""DPM fast, DPM adaptive and Restart on closed-form problems: point data and Gaussian data N(MU, S^2), whose
denoisers and probability-flow ODE solutions are known exactly, and a two-component Gaussian mixture for golden
values recorded from k-diffusion and A1111."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from modules.sampling.extra_samplers import (
    AdaptiveInfo,
    dpm_fast_orders,
    restart_plan,
    sample_dpm_adaptive,
    sample_dpm_adaptive_with_info,
    sample_dpm_fast,
    sample_restart,
)
from modules.sampling.k_common import NoiseRequiredError, NoiseSampler, Step
from modules.sampling.k_samplers import sample_heun
from modules.sampling.schedules import karras

MU, S = 0.3, 0.5
SIGMA_MIN, SIGMA_MAX = 0.05, 10.0
NO_SIGMAS = torch.zeros(1)  # DPM fast / adaptive get their range and n as keywords in most tests


def gaussian_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
    """E[x0 | x] for x0 ~ N(MU, S^2) and x = x0 + sigma * n."""
    sig = sigma.view(-1, *([1] * (x.ndim - 1)))
    return MU + S**2 / (S**2 + sig**2) * (x - MU)


def point_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
    """E[x0 | x] for x0 = MU: the noise prediction (x - MU) / sigma is constant along every ODE path."""
    return torch.full_like(x, MU)


def exact_flow(x: Tensor, sigma_from: float, sigma_to: float, s: float = S) -> Tensor:
    """The probability-flow ODE solved for data N(MU, s^2): x - MU scales with sqrt(s^2 + sigma^2)."""
    return MU + (x - MU) * math.sqrt((s**2 + sigma_to**2) / (s**2 + sigma_from**2))


def start(batch: int = 4) -> Tensor:
    return torch.linspace(-2.0, 2.0, batch, dtype=torch.float64).view(batch, 1) * SIGMA_MAX


def karras64(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> Tensor:
    return karras(n, sigma_min, sigma_max).double()


class RecordingNoise:
    """A seeded noise sampler that records its (sigma, sigma_next) arguments."""

    def __init__(self, seed: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.shape, self.dtype = shape, dtype
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        self.calls.append((float(sigma), float(sigma_next)))
        return torch.randn(self.shape, generator=self.gen, dtype=self.dtype)


def counting(model: Callable[[Tensor, Tensor], Tensor]) -> tuple[Callable[[Tensor, Tensor], Tensor], list[float]]:
    seen: list[float] = []

    def wrapped(x: Tensor, sigma: Tensor) -> Tensor:
        seen.append(float(sigma[0]))
        return model(x, sigma)

    return wrapped, seen


def fast(x: Tensor, n: int, eta: float = 0.0, noise: NoiseSampler | None = None, s_noise: float = 1.0) -> Tensor:
    return sample_dpm_fast(
        gaussian_denoiser, x, NO_SIGMAS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, n=n, eta=eta, noise=noise,
        s_noise=s_noise,
    )  # fmt: skip


def adaptive(
    x: Tensor, eta: float = 0.0, noise: NoiseSampler | None = None, order: int = 3, tol: float | None = None
) -> tuple[Tensor, AdaptiveInfo]:
    """DPM adaptive from SIGMA_MAX to SIGMA_MIN; ``tol`` sets rtol and atol together (default: A1111's)."""
    rtol, atol = (0.05, 0.0078) if tol is None else (tol, tol)
    return sample_dpm_adaptive_with_info(
        gaussian_denoiser, x, NO_SIGMAS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, eta=eta, noise=noise, order=order,
        rtol=rtol, atol=atol,
    )  # fmt: skip


# --- DPM fast -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 14))
def test_fast_orders_spend_exactly_n_model_calls(n: int):
    orders = dpm_fast_orders(n)
    assert sum(orders) == n
    if n % 3 == 0:
        assert orders == [3] * (n // 3 - 1) + [2, 1]
    else:
        assert orders == [3] * (n // 3) + [n % 3]
    model, seen = counting(gaussian_denoiser)
    sample_dpm_fast(model, start(), NO_SIGMAS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, n=n, eta=0.0)
    assert len(seen) == n


def test_fast_needs_a_model_call_and_a_positive_range():
    with pytest.raises(ValueError, match="at least one"):
        dpm_fast_orders(0)
    with pytest.raises(ValueError, match="positive"):
        sample_dpm_fast(gaussian_denoiser, start(), NO_SIGMAS, sigma_min=0.0, sigma_max=SIGMA_MAX, n=5)
    with pytest.raises(ValueError, match="eta must be 0"):
        sample_dpm_fast(gaussian_denoiser, start(), NO_SIGMAS, sigma_min=1.0, sigma_max=1.0, n=5, eta=1.0)


@pytest.mark.parametrize("n", range(1, 8))
def test_every_order_is_exact_when_the_noise_prediction_is_constant(n: int):
    x = start()
    exact = MU + (x - MU) * (SIGMA_MIN / SIGMA_MAX)
    out = sample_dpm_fast(point_denoiser, x, NO_SIGMAS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, n=n, eta=0.0)
    torch.testing.assert_close(out, exact, rtol=1e-12, atol=1e-12)


def fast_error(n: int) -> float:
    x = start()
    return float((fast(x, n) - exact_flow(x, SIGMA_MAX, SIGMA_MIN)).abs().max())


def fitted_order(errors: list[float], counts: tuple[int, ...]) -> float:
    return float(-np.polyfit(np.log(counts), np.log(errors), 1)[0])


def test_fast_is_third_order_when_its_last_step_is_second_order():
    """n = 3k + 2 gives k third-order steps and one second-order one: third-order global error."""
    counts = (14, 26, 50, 98)
    assert 2.8 <= fitted_order([fast_error(n) for n in counts], counts) <= 3.5


@pytest.mark.parametrize("counts", [(12, 24, 48, 96), (13, 25, 49, 97)])
def test_fast_with_a_first_order_last_step_still_converges(counts: tuple[int, ...]):
    errors = [fast_error(n) for n in counts]
    assert errors == sorted(errors, reverse=True)
    assert fitted_order(errors, counts) >= 1.8
    assert errors[-1] < 2e-4


def test_fast_defaults_take_the_range_and_count_from_sigmas():
    """A1111's img2img path: sigma_min = sigmas[-2] (sigmas end in 0), sigma_max = sigmas[0], n = len(sigmas) - 1."""
    sigmas = karras64(9, 0.1, 8.0)  # 10 entries, the last one 0
    low, high = float(sigmas[-2]), float(sigmas[0])
    x = start()
    out = sample_dpm_fast(gaussian_denoiser, x, sigmas, eta=0.0)
    ref = sample_dpm_fast(gaussian_denoiser, x, NO_SIGMAS, sigma_min=low, sigma_max=high, n=9, eta=0.0)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # without a trailing 0 the last sigma is the bottom of the range
    out = sample_dpm_fast(gaussian_denoiser, x, sigmas[:-1], eta=0.0)
    ref = sample_dpm_fast(gaussian_denoiser, x, NO_SIGMAS, sigma_min=low, sigma_max=high, n=8, eta=0.0)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 3, 10, 11])
def test_fast_draws_noise_once_per_step_whatever_eta(n: int):
    x = start()
    steps = len(dpm_fast_orders(n))
    plain = fast(x, n)
    noise = RecordingNoise(0, tuple(x.shape))
    torch.testing.assert_close(fast(x, n, noise=noise), plain, rtol=0, atol=0)  # eta 0: drawn, scaled by 0
    assert len(noise.calls) == steps
    noise = RecordingNoise(0, tuple(x.shape))
    reports: list[Step] = []
    sample_dpm_fast(
        gaussian_denoiser, x, NO_SIGMAS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, n=n, eta=1.0, noise=noise,
        callback=reports.append,
    )  # fmt: skip
    assert len(noise.calls) == steps
    # each call spans one step of the grid evenly spaced in log sigma, from sigma_max to sigma_min
    grid = np.exp(np.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), steps + 1))
    np.testing.assert_allclose(noise.calls, np.stack([grid[:-1], grid[1:]], axis=1), rtol=1e-9)
    assert [r.i for r in reports] == list(range(steps))
    np.testing.assert_allclose([float(r.sigma) for r in reports], grid[:-1], rtol=1e-9)


def test_fast_with_eta_needs_noise_except_for_a_single_step():
    x = start()
    with pytest.raises(NoiseRequiredError):
        fast(x, 10, eta=1.0)
    # one step goes straight to sigma_min: its ancestral noise has scale 0
    torch.testing.assert_close(fast(x, 1, eta=1.0), fast(x, 1), rtol=0, atol=0)


def test_fast_s_noise_scales_the_added_noise():
    x = start()
    base = fast(x, 6, eta=1.0, noise=RecordingNoise(1, tuple(x.shape)), s_noise=0.0)
    full = fast(x, 6, eta=1.0, noise=RecordingNoise(1, tuple(x.shape)))
    assert not torch.allclose(base, full)


def sample_gaussian_start(batch: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return MU + math.sqrt(S**2 + SIGMA_MAX**2) * torch.randn((batch, 1), generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("which", ["fast", "adaptive"])
def test_ancestral_dpm_solver_samples_the_noisy_data_distribution(which: str):
    """With eta = 1 and many samples, the output at sigma_min has the mean and spread of N(MU, S^2 + sigma_min^2)."""
    batch = 4000
    x = sample_gaussian_start(batch, 3)
    noise = RecordingNoise(4, (batch, 1))
    out = fast(x, 30, eta=1.0, noise=noise) if which == "fast" else adaptive(x, eta=1.0, noise=noise)[0]
    assert float(out.mean()) == pytest.approx(MU, abs=4 * S / math.sqrt(batch))
    assert float(out.std()) == pytest.approx(math.sqrt(S**2 + SIGMA_MIN**2), rel=0.06)


# --- DPM adaptive -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_is_exact_when_the_noise_prediction_is_constant(order: int):
    x = start()
    out, info = sample_dpm_adaptive_with_info(
        point_denoiser, x, NO_SIGMAS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, eta=0.0, order=order
    )
    torch.testing.assert_close(out, MU + (x - MU) * (SIGMA_MIN / SIGMA_MAX), rtol=1e-12, atol=1e-12)
    assert info.n_reject == 0  # zero error estimate: every step accepted, and the step size grows


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_error_follows_the_tolerance(order: int):
    x = start()
    exact = exact_flow(x, SIGMA_MAX, SIGMA_MIN)
    errors, calls = [], []
    for tol in (5e-3, 5e-4, 5e-5):
        out, info = adaptive(x, order=order, tol=tol)
        errors.append(float((out - exact).abs().max()))
        calls.append(info.nfe)
        assert info.nfe == order * info.steps
        assert info.steps == info.n_accept + info.n_reject
    assert errors == sorted(errors, reverse=True)
    assert calls == sorted(calls)
    assert errors[-1] < 5e-4


def test_adaptive_model_calls_and_reports():
    model, seen = counting(gaussian_denoiser)
    reports: list[Step] = []
    out, info = sample_dpm_adaptive_with_info(
        model, start(), NO_SIGMAS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, eta=0.0, callback=reports.append
    )
    assert len(seen) == info.nfe == 3 * info.steps
    assert [r.i for r in reports] == list(range(info.steps))
    assert float(reports[-1].sigma) == pytest.approx(SIGMA_MIN, rel=1e-4)
    assert torch.equal(sample_dpm_adaptive(gaussian_denoiser, start(), NO_SIGMAS, sigma_min=SIGMA_MIN,
                                           sigma_max=SIGMA_MAX, eta=0.0), out)  # fmt: skip


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_adaptive_draws_noise_once_per_accepted_step(eta: float):
    x = start()
    noise = RecordingNoise(2, tuple(x.shape))
    out, info = adaptive(x, eta=eta, noise=noise)
    assert info.n_reject > 0 or eta == 0.0
    assert len(noise.calls) == info.n_accept
    assert all(high > low for high, low in noise.calls)
    assert noise.calls[-1][1] == pytest.approx(SIGMA_MIN, rel=1e-4)
    if eta == 0.0:
        torch.testing.assert_close(out, adaptive(x)[0], rtol=0, atol=0)
    else:
        with pytest.raises(NoiseRequiredError):
            adaptive(x, eta=1.0)


def test_adaptive_rejects_other_orders_and_reverse_noise():
    with pytest.raises(ValueError, match="order"):
        adaptive(start(), order=4)
    with pytest.raises(ValueError, match="eta must be 0"):
        sample_dpm_adaptive(gaussian_denoiser, start(), NO_SIGMAS, sigma_min=5.0, sigma_max=1.0, eta=1.0)


def test_adaptive_runs_backwards_without_noise():
    """From sigma_min up to sigma_max (sigma_min > sigma_max) with eta = 0: the ODE solved the other way."""
    x = exact_flow(start(), SIGMA_MAX, 0.5)
    out, _ = sample_dpm_adaptive_with_info(
        gaussian_denoiser, x, NO_SIGMAS, sigma_min=5.0, sigma_max=0.5, eta=0.0, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(out, exact_flow(x, 0.5, 5.0), rtol=0, atol=1e-3)


# --- Restart ------------------------------------------------------------------------------------------------------


def with_zero(sigmas: Tensor) -> Tensor:
    return sigmas if float(sigmas[-1]) == 0 else torch.cat([sigmas, sigmas.new_zeros([1])])


@pytest.mark.parametrize("steps", [5, 12, 19])
def test_restart_under_20_steps_is_heun(steps: int):
    x, sigmas = start(), karras64(steps)
    out = sample_restart(gaussian_denoiser, x, sigmas)
    assert torch.equal(out, sample_heun(gaussian_denoiser, x, sigmas))


def test_restart_with_an_empty_restart_list_is_heun_on_the_given_sigmas():
    x, sigmas = start(), karras64(40)
    out = sample_restart(gaussian_denoiser, x, sigmas, restart_list={})
    assert torch.equal(out, sample_heun(gaussian_denoiser, x, sigmas))


@pytest.mark.parametrize("steps", [20, 21, 27, 35, 36, 37, 50, 80])
def test_restart_plan_keeps_the_step_count(steps: int):
    sigmas = karras64(steps, 0.0292, 14.6146)
    plan = restart_plan(sigmas)
    assert len(plan) == steps
    assert float(plan[0][0]) == pytest.approx(14.6146, rel=1e-5)
    assert float(plan[-1][1]) == 0.0
    jumps = [(float(a[1]), float(b[0])) for a, b in zip(plan, plan[1:], strict=False) if float(b[0]) > float(a[1])]
    assert len(jumps) == (2 if steps >= 36 else 1)
    for low, high in jumps:
        # from the main schedule's entry nearest 0.1 up to its entry nearest 2
        rebuilt = karras(steps - (steps // 4 * 2 if steps >= 36 else 9), 0.0292, 14.6146)
        assert low == pytest.approx(float(rebuilt[(rebuilt - 0.1).abs().argmin()]), rel=1e-5)
        assert high == pytest.approx(float(rebuilt[(rebuilt - 2).abs().argmin()]), rel=1e-5)


def test_restart_plan_from_a_restart_list():
    sigmas = karras64(8, 0.05, 10.0)
    plan = restart_plan(sigmas, {0.5: (4, 3, 3.0)})
    low_idx = int((sigmas - 0.5).abs().argmin())
    high_idx = int((sigmas - 3.0).abs().argmin())
    assert len(plan) == 8 + 3 * 3  # 4 Karras points without the 0 are 3 steps, done three times
    segment = [(float(a), float(b)) for a, b in plan[low_idx : low_idx + 3]]
    assert segment[0][0] == pytest.approx(float(sigmas[high_idx]), rel=1e-5)
    assert segment[-1][1] == pytest.approx(float(sigmas[low_idx]), rel=1e-5)
    # a restart whose top is not above it is dropped
    assert len(restart_plan(sigmas, {0.5: (4, 3, 0.01)})) == 8


@pytest.mark.parametrize("steps", [20, 40])
def test_restart_draws_noise_at_each_restart(steps: int):
    x, sigmas = start(), karras64(steps)
    noise = RecordingNoise(5, tuple(x.shape))
    reports: list[Step] = []
    sample_restart(gaussian_denoiser, x, sigmas, noise=noise, callback=reports.append)
    plan = restart_plan(sigmas)
    jumps = [(float(a[1]), float(b[0])) for a, b in zip(plan, plan[1:], strict=False) if float(b[0]) > float(a[1])]
    assert noise.calls == jumps
    assert [r.i for r in reports] == list(range(len(plan)))
    with pytest.raises(NoiseRequiredError):
        sample_restart(gaussian_denoiser, x, sigmas)


def test_restart_noise_has_std_s_noise_times_the_sigma_gap():
    x, sigmas = start(), karras64(20)
    plan = restart_plan(sigmas)
    jump = next(i for i in range(1, len(plan)) if plan[i][0] > plan[i - 1][1])
    low, high = float(plan[jump - 1][1]), float(plan[jump][0])
    seen: dict[str, Tensor] = {}

    def run(value: float, key: str) -> None:
        def record(step: Step) -> None:
            if step.i == jump:
                seen[key] = step.x

        sample_restart(
            gaussian_denoiser, x, sigmas, s_noise=0.7, noise=lambda a, b: torch.full_like(x, value), callback=record
        )

    run(0.0, "zero")
    run(1.0, "one")
    gap = seen["one"] - seen["zero"]
    torch.testing.assert_close(gap, torch.full_like(x, 0.7 * math.sqrt(high**2 - low**2)), rtol=1e-6, atol=0)


def test_restart_samples_the_data_distribution():
    batch = 4000
    x = sample_gaussian_start(batch, 6)
    out = sample_restart(gaussian_denoiser, x, with_zero(karras64(40, 0.01)), noise=RecordingNoise(7, (batch, 1)))
    assert float(out.mean()) == pytest.approx(MU, abs=4 * S / math.sqrt(batch))
    assert float(out.std()) == pytest.approx(S, rel=0.05)


# --- shared behaviour ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run",
    [
        lambda x, noise: fast(x, 10, eta=1.0, noise=noise),
        lambda x, noise: adaptive(x, eta=1.0, noise=noise)[0],
        lambda x, noise: sample_restart(gaussian_denoiser, x, karras64(36), noise=noise),
    ],
    ids=["fast", "adaptive", "restart"],
)
def test_samplers_never_touch_the_global_generator(run: Callable[[Tensor, NoiseSampler], Tensor]):
    x = start()
    state = torch.random.get_rng_state()
    first = run(x, RecordingNoise(8, tuple(x.shape)))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(run(x, RecordingNoise(8, tuple(x.shape))), first)
    assert not torch.allclose(run(x, RecordingNoise(9, tuple(x.shape))), first)


# --- golden values ------------------------------------------------------------------------------------------------
# Golden values, produced once by a throwaway script (not part of this repository) that ran k-diffusion's own
# sample_dpm_fast and sample_dpm_adaptive (k-diffusion as A1111 1.10.1 pins it), and A1111 1.10.1's restart_sampler
# with k_diffusion.sampling.torch.randn_like redirected to the same seeded stream, on exactly the float32 problem
# below (mixture denoiser, start x, noise streams); outputs rounded to 6 decimals.

MIX_MEANS, MIX_WEIGHTS, MIX_S = (-1.0, 0.6), (0.3, 0.7), 0.4
SD_SIGMA_MIN, SD_SIGMA_MAX = 0.0291675, 14.614642


def mixture_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
    """E[x0 | x] for x0 from a two-component Gaussian mixture (a nonlinear denoiser)."""
    sig = sigma.view(-1, *([1] * (x.ndim - 1)))
    var = MIX_S**2 + sig**2
    logits = torch.stack([math.log(w) - (x - m) ** 2 / (2 * var) for m, w in zip(MIX_MEANS, MIX_WEIGHTS, strict=True)])
    means = torch.stack([m + MIX_S**2 / var * (x - m) for m in MIX_MEANS])
    return (torch.softmax(logits, dim=0) * means).sum(0)


def golden_noise(seed: int) -> NoiseSampler:
    gen = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn((2, 2), generator=gen)


def golden_start() -> Tensor:
    return torch.randn((2, 2), generator=torch.Generator().manual_seed(7)) * SD_SIGMA_MAX


def golden_fast(eta: float, s_noise: float) -> Tensor:
    return sample_dpm_fast(
        mixture_denoiser, golden_start(), NO_SIGMAS, sigma_min=SD_SIGMA_MIN, sigma_max=SD_SIGMA_MAX, n=10, eta=eta,
        s_noise=s_noise, noise=golden_noise(1),
    )  # fmt: skip


def golden_adaptive(eta: float) -> tuple[Tensor, AdaptiveInfo]:
    return sample_dpm_adaptive_with_info(
        mixture_denoiser, golden_start(), NO_SIGMAS, sigma_min=SD_SIGMA_MIN, sigma_max=SD_SIGMA_MAX, eta=eta,
        noise=golden_noise(1),
    )  # fmt: skip


def golden_restart(steps: int) -> Tensor:
    sigmas = karras(steps, SD_SIGMA_MIN, SD_SIGMA_MAX)
    return sample_restart(mixture_denoiser, golden_start(), sigmas, noise=golden_noise(3))


GOLDEN: list[tuple[str, Callable[[], Tensor], list[float]]] = [
    ("fast eta 0", lambda: golden_fast(0.0, 1.0), [0.255321, 0.796591, 0.869817, -1.053746]),
    ("fast eta 1 s_noise 0.9", lambda: golden_fast(1.0, 0.9), [0.327762, 0.474702, -0.153632, 0.654503]),
    ("adaptive eta 0", lambda: golden_adaptive(0.0)[0], [0.257823, 0.822852, 0.89408, -1.109987]),
    ("adaptive eta 1", lambda: golden_adaptive(1.0)[0], [1.171394, -1.794579, 0.645139, 0.5989]),
    ("restart 20", lambda: golden_restart(20), [0.816948, 0.641463, 0.616799, -1.051606]),
    ("restart 36", lambda: golden_restart(36), [0.583256, -1.00827, 0.679375, 0.617079]),
    (
        "restart list",
        lambda: sample_restart(
            mixture_denoiser,
            golden_start(),
            karras(8, SD_SIGMA_MIN, SD_SIGMA_MAX),
            noise=golden_noise(3),
            restart_list={0.3: (4, 2, 3.0)},
        ),
        [0.556344, -1.22564, 0.673713, 0.820801],
    ),  # fmt: skip
]


@pytest.mark.parametrize(("run", "expected"), [(g[1], g[2]) for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_golden_values_match_k_diffusion_and_a1111(run: Callable[[], Tensor], expected: list[float]):
    out = run()
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.flatten().tolist(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize(("eta", "expected"), [(0.0, AdaptiveInfo(9, 27, 8, 1)), (1.0, AdaptiveInfo(12, 36, 10, 2))])
def test_golden_adaptive_step_counts(eta: float, expected: AdaptiveInfo):
    assert golden_adaptive(eta)[1] == expected

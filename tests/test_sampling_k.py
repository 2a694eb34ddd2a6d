"""k-diffusion samplers on a closed-form problem: data N(MU, S^2), whose ideal denoiser and probability-flow ODE
solution are known exactly, so each sampler's global error and its order can be measured."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from modules.sampling.k_samplers import (
    NoiseRequiredError,
    NoiseSampler,
    Sampler,
    Step,
    ancestral_step,
    lms_coefficient,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lms,
)

MU, S = 0.3, 0.5
SIGMA_MIN, SIGMA_MAX = 0.05, 10.0


def gaussian_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
    """E[x0 | x] for x0 ~ N(MU, S^2) and x = x0 + sigma * n."""
    sig = sigma.view(-1, *([1] * (x.ndim - 1)))
    return MU + S**2 / (S**2 + sig**2) * (x - MU)


def exact_flow(x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
    """The probability-flow ODE dx/dsigma = (x - D) / sigma, solved: x - MU scales with sqrt(S^2 + sigma^2)."""
    return MU + (x - MU) * math.sqrt((S**2 + sigma_to**2) / (S**2 + sigma_from**2))


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022), eq. 5: n sigmas from sigma_max to sigma_min, evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho


def with_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def start(batch: int = 4) -> Tensor:
    return torch.linspace(-2.0, 2.0, batch, dtype=torch.float64).view(batch, 1) * SIGMA_MAX


def seeded_noise(seed: int, shape: tuple[int, ...]) -> NoiseSampler:
    gen = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(shape, generator=gen, dtype=torch.float64)


def global_error(sampler: Sampler, steps: int, eta: float = 1.0) -> float:
    """Error at SIGMA_MIN after integrating from SIGMA_MAX in ``steps`` steps (no final jump to 0, so that every
    step is a regular step of the method)."""
    x = start()
    out = sampler(gaussian_denoiser, x, karras_sigmas(steps + 1), eta=eta)
    return float((out - exact_flow(x, SIGMA_MAX, SIGMA_MIN)).abs().max())


def fitted_order(sampler: Sampler, steps: tuple[int, ...] = (16, 32, 64, 128), eta: float = 1.0) -> float:
    errors = [global_error(sampler, n, eta) for n in steps]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    return float(-slope)


# The multistep methods start with lower-order steps, as k-diffusion's do: LMS's first (Euler) steps fall where the
# solution is nearly linear in sigma, so it shows most of its order 4; DPM++ 3M's first-order start bounds its global
# order by 2, and what the third order buys is a smaller constant (checked below).
@pytest.mark.parametrize(
    ("sampler", "low", "high", "eta"),
    [
        (sample_euler, 0.8, 1.2, 1.0),
        (sample_heun, 1.8, 2.2, 1.0),
        (sample_dpm_2, 1.8, 2.2, 1.0),
        (sample_lms, 3.0, 4.5, 1.0),
        (sample_dpmpp_2m, 1.8, 2.2, 1.0),
        (sample_euler_ancestral, 0.8, 1.2, 0.0),
        (sample_dpm_2_ancestral, 1.8, 2.2, 0.0),
        (sample_dpmpp_2s_ancestral, 1.8, 2.2, 0.0),
        (sample_dpmpp_sde, 1.8, 2.2, 0.0),
        (sample_dpmpp_2m_sde, 1.8, 2.2, 0.0),
        (sample_dpmpp_2m_sde_heun, 1.8, 2.2, 0.0),
        (sample_dpmpp_3m_sde, 1.8, 3.3, 0.0),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_deterministic_global_error_has_the_method_order(sampler: Sampler, low: float, high: float, eta: float):
    assert low <= fitted_order(sampler, eta=eta) <= high


@pytest.mark.parametrize("steps", [16, 32, 64])
def test_third_order_multistep_beats_second_order(steps: int):
    assert global_error(sample_dpmpp_3m_sde, steps, eta=0.0) < global_error(sample_dpmpp_2m, steps) / 2
    if steps >= 32:
        assert global_error(sample_lms, steps) < global_error(sample_dpmpp_2m, steps) / 4


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun, sample_dpm_2, sample_lms, sample_dpmpp_2m])
def test_full_schedule_to_zero_converges_to_the_exact_sample(sampler: Sampler):
    x = start()
    exact = exact_flow(x, SIGMA_MAX, 0.0)
    errors = [
        float((sampler(gaussian_denoiser, x, with_zero(karras_sigmas(n, sigma_min=0.002))) - exact).abs().max())
        for n in (10, 40)
    ]
    assert errors[1] < errors[0]
    assert errors[1] < 0.05


def test_lms_coefficients_integrate_polynomials_exactly():
    t = np.array([10.0, 6.0, 3.5, 1.7, 0.6])
    i = 3
    for degree in range(4):
        ds = [t[i - j] ** degree for j in range(4)]
        approx = sum(lms_coefficient(4, t, i, j) * ds[j] for j in range(4))
        exact = (t[i + 1] ** (degree + 1) - t[i] ** (degree + 1)) / (degree + 1)
        assert approx == pytest.approx(exact, rel=1e-12)
    with pytest.raises(ValueError, match="too high"):
        lms_coefficient(4, t, 2, 0)


def test_ancestral_step_splits_the_variance():
    down, up = ancestral_step(torch.tensor(2.0), torch.tensor(1.0), 1.0)
    assert float(down**2 + up**2) == pytest.approx(1.0)
    assert float(up) == pytest.approx(math.sqrt(1.0 * (4.0 - 1.0) / 4.0))
    down, up = ancestral_step(torch.tensor(2.0), torch.tensor(1.0), 0.0)
    assert (float(down), float(up)) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("stochastic", "deterministic"),
    [
        (sample_euler_ancestral, sample_euler),
        (sample_dpm_2_ancestral, sample_dpm_2),
        (sample_dpmpp_2m_sde, sample_dpmpp_2m),
        (sample_dpmpp_sde, sample_dpmpp_2s_ancestral),
    ],
)
def test_eta_zero_equals_the_deterministic_counterpart(stochastic: Sampler, deterministic: Sampler):
    x, sigmas = start(), with_zero(karras_sigmas(12))
    out = stochastic(gaussian_denoiser, x, sigmas, eta=0.0, noise=seeded_noise(0, tuple(x.shape)))
    ref = deterministic(gaussian_denoiser, x, sigmas, eta=0.0)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


STOCHASTIC = [
    sample_euler_ancestral,
    sample_dpm_2_ancestral,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_sde,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_3m_sde,
]


@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_stochastic_samplers_are_reproducible_and_need_noise(sampler: Sampler):
    x, sigmas = start(), with_zero(karras_sigmas(10))
    first = sampler(gaussian_denoiser, x, sigmas, noise=seeded_noise(1, tuple(x.shape)))
    again = sampler(gaussian_denoiser, x, sigmas, noise=seeded_noise(1, tuple(x.shape)))
    other = sampler(gaussian_denoiser, x, sigmas, noise=seeded_noise(2, tuple(x.shape)))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    with pytest.raises(NoiseRequiredError):
        sampler(gaussian_denoiser, x, sigmas)


@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_stochastic_samplers_draw_from_the_data_distribution(sampler: Sampler):
    """With many samples, the output's mean and spread are the data's (Euler a, first order, needs more steps)."""
    batch, steps = 4000, 160 if sampler is sample_euler_ancestral else 40
    gen = torch.Generator().manual_seed(3)
    x = MU + math.sqrt(S**2 + SIGMA_MAX**2) * torch.randn((batch, 1), generator=gen, dtype=torch.float64)
    out = sampler(
        gaussian_denoiser, x, with_zero(karras_sigmas(steps, sigma_min=0.01)), noise=seeded_noise(4, (batch, 1))
    )
    assert float(out.mean()) == pytest.approx(MU, abs=4 * S / math.sqrt(batch))
    assert float(out.std()) == pytest.approx(S, rel=0.06)


def test_churn_uses_noise_and_records_sigma_hat():
    x, sigmas = start(), with_zero(karras_sigmas(8))
    steps: list[Step] = []
    out = sample_euler(gaussian_denoiser, x, sigmas, s_churn=1.0, noise=seeded_noise(5, (4, 1)), callback=steps.append)
    plain = sample_euler(gaussian_denoiser, x, sigmas)
    assert not torch.allclose(out, plain)
    assert [s.i for s in steps] == list(range(8))
    assert all(float(s.sigma_hat) > float(s.sigma) for s in steps)
    with pytest.raises(NoiseRequiredError):
        sample_heun(gaussian_denoiser, x, sigmas, s_churn=1.0)
    # churn limited to a sigma range leaves the other steps alone
    steps.clear()
    sample_dpm_2(
        gaussian_denoiser, x, sigmas, s_churn=1.0, s_tmax=1.0, noise=seeded_noise(5, (4, 1)), callback=steps.append
    )
    assert all((float(s.sigma_hat) > float(s.sigma)) == (float(s.sigma) <= 1.0) for s in steps)


def test_no_churn_draws_no_noise():
    # without churn no step uses the churn noise: none is drawn (with churn limited to a range, every step draws,
    # as k-diffusion does, so that the steps in range get the same numbers)
    x, sigmas = start(), with_zero(karras_sigmas(8))
    draws: list[int] = []
    base = seeded_noise(5, (4, 1))

    def counted(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        draws.append(1)
        return base(sigma, sigma_next)

    for sampler in (sample_euler, sample_heun, sample_dpm_2):
        draws.clear()
        assert torch.equal(sampler(gaussian_denoiser, x, sigmas, noise=counted), sampler(gaussian_denoiser, x, sigmas))
        assert not draws
        sampler(gaussian_denoiser, x, sigmas, s_churn=1.0, s_tmax=1.0, noise=counted)
        assert len(draws) == 8


def test_every_sampler_of_a1111s_table_has_its_function_and_options():
    """modules.samplers is the one table of A1111's samplers: each entry finds its function here, and the options
    A1111 passes are recorded as sd_samplers_kdiffusion / timesteps list them."""
    from modules import samplers
    from modules.generation.passes import sampler_function

    assert len(samplers.SAMPLERS) == len({s.name for s in samplers.SAMPLERS}) == 20
    for spec in samplers.SAMPLERS:
        assert callable(sampler_function(spec)), spec.name
    find = samplers.find
    assert (find("Euler a").takes_eta, find("Euler a").extra) == (True, frozenset())
    assert find("Euler").extra == {"s_churn", "s_tmin", "s_tmax", "s_noise"} and not find("Euler").takes_eta
    assert find("DPM++ 2M").extra == frozenset() and find("DPM++ 2M").scheduler == "karras"
    assert find("DPM2").discard_penultimate and find("DPM++ 3M SDE").brownian_noise
    assert find("DPM fast").extra == {"s_noise"} and find("DPM adaptive").extra == frozenset()
    restart = find("Restart")
    assert (restart.extra, restart.scheduler, restart.second_order, restart.uses_ensd) == (frozenset(), "karras",
                                                                                           True, False)
    assert find("ddim_cfgpp").takes_eta and find("DDIM").takes_eta and not find("UniPC").takes_eta
    assert find("DDIM").eta_key == "Eta DDIM" and find("Euler a").eta_key == "Eta"
    with pytest.raises(KeyError):
        find("Nope")

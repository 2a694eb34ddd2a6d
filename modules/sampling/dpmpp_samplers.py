"""The DPM-Solver++ samplers of A1111's list (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models"), in sigma space, with the signature of :mod:`modules.sampling.k_samplers`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from modules.sampling.k_common import (
    Denoiser,
    NoiseSampler,
    StepCallback,
    _add_noise,
    _denoise,
    _lambda,
    _prepare_noise,
    _report,
    ancestral_step,
    to_d,
)


def _dpmpp_2s_step(model: Denoiser, x: Tensor, denoised: Tensor, sigma: Tensor, sigma_to: Tensor) -> Tensor:
    """One DPM-Solver++(2S) step with r = 1/2 (Lu et al. 2022b, Algorithm 1): a first-order step to the midpoint in
    log sigma, then the full first-order step with the x0 estimate found there."""
    t, t_next = _lambda(sigma), _lambda(sigma_to)
    h = t_next - t
    s = t + h / 2
    sigma_s = s.neg().exp()
    x_2 = (sigma_s / sigma) * x - (-h / 2).expm1() * denoised
    denoised_2 = _denoise(model, x_2, sigma_s)
    return (sigma_to / sigma) * x - (-h).expm1() * denoised_2


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """Ancestral sampling with DPM-Solver++(2S) steps (Lu et al. 2022b) down to sigma_down, then fresh noise up to
    sigma_next; the step to sigma_down = 0 is an Euler step. A1111's "DPM++ 2S a"."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(model, x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        _report(callback, i, x, sigma, sigma, denoised)
        if float(sigma_down) == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            x = _dpmpp_2s_step(model, x, denoised, sigma, sigma_down)
        if float(sigma_next) > 0:
            x = _add_noise(x, noise, sigma, sigma_next, sigma_up * s_noise)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """DPM-Solver++(2M), the second-order multistep solver in data prediction (Lu et al. 2022b, Algorithm 2); the
    first step and the step to sigma = 0 are first order. A1111's "DPM++ 2M"."""
    old: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(model, x, sigma)
        _report(callback, i, x, sigma, sigma, denoised)
        h = _lambda(sigma_next) - _lambda(sigma)
        target = denoised
        if old is not None and float(sigma_next) != 0:
            r = (_lambda(sigma) - _lambda(sigmas[i - 1])) / h
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        x = (sigma_next / sigma) * x - (-h).expm1() * target
        old = denoised
    return x


def _midpoint(sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """The sigma halfway from ``sigma`` to ``sigma_next`` in log-SNR (DPM++ SDE's second stage, r = 1/2)."""
    return (_lambda(sigma) + (_lambda(sigma_next) - _lambda(sigma)) / 2).neg().exp()


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """Stochastic DPM-Solver++ with two stages per step (r = 1/2): each stage is an ancestral first-order
    DPM-Solver++ step (Lu et al. 2022b) whose noise comes from ``noise`` over that stage's interval; A1111 passes a
    Brownian-tree noise sampler so that both stages see one Brownian path. The step to sigma = 0 is an Euler step.
    A1111's "DPM++ SDE"."""
    steps = [(sigmas[i], sigmas[i + 1]) for i in range(len(sigmas) - 1)]
    _prepare_noise(noise, [*sigmas, *(_midpoint(a, b) for a, b in steps if float(b) != 0)])
    for i, (sigma, sigma_next) in enumerate(steps):
        denoised = _denoise(model, x, sigma)
        _report(callback, i, x, sigma, sigma, denoised)
        if float(sigma_next) == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
            continue
        sigma_s = _midpoint(sigma, sigma_next)
        down, up = ancestral_step(sigma, sigma_s, eta)
        x_2 = (down / sigma) * x - (down / sigma - 1) * denoised
        x_2 = _add_noise(x_2, noise, sigma, sigma_s, up * s_noise)
        denoised_2 = _denoise(model, x_2, sigma_s)
        down, up = ancestral_step(sigma, sigma_next, eta)
        x = (down / sigma) * x - (down / sigma - 1) * denoised_2
        x = _add_noise(x, noise, sigma, sigma_next, up * s_noise)
    return x


def _dpmpp_2m_sde(
    model: Denoiser, x: Tensor, sigmas: Tensor, callback: StepCallback | None, noise: NoiseSampler | None,
    s_noise: float, eta: float, heun: bool,
) -> Tensor:  # fmt: skip
    if eta:
        _prepare_noise(noise, sigmas)
    old: Tensor | None = None
    h_last = sigmas.new_zeros([])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(model, x, sigma)
        _report(callback, i, x, sigma, sigma, denoised)
        if float(sigma_next) == 0:
            x = denoised
            continue
        h = _lambda(sigma_next) - _lambda(sigma)
        eta_h = eta * h
        phi_1 = (-h - eta_h).expm1().neg()
        x = sigma_next / sigma * (-eta_h).exp() * x + phi_1 * denoised
        if old is not None:
            weight = phi_1 / (-h - eta_h) + 1 if heun else 0.5 * phi_1
            x = x + weight * (h / h_last) * (denoised - old)
        if eta:
            x = _add_noise(x, noise, sigma, sigma_next, sigma_next * (-2 * eta_h).expm1().neg().sqrt() * s_noise)
        old, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, the second-order multistep solver of the data-prediction SDE, section
    4 and appendix), midpoint form of the correction; eta = 0 is DPM-Solver++(2M). A1111's "DPM++ 2M SDE"."""
    return _dpmpp_2m_sde(model, x, sigmas, callback, noise, s_noise, eta, heun=False)


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """DPM-Solver++(2M) SDE (Lu et al. 2022b) with the Heun (trapezoidal) form of the second-order correction.
    A1111's "DPM++ 2M SDE Heun"."""
    return _dpmpp_2m_sde(model, x, sigmas, callback, noise, s_noise, eta, heun=True)


def _third_order(denoised: Tensor, hist: list[tuple[Tensor, Tensor]], h: Tensor, h_eta: Tensor) -> Tensor:
    """The multistep correction of DPM-Solver++(3M) (Lu et al. 2022b, appendix): divided differences of the last
    three x0 estimates, weighted by phi_2 and phi_3 of the step."""
    phi_2 = h_eta.neg().expm1() / h_eta + 1
    if len(hist) == 1:
        ((den_1, h_1),) = hist
        return phi_2 * (denoised - den_1) * (h / h_1)
    (den_1, h_1), (den_2, h_2) = hist
    r0, r1 = h_1 / h, h_2 / h
    d1_0 = (denoised - den_1) / r0
    d1_1 = (den_1 - den_2) / r1
    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_3 = phi_2 / h_eta - 0.5
    return phi_2 * d1 - phi_3 * d2


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """DPM-Solver++(3M) SDE: the third-order multistep data-prediction solver of Lu et al. (2022b) on the SDE with
    noise fraction eta (eta = 0 is the ODE); the first two steps use lower orders. A1111's "DPM++ 3M SDE"."""
    hist: list[tuple[Tensor, Tensor]] = []
    if eta:
        _prepare_noise(noise, sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(model, x, sigma)
        _report(callback, i, x, sigma, sigma, denoised)
        if float(sigma_next) == 0:
            x = denoised
            continue
        h = _lambda(sigma_next) - _lambda(sigma)
        h_eta = h * (eta + 1)
        x = h_eta.neg().exp() * x + h_eta.neg().expm1().neg() * denoised
        if hist:
            x = x + _third_order(denoised, hist, h, h_eta)
        if eta:
            x = _add_noise(x, noise, sigma, sigma_next, sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise)
        hist = [(denoised, h), *hist[:1]]
    return x

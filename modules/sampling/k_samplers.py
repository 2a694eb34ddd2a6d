"""A1111's k-diffusion samplers as small pure functions in sigma space.

Every sampler has the same signature: a denoiser ``model(x, sigma) -> x0 estimate`` (``sigma`` has one value per
batch item), the starting latent ``x`` (already scaled to ``sigmas[0]``), the sigma table (usually ending in 0),
and keyword options. Options a sampler does not use are ignored; :data:`modules.samplers.SAMPLERS` records which
options A1111 passes to each one, so that a caller passing only those gets A1111's image.

Noise never comes from a global generator: it comes from ``noise(sigma, sigma_next)``, which the caller seeds per
image. A sampler draws noise exactly where k-diffusion's does (so a per-image stream stays aligned with A1111's);
without a noise sampler, a draw whose scale is zero is skipped and any other draw is an error.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.polynomial import polynomial as npoly
from torch import Tensor

from modules.sampling.dpmpp_samplers import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from modules.sampling.k_common import (
    Denoiser,
    NoiseRequiredError,
    NoiseSampler,
    Sampler,
    Step,
    StepCallback,
    _add_noise,
    _churn,
    _denoise,
    _report,
    ancestral_step,
    to_d,
)

__all__ = [
    "Denoiser", "NoiseRequiredError", "NoiseSampler", "Sampler", "Step", "ancestral_step",
    "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_2m_sde_heun",
    "sample_dpmpp_2s_ancestral", "sample_dpmpp_3m_sde", "sample_dpmpp_sde", "sample_dpm_2",
    "sample_dpm_2_ancestral", "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_lms", "to_d",
]


@torch.no_grad()
def sample_euler(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """Euler steps on the probability-flow ODE with optional churn: Karras et al. (2022), "Elucidating the Design
    Space of Diffusion-Based Generative Models", Algorithm 2 without the second-order correction. A1111's "Euler"."""
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, (s_churn, s_tmin, s_tmax, s_noise))
        denoised = _denoise(model, x, sigma_hat)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """Ancestral sampling with Euler steps: an Euler step of the probability-flow ODE (Karras et al. 2022) down to
    sigma_down, then fresh noise up to sigma_next, as in DDPM's ancestral sampler (Ho et al. 2020). A1111's "Euler a"
    (A1111 passes it eta only)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(model, x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        _report(callback, i, x, sigma, sigma, denoised)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if float(sigma_next) > 0:
            x = _add_noise(x, noise, sigma, sigma_next, sigma_up * s_noise)
    return x


@torch.no_grad()
def sample_heun(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """Heun's second-order method with optional churn: Karras et al. (2022), Algorithm 2; the step to sigma = 0 is
    an Euler step. A1111's "Heun"."""
    for i in range(len(sigmas) - 1):
        sigma_next = sigmas[i + 1]
        x, sigma_hat = _churn(x, sigmas, i, noise, (s_churn, s_tmin, s_tmax, s_noise))
        denoised = _denoise(model, x, sigma_hat)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        d = to_d(x, sigma_hat, denoised)
        dt = sigma_next - sigma_hat
        if float(sigma_next) == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigma_next, _denoise(model, x_2, sigma_next))
        x = x + (d + d_2) / 2 * dt
    return x


def _dpm2_step(model: Denoiser, x: Tensor, d: Tensor, sigma: Tensor, sigma_to: Tensor) -> Tensor:
    """One DPM-Solver-2 step (Lu et al. 2022, Algorithm 4 with r = 1/2) in Karras et al.'s ODE form: an Euler step to
    the geometric mean of the two sigmas, then the full step with the derivative found there."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_mid = x + d * (sigma_mid - sigma)
    d_mid = to_d(x_mid, sigma_mid, _denoise(model, x_mid, sigma_mid))
    return x + d_mid * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """DPM-Solver-2 steps (Lu et al. 2022, "DPM-Solver", midpoint in log sigma) inside Karras et al. (2022)'s
    Algorithm 2 with optional churn; the step to sigma = 0 is an Euler step. A1111's "DPM2"."""
    for i in range(len(sigmas) - 1):
        sigma_next = sigmas[i + 1]
        x, sigma_hat = _churn(x, sigmas, i, noise, (s_churn, s_tmin, s_tmax, s_noise))
        denoised = _denoise(model, x, sigma_hat)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        d = to_d(x, sigma_hat, denoised)
        if float(sigma_next) == 0:
            x = x + d * (sigma_next - sigma_hat)
        else:
            x = _dpm2_step(model, x, d, sigma_hat, sigma_next)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """Ancestral sampling with DPM-Solver-2 steps (Lu et al. 2022) down to sigma_down, then fresh noise up to
    sigma_next (Ho et al. 2020). A1111's "DPM2 a"."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(model, x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        _report(callback, i, x, sigma, sigma, denoised)
        d = to_d(x, sigma, denoised)
        if float(sigma_down) == 0:
            x = x + d * (sigma_down - sigma)
        else:
            x = _dpm2_step(model, x, d, sigma, sigma_down)
            x = _add_noise(x, noise, sigma, sigma_next, sigma_up * s_noise)
    return x


# --- linear multistep ---------------------------------------------------------------------------------------------


def lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """The weight of the derivative at ``t[i - j]`` in a variable-step Adams-Bashforth step from ``t[i]`` to
    ``t[i + 1]``: the integral over that step of the Lagrange basis polynomial through ``t[i], ..., t[i - order + 1]``
    (Adams-Bashforth; Hairer, Norsett & Wanner, "Solving ODEs I", III.1). The polynomial is integrated exactly."""
    if order - 1 > i:
        raise ValueError(f"order {order} is too high for step {i}")
    others = [float(t[i - k]) for k in range(order) if k != j]
    node = float(t[i - j])
    basis = npoly.polyfromroots(others) / float(np.prod([node - o for o in others]))
    primitive = npoly.polyint(basis)
    return float(npoly.polyval(float(t[i + 1]), primitive) - npoly.polyval(float(t[i]), primitive))


@torch.no_grad()
def sample_lms(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """Linear multistep (variable-step Adams-Bashforth of order 4, lower for the first steps) on the probability-flow
    ODE of Karras et al. (2022), as in k-diffusion. A1111's "LMS"."""
    order = 4
    t = sigmas.detach().cpu().double().numpy()
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = _denoise(model, x, sigmas[i])
        ds = [*ds[-(order - 1) :], to_d(x, sigmas[i], denoised)]
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        cur = len(ds)
        x = x + sum(lms_coefficient(cur, t, i, j) * d for j, d in enumerate(reversed(ds)))
    return x

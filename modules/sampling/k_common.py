"""What A1111's k-diffusion samplers share: the denoiser and noise types, the per-step report, and the small
steps (derivative, ancestral split, churn, log-sigma) they are built from."""


from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Step:
    """What a sampler reports once per step, before moving on: the step index, the current latent, its sigma, the
    sigma after churn (``sigma_hat``, equal to ``sigma`` without churn) and the model's x0 estimate."""

    i: int
    x: Tensor
    sigma: Tensor
    sigma_hat: Tensor
    denoised: Tensor


StepCallback = Callable[[Step], None]


class Sampler(Protocol):
    """The uniform signature of every sampler in this module."""

    def __call__(
        self,
        model: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        callback: StepCallback | None = None,
        noise: NoiseSampler | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
        eta: float = 1.0,
    ) -> Tensor: ...


class NoiseRequiredError(ValueError):
    """A stochastic step was asked for without a noise sampler."""


# --- shared pieces ------------------------------------------------------------------------------------------------


def _denoise(model: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
    return model(x, sigma * x.new_ones([x.shape[0]]))


def _report(callback: StepCallback | None, i: int, x: Tensor, sigma: Tensor, sigma_hat: Tensor, den: Tensor) -> None:
    if callback is not None:
        callback(Step(i=i, x=x, sigma=sigma, sigma_hat=sigma_hat, denoised=den))


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def _prepare_noise(noise: NoiseSampler | None, points: Iterable[Tensor]) -> None:
    """Tell a noise sampler that can compute ahead (the Brownian tree's) where its queries will fall."""
    prepare = getattr(noise, "prepare", None)
    if prepare is not None:
        prepare(points)


def _add_noise(x: Tensor, noise: NoiseSampler | None, sigma: Tensor, sigma_next: Tensor, scale: Tensor) -> Tensor:
    if noise is None:
        if float(scale) == 0.0:
            return x
        raise NoiseRequiredError("this sampler needs a noise sampler for its stochastic steps")
    return x + noise(sigma, sigma_next) * scale


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step sigma_from -> sigma_to into a deterministic step down to ``sigma_down`` and fresh noise of std
    ``sigma_up``, with sigma_down^2 + sigma_up^2 = sigma_to^2; eta = 1 is DDPM's ancestral step (Ho et al. 2020),
    eta = 0 the deterministic one (Song et al. 2021, DDIM)."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    up = eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_up = torch.minimum(sigma_to, up)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _churn(
    x: Tensor, sigmas: Tensor, i: int, noise: NoiseSampler | None, churn: tuple[float, float, float, float]
) -> tuple[Tensor, Tensor]:
    """Karras et al. (2022), Algorithm 2, lines 4-6: raise the noise level from sigma to sigma_hat."""
    s_churn, s_tmin, s_tmax, s_noise = churn
    sigma = sigmas[i]
    if s_churn == 0.0:  # no step of this run raises its noise level (sigma * 1 is sigma): no draw would be used
        return x, sigma
    in_range = s_tmin <= float(sigma) <= s_tmax
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if in_range else 0.0
    sigma_hat = sigma * (gamma + 1)
    scale = (sigma_hat**2 - sigma**2) ** 0.5 * s_noise
    # k-diffusion draws this noise on every step, used or not (a step outside [s_tmin, s_tmax] multiplies it by
    # zero); drawing it here too keeps the stream aligned for the later steps that use it
    return _add_noise(x, noise, sigma, sigmas[i + 1], scale), sigma_hat


def _lambda(sigma: Tensor) -> Tensor:
    """DPM-Solver's time variable t = -log(sigma) (the half log-SNR, lambda, of Lu et al. 2022)."""
    return sigma.log().neg()


# --- Karras et al. (2022) -----------------------------------------------------------------------------------------

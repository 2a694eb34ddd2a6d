"""A1111's remaining k-diffusion-style samplers: "DPM fast", "DPM adaptive" and "Restart", as small pure functions
with the signature of :mod:`modules.sampling.k_samplers` plus a few keyword-only extras.

"DPM fast" and "DPM adaptive" are DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion
Probabilistic Model Sampling in Around 10 Steps") in its noise-prediction form over t = -log(sigma), from
``sigma_max`` down to ``sigma_min``; they end at ``sigma_min``, not at 0. Their time grid is computed in float32
(float64 when ``x`` is float64), as k-diffusion computes it for A1111's float32 latents. "Restart" is restart sampling
(Xu et al. 2023, "Restart Sampling for Improving Generative Processes") with Heun steps.

Noise comes only from the caller's ``noise(sigma, sigma_next)``, drawn exactly where k-diffusion draws it, used or
not, so that a per-image stream stays aligned; without a noise sampler a draw whose scale is zero is skipped and any
other draw is an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from modules.sampling.k_common import (
    Denoiser,
    NoiseRequiredError,
    NoiseSampler,
    StepCallback,
    _denoise,
    _report,
    ancestral_step,
    to_d,
)
from modules.sampling.schedules import karras

__all__ = [
    "AdaptiveInfo",
    "RestartList",
    "dpm_fast_orders",
    "restart_plan",
    "sample_dpm_adaptive",
    "sample_dpm_adaptive_with_info",
    "sample_dpm_fast",
    "sample_restart",
]

# {sigma to restart at: (points of the restart segment's Karras schedule, repeats, sigma to restart up to)}
RestartList = Mapping[float, tuple[int, int, float]]


# --- DPM-Solver pieces (Lu et al. 2022) ---------------------------------------------------------------------------


def _time_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _sigma_of(t: Tensor) -> Tensor:
    return t.neg().exp()


def _t_of(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _eps(model: Denoiser, x: Tensor, t: Tensor) -> Tensor:
    """The noise prediction eps = (x - D(x, sigma)) / sigma at time t."""
    return (x - _denoise(model, x, _sigma_of(t))) / _sigma_of(t)


def _dpm_solver_1(x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor) -> Tensor:
    """DPM-Solver-1 (Lu et al. 2022; the same step as DDIM): exact when eps is constant along the path."""
    h = t_next - t
    return x - _sigma_of(t_next) * h.expm1() * eps


def _dpm_solver_2(
    model: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor, r1: float = 0.5
) -> tuple[Tensor, Tensor]:
    """DPM-Solver-2 (Lu et al. 2022) with one intermediate time t + r1 h. Returns the step and the
    intermediate eps (a DPM-Solver-3 step with the same r1 reuses it)."""
    h = t_next - t
    s1 = t + r1 * h
    u1 = x - _sigma_of(s1) * (r1 * h).expm1() * eps
    eps_1 = _eps(model, u1, s1)
    x_next = x - _sigma_of(t_next) * h.expm1() * eps - _sigma_of(t_next) / (2 * r1) * h.expm1() * (eps_1 - eps)
    return x_next, eps_1


def _dpm_solver_3(
    model: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor, eps_1: Tensor | None = None
) -> Tensor:
    """DPM-Solver-3 (Lu et al. 2022) with r1 = 1/3, r2 = 2/3; ``eps_1`` is the eps at t + h/3 if known."""
    r1, r2 = 1 / 3, 2 / 3
    h = t_next - t
    s1, s2 = t + r1 * h, t + r2 * h
    if eps_1 is None:
        eps_1 = _eps(model, x - _sigma_of(s1) * (r1 * h).expm1() * eps, s1)
    u2 = (
        x
        - _sigma_of(s2) * (r2 * h).expm1() * eps
        - _sigma_of(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_1 - eps)
    )
    eps_2 = _eps(model, u2, s2)
    return x - _sigma_of(t_next) * h.expm1() * eps - _sigma_of(t_next) / r2 * (h.expm1() / h - 1) * (eps_2 - eps)


def _dpm_solver_step(model: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor, order: int) -> Tensor:
    if order == 1:
        return _dpm_solver_1(x, t, t_next, eps)
    if order == 2:
        return _dpm_solver_2(model, x, t, t_next, eps)[0]
    return _dpm_solver_3(model, x, t, t_next, eps)


def _ancestral_target(t: Tensor, t_next: Tensor, t_end: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """The time the deterministic part of an ancestral step t -> t_next goes to (no later than t_end), and the
    noise std that brings it back to sigma(t_next)."""
    down, _ = ancestral_step(_sigma_of(t), _sigma_of(t_next), eta)
    t_to = torch.minimum(t_end, _t_of(down))
    return t_to, (_sigma_of(t_next) ** 2 - _sigma_of(t_to) ** 2) ** 0.5


def _renoise(x: Tensor, noise: NoiseSampler | None, sigma: Tensor, sigma_next: Tensor, scale: Tensor | float) -> Tensor:
    if noise is None:
        if float(scale) == 0.0:
            return x
        raise NoiseRequiredError("this sampler needs a noise sampler for its stochastic steps")
    return x + scale * noise(sigma, sigma_next)


def _time_range(
    sigmas: Tensor, sigma_min: float | Tensor | None, sigma_max: float | Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """t_start = -log(sigma_max) and t_end = -log(sigma_min) on the CPU; by default the range of ``sigmas`` (its
    first entry, and its last nonzero one when it ends in 0), as A1111 passes it for img2img."""
    if sigma_min is None:
        sigma_min = sigmas[-2] if len(sigmas) > 1 and float(sigmas[-1]) == 0 else sigmas[-1]
    if sigma_max is None:
        sigma_max = sigmas[0]
    low = torch.as_tensor(sigma_min, dtype=dtype, device="cpu")
    high = torch.as_tensor(sigma_max, dtype=dtype, device="cpu")
    if float(low) <= 0 or float(high) <= 0:
        raise ValueError("sigma_min and sigma_max must be positive")
    return _t_of(high), _t_of(low)


# --- DPM fast -----------------------------------------------------------------------------------------------------


def dpm_fast_orders(n: int) -> list[int]:
    """The solver orders of DPM-Solver-fast for ``n`` model calls (Lu et al. 2022): third-order steps,
    then one step of order n mod 3, or a second- and a first-order step when 3 divides n. They sum to n."""
    if n < 1:
        raise ValueError("DPM fast needs at least one model call")
    steps = n // 3 + 1
    if n % 3 == 0:
        return [3] * (steps - 2) + [2, 1]
    return [3] * (steps - 1) + [n % 3]


@torch.no_grad()
def sample_dpm_fast(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0, sigma_min: float | Tensor | None = None,
    sigma_max: float | Tensor | None = None, n: int | None = None,
) -> Tensor:  # fmt: skip
    """DPM-Solver-fast (Lu et al. 2022): ``n`` model calls (default ``len(sigmas) - 1``) spread over
    steps of orders :func:`dpm_fast_orders`, evenly spaced in t = -log(sigma) from ``sigma_max`` to ``sigma_min``
    (default: the range of ``sigmas``, as A1111 passes it for img2img; for txt2img A1111 passes the model's sigma
    range and n = steps). Returns x at ``sigma_min``. A1111's "DPM fast".

    With eta > 0 each step is ancestral: the solver step goes down to the sigma_down of Ho et al.'s split (never
    past sigma_min) and noise brings it back to the step's sigma. One ``noise(sigma, sigma_next)`` call per step,
    whatever eta (the last step's noise has scale 0). ``callback`` sees each step's start: x, its sigma, the
    denoised estimate there."""
    dtype = _time_dtype(x)
    t_start, t_end = _time_range(sigmas, sigma_min, sigma_max, dtype)
    if eta and not t_end > t_start:
        raise ValueError("eta must be 0 unless sigma_min is below sigma_max")
    orders = dpm_fast_orders(len(sigmas) - 1 if n is None else n)
    ts = torch.linspace(float(t_start), float(t_end), len(orders) + 1, dtype=dtype, device=x.device)
    t_last = t_end.to(x.device)
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_to, up = _ancestral_target(t, t_next, t_last, eta) if eta else (t_next, None)
        eps = _eps(model, x, t)
        denoised = x - _sigma_of(t) * eps
        _report(callback, i, x, _sigma_of(t), _sigma_of(t), denoised)
        x = _dpm_solver_step(model, x, t, t_to, eps, order)
        x = _renoise(x, noise, _sigma_of(t), _sigma_of(t_next), 0.0 if up is None else up * s_noise)
    return x


# --- DPM adaptive -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptiveInfo:
    """What an adaptive run did: attempted steps, model calls, accepted and rejected steps."""

    steps: int
    nfe: int
    n_accept: int
    n_reject: int


class _StepSizeController:
    """PID step-size control on the inverse error (Söderlind 2003, "Digital filters in adaptive time-stepping"),
    with the limiter 1 + atan(f - 1) (Söderlind & Wang 2006); a step is accepted when the limited factor reaches
    ``accept_safety``, and the next step size is the current one times that factor either way."""

    def __init__(
        self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float
    ) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.inverse_errors: list[float] = []

    def propose(self, error: float) -> bool:
        inverse = 1 / (error + 1e-8)
        if not self.inverse_errors:
            self.inverse_errors = [inverse] * 3
        self.inverse_errors[0] = inverse
        e0, e1, e2 = self.inverse_errors
        factor = 1 + math.atan(e0**self.b1 * e1**self.b2 * e2**self.b3 - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.inverse_errors = [e0, e0, e1]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive_with_info(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0, sigma_min: float | Tensor | None = None,
    sigma_max: float | Tensor | None = None, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
    h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81,
) -> tuple[Tensor, AdaptiveInfo]:  # fmt: skip
    """Adaptive DPM-Solver-23 (``order`` 3) or -12 (``order`` 2) (Lu et al. 2022: a step of order ``order``
    with the embedded lower-order step as error estimate) from ``sigma_max`` to ``sigma_min`` (defaults as
    in :func:`sample_dpm_fast`); returns x at ``sigma_min`` and what the run did. A1111's "DPM adaptive".

    The error is the RMS over the whole batch of (x_low - x_high) / max(atol, rtol * max(|x_low|, |x_prev|)), x_prev
    the last accepted x_low; it drives :class:`_StepSizeController` (order 1.5 with eta > 0). With eta > 0 accepted
    steps are ancestral as in :func:`sample_dpm_fast`. One ``noise(sigma, sigma_next)`` call per accepted step,
    whatever eta. ``callback`` runs after each attempt, with i = attempt index, x and its sigma after the attempt,
    and the denoised estimate at the attempt's start."""
    if order not in (2, 3):
        raise ValueError("order must be 2 or 3")
    t_start, t_end = _time_range(sigmas, sigma_min, sigma_max, _time_dtype(x))
    forward = bool(t_end > t_start)
    if eta and not forward:
        raise ValueError("eta must be 0 unless sigma_min is below sigma_max")
    pid = _StepSizeController(
        abs(h_init) * (1 if forward else -1), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety
    )
    atol_t, rtol_t = torch.tensor(atol, dtype=torch.float32), torch.tensor(rtol, dtype=torch.float32)
    s, x_prev = t_start, x
    steps = accepted = 0
    while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        t_to, up = _ancestral_target(s, t, t_end, eta) if eta else (t, None)
        eps = _eps(model, x, s)
        denoised = x - _sigma_of(s) * eps
        if order == 2:
            x_low = _dpm_solver_1(x, s, t_to, eps)
            x_high, _ = _dpm_solver_2(model, x, s, t_to, eps)
        else:
            x_low, eps_1 = _dpm_solver_2(model, x, s, t_to, eps, r1=1 / 3)
            x_high = _dpm_solver_3(model, x, s, t_to, eps, eps_1)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose(float(error)):
            x_prev = x_low
            x = _renoise(x_high, noise, _sigma_of(s), _sigma_of(t), 0.0 if up is None else up * s_noise)
            s = t
            accepted += 1
        steps += 1
        _report(callback, steps - 1, x, _sigma_of(s), _sigma_of(s), denoised)
    return x, AdaptiveInfo(steps=steps, nfe=steps * order, n_accept=accepted, n_reject=steps - accepted)


@torch.no_grad()
def sample_dpm_adaptive(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0, sigma_min: float | Tensor | None = None,
    sigma_max: float | Tensor | None = None, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
    h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81,
) -> Tensor:  # fmt: skip
    """:func:`sample_dpm_adaptive_with_info` without the info. A1111's "DPM adaptive"."""
    x, _ = sample_dpm_adaptive_with_info(
        model, x, sigmas, callback=callback, noise=noise, s_noise=s_noise, eta=eta, sigma_min=sigma_min,
        sigma_max=sigma_max, order=order, rtol=rtol, atol=atol, h_init=h_init, pcoeff=pcoeff, icoeff=icoeff,
        dcoeff=dcoeff, accept_safety=accept_safety,
    )  # fmt: skip
    return x


# --- Restart (Xu et al. 2023) -------------------------------------------------------------------------------------


def _nearest(sigmas: Tensor, value: float) -> int:
    """The index of the entry nearest ``value`` (the first one on a tie)."""
    return int((sigmas - value).abs().argmin(dim=0))


def restart_plan(sigmas: Tensor, restart_list: RestartList | None = None) -> list[tuple[Tensor, Tensor]]:
    """The (sigma, sigma_next) pairs Restart steps through, as A1111 builds them.

    Without ``restart_list``: under 20 steps, ``sigmas`` as given and no restarts; from 20 steps, the schedule is
    rebuilt as a Karras schedule (rho 7, float32) over sigmas[-2]..sigmas[0] with fewer steps, and restarts are made
    at the entry nearest 0.1, up to the entry nearest 2: once with 9 steps (20-35 steps), or twice with steps // 4
    steps (36 and more), so that the total stays ``len(sigmas) - 1``. With ``restart_list`` (see ``RestartList``),
    ``sigmas`` is used as given. A restart from entry i up to entry j < i appends, after the step that reaches
    entry i, ``repeats`` copies of a Karras schedule (of that many points, without its 0) from sigmas[j] down to
    sigmas[i]."""
    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            segment, repeats = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = karras(steps - segment * repeats, float(sigmas[-2]), float(sigmas[0])).to(sigmas.device)
            restart_list = {0.1: (segment + 1, repeats, 2.0)}
    at = {_nearest(sigmas, key): value for key, value in restart_list.items()}
    plan: list[tuple[Tensor, Tensor]] = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in at:
            continue
        points, repeats, restart_max = at[i + 1]
        top = _nearest(sigmas, restart_max)
        if top < i + 1:
            segment_sigmas = karras(points, float(sigmas[i + 1]), float(sigmas[top])).to(sigmas.device)[:-1]
            plan.extend(list(zip(segment_sigmas[:-1], segment_sigmas[1:], strict=True)) * max(repeats, 0))
    return plan


def _heun_step(
    model: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, i: int, callback: StepCallback | None
) -> Tensor:
    denoised = _denoise(model, x, sigma)
    d = to_d(x, sigma, denoised)
    _report(callback, i, x, sigma, sigma, denoised)
    dt = sigma_next - sigma
    if float(sigma_next) == 0:
        return x + d * dt
    x_2 = x + d * dt
    d_2 = to_d(x_2, sigma_next, _denoise(model, x_2, sigma_next))
    return x + (d + d_2) / 2 * dt


@torch.no_grad()
def sample_restart(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0, restart_list: RestartList | None = None,
) -> Tensor:  # fmt: skip
    """Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes"): Heun steps of the
    probability-flow ODE (Karras et al. 2022; Euler for the step to 0) through :func:`restart_plan`; wherever the
    plan goes back up from sigma_low to sigma_high, x gets noise of std s_noise * sqrt(sigma_high^2 - sigma_low^2),
    drawn as ``noise(sigma_low, sigma_high)``. Under 20 steps and without ``restart_list`` this is Heun without
    churn. ``callback`` sees every step of the plan (i counts them). A1111's "Restart" (A1111 passes no options)."""
    last: Tensor | None = None
    for i, (sigma, sigma_next) in enumerate(restart_plan(sigmas, restart_list)):
        if last is not None and last < sigma:
            if noise is None:
                raise NoiseRequiredError("Restart needs a noise sampler for its restart segments")
            x = x + noise(last, sigma) * s_noise * (sigma**2 - last**2) ** 0.5
        x = _heun_step(model, x, sigma, sigma_next, i, callback)
        last = sigma_next
    return x

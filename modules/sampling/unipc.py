"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models")
in its multistep, data-prediction form, over the discrete-time VP schedule of DPM-Solver (Lu et al. 2022), as A1111
runs it for its "UniPC" sampler.

The model is a noise predictor ``model(x, t) -> eps`` called with continuous model times ``t`` (one per batch item;
not integers: ``t = 1000 * (t_continuous - 1 / N)``); the solver turns eps into x0. All schedule arithmetic runs
in the table's precision (float32 for SD tables) on ``x``'s device, in the order A1111 computes it. Latents are
(B, C, H, W).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from modules.sampling.k_common import Step, StepCallback

EpsModel = Callable[[Tensor, Tensor], Tensor]
VARIANTS = ("bh1", "bh2", "vary_coeff")
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


def _interp(x: Tensor, xp: Tensor, yp: Tensor) -> Tensor:
    """Piecewise-linear y(x) through the points (xp, yp), xp ascending, continued linearly beyond both ends."""
    seg = (xp < x[..., None]).sum(-1).sub(1).clamp(0, xp.shape[0] - 2)
    x0, x1, y0, y1 = xp[seg], xp[seg + 1], yp[seg], yp[seg + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def _col(v: Tensor, x: Tensor) -> Tensor:
    return v.view(-1, *([1] * (x.dim() - 1)))


def _alpha(log_alpha: Tensor) -> Tensor:
    return torch.exp(log_alpha)


def _std(log_alpha: Tensor) -> Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * log_alpha))


def _lambda(log_alpha: Tensor) -> Tensor:
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


@dataclass(frozen=True)
class DiscreteVPSchedule:
    """DPM-Solver's discrete VP schedule: table entry n sits at continuous time t_n = (n + 1) / N, and
    log alpha_t = log(abar) / 2 is linear in t between entries (and beyond the ends)."""

    t_array: Tensor
    log_alpha_array: Tensor

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor, device: torch.device | None = None) -> DiscreteVPSchedule:
        """The log is taken where the table lies (A1111 keeps it on the model's device); times are built on the CPU
        in float32 (float64 for a float64 table)."""
        log_alphas = 0.5 * torch.log(alphas_cumprod)
        n = int(alphas_cumprod.shape[0])
        time_dtype = torch.promote_types(alphas_cumprod.dtype, torch.float32)
        t_array = torch.linspace(0.0, 1.0, n + 1, dtype=time_dtype)[1:]
        device = device or alphas_cumprod.device
        return cls(t_array.to(device), log_alphas.to(device))

    @property
    def total_n(self) -> int:
        return int(self.t_array.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.t_array.dtype

    def log_alpha(self, t: Tensor) -> Tensor:
        return _interp(t, self.t_array, self.log_alpha_array)

    def alpha(self, t: Tensor) -> Tensor:
        return _alpha(self.log_alpha(t))

    def std(self, t: Tensor) -> Tensor:
        return _std(self.log_alpha(t))

    def lambda_(self, t: Tensor) -> Tensor:
        """The half log-SNR lambda_t = log(alpha_t / sigma_t)."""
        return _lambda(self.log_alpha(t))

    def inverse_lambda(self, lamb: Tensor) -> Tensor:
        log_alpha = -0.5 * torch.logaddexp(lamb.new_zeros((1,)), -2.0 * lamb)
        return _interp(log_alpha, self.log_alpha_array.flip(0), self.t_array.flip(0))

    def model_time(self, t: Tensor) -> Tensor:
        """The time the network is given for continuous time t: 1000 * (t - 1 / N), so t_n maps to n."""
        return (t - 1.0 / self.total_n) * 1000.0


def time_steps(schedule: DiscreteVPSchedule, skip_type: str, t_start: float | Tensor, t_end: float, n: int) -> Tensor:
    """n + 1 continuous times from t_start down to t_end: uniform in t, in sqrt(t), or in lambda ("logSNR"). A
    tensor t_start (0-d) is used as such, where it lies (its square root is taken there)."""
    dtype, device = schedule.dtype, schedule.t_array.device
    if skip_type == "time_uniform":
        return torch.linspace(t_start, t_end, n + 1, dtype=dtype).to(device)
    if skip_type == "time_quadratic":
        return torch.linspace(t_start ** (1.0 / 2), t_end ** (1.0 / 2), n + 1, dtype=dtype).pow(2).to(device)
    if skip_type == "logSNR":
        lam_start = schedule.lambda_(torch.as_tensor(t_start, dtype=dtype).to(device)).item()
        lam_end = schedule.lambda_(torch.as_tensor(t_end, dtype=dtype).to(device)).item()
        return schedule.inverse_lambda(torch.linspace(lam_start, lam_end, n + 1, dtype=dtype).to(device))
    raise ValueError(f"unknown UniPC skip type {skip_type!r}; expected one of {SKIP_TYPES}")


class _Memo:
    """The schedule's values at the run's times, each computed once: a step asks for the same few times again and
    again (its own and its history's), and each look-up searches the whole table. Keyed by the time tensor itself,
    which the run keeps in its history (the same computations, so the same numbers)."""

    def __init__(self, schedule: DiscreteVPSchedule) -> None:
        self.schedule = schedule
        self.values: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}

    def _get(self, name: str, t: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
        hit = self.values.get((name, id(t)))
        if hit is not None and hit[0] is t:
            return hit[1]
        if len(self.values) > 64:  # only the last few steps' times come back
            self.values.clear()
        value = compute(t)
        self.values[(name, id(t))] = (t, value)
        return value

    def log_alpha(self, t: Tensor) -> Tensor:
        return self._get("log_alpha", t, self.schedule.log_alpha)

    def alpha(self, t: Tensor) -> Tensor:
        return self._get("alpha", t, lambda t: _alpha(self.log_alpha(t)))

    def std(self, t: Tensor) -> Tensor:
        return self._get("std", t, lambda t: _std(self.log_alpha(t)))

    def lambda_(self, t: Tensor) -> Tensor:
        return self._get("lambda", t, lambda t: _lambda(self.log_alpha(t)))

    def model_time(self, t: Tensor) -> Tensor:
        return self.schedule.model_time(t)


class _Solver:
    """One UniPC run: the schedule, the eps model turned into a data predictor, and the variant."""

    def __init__(self, model: EpsModel, schedule: DiscreteVPSchedule, variant: str) -> None:
        self.model, self.schedule, self.variant = model, schedule, variant
        self.ns = _Memo(schedule)

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        eps = self.model(x, self.ns.model_time(t))
        return (x - _col(self.ns.std(t), x) * eps) / _col(self.ns.alpha(t), x)

    def update(
        self, x: Tensor, x0s: list[Tensor], ts: list[Tensor], t: Tensor, order: int, corrector: bool
    ) -> tuple[Tensor, Tensor | None]:
        if self.variant == "vary_coeff":
            return self._vary_update(x, x0s, ts, t, order, corrector)
        return self._bh_update(x, x0s, ts, t, order, corrector)

    def _bh_update(
        self, x: Tensor, x0s: list[Tensor], ts: list[Tensor], t: Tensor, order: int, corrector: bool
    ) -> tuple[Tensor, Tensor | None]:
        """UniP-p / UniC-p with B(h) = h (bh1) or e^h - 1 (bh2): Zhao et al. (2023), Algorithms 2 and 3."""
        ns = self.ns
        lam_prev = ns.lambda_(ts[-1])
        x0_prev = x0s[-1]
        sigma_prev, sigma_t = ns.std(ts[-1]), ns.std(t)
        alpha_t = torch.exp(ns.log_alpha(t))
        h = ns.lambda_(t) - lam_prev
        rks: list[Tensor] = []
        d1s: list[Tensor] = []
        for i in range(1, order):
            rk = ((ns.lambda_(ts[-(i + 1)]) - lam_prev) / h)[0]
            rks.append(rk)
            d1s.append((x0s[-(i + 1)] - x0_prev) / rk)
        rks.append(torch.ones_like(h[0]))
        r = torch.stack(rks)
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows: list[Tensor] = []
        bs: list[Tensor] = []
        factorial = 1
        for i in range(1, order + 1):
            rows.append(torch.pow(r, i - 1))
            bs.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        big_r, b = torch.stack(rows), torch.stack(bs)
        half = torch.tensor([0.5], dtype=b.dtype, device=b.device)

        x_lin = _col(sigma_t / sigma_prev, x) * x - _col(alpha_t * h_phi_1, x) * x0_prev
        d1 = torch.stack(d1s, dim=1) if d1s else None
        x_t = x_lin
        if d1 is not None:
            rhos_p = half if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b[:-1])
            x_t = x_lin - _col(alpha_t * b_h, x) * torch.einsum("k,bkchw->bchw", rhos_p, d1)
        if not corrector:
            return x_t, None
        rhos_c = half if order == 1 else torch.linalg.solve(big_r, b)
        x0_t = self.x0(x_t, t)
        d1_t = x0_t - x0_prev
        corr = rhos_c[-1] * d1_t
        if d1 is not None:
            corr = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1) + corr
        return x_lin - _col(alpha_t * b_h, x) * corr, x0_t

    def _vary_update(
        self, x: Tensor, x0s: list[Tensor], ts: list[Tensor], t: Tensor, order: int, corrector: bool
    ) -> tuple[Tensor, Tensor | None]:
        """UniPC with coefficients from the inverse of the Taylor matrix (Zhao et al. 2023, the "vary_coeff"
        solver). As in A1111 it supports a batch of one only; like A1111 its corrector's last term takes the
        coefficient from the last predictor row's column."""
        if x.shape[0] != 1:
            raise ValueError("the UniPC vary_coeff variant handles a batch of one image only")
        ns = self.ns
        lam_prev = ns.lambda_(ts[-1])
        x0_prev = x0s[-1]
        sigma_prev, sigma_t = ns.std(ts[-1]), ns.std(t)
        alpha_t = torch.exp(ns.log_alpha(t))
        h = ns.lambda_(t) - lam_prev
        rks: list[Tensor] = []
        d1s: list[Tensor] = []
        for i in range(1, order):
            rk = (ns.lambda_(ts[-(i + 1)]) - lam_prev) / h
            rks.append(rk[0])
            d1s.append((x0s[-(i + 1)] - x0_prev) / _col(rk, x))
        rks.append(torch.ones_like(h[0]))
        r = torch.stack(rks)
        k_len = len(rks)
        cols: list[Tensor] = []
        col = torch.ones_like(r)
        for k in range(1, k_len + 1):
            cols.append(col)
            col = col * r / (k + 1)
        c = torch.stack(cols, dim=1)
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_ks: list[Tensor] = []
        factorial = 1
        h_phi_k = h_phi_1
        for k in range(1, k_len + 2):
            h_phi_ks.append(h_phi_k)
            h_phi_k = h_phi_k / hh - 1 / factorial
            factorial *= k + 1

        x_lin = _col(sigma_t / sigma_prev, x) * x - _col(alpha_t * h_phi_1, x) * x0_prev
        x_t = x_lin
        d1 = torch.stack(d1s, dim=1) if d1s else None
        if d1 is not None:
            a_p = torch.linalg.inv(c[:-1, :-1])
            for k in range(k_len - 1):
                x_t = x_t - _col(alpha_t * h_phi_ks[k + 1], x) * torch.einsum("bkchw,k->bchw", d1, a_p[k])
        if not corrector:
            return x_t, None
        a_c = torch.linalg.inv(c)
        x0_t = self.x0(x_t, t)
        d1_t = x0_t - x0_prev
        x_t = x_lin
        last = 0
        for k in range(k_len - 1):
            assert d1 is not None
            x_t = x_t - _col(alpha_t * h_phi_ks[k + 1], x) * torch.einsum("bkchw,k->bchw", d1, a_c[k][:-1])
            last = k
        return x_t - _col(alpha_t * h_phi_ks[k_len], x) * (d1_t * a_c[last][-1]), x0_t


@torch.no_grad()
def unipc_sample(
    model: EpsModel,
    x: Tensor,
    schedule: DiscreteVPSchedule,
    steps: int,
    *,
    t_start: float | Tensor | None = None,
    t_end: float | None = None,
    order: int = 3,
    variant: str = "bh1",
    skip_type: str = "time_uniform",
    lower_order_final: bool = True,
    callback: StepCallback | None = None,
) -> Tensor:
    """Multistep UniPC from continuous time t_start (default 1) to t_end (default 1 / N) in ``steps`` steps with
    ``steps`` model calls: the first ``order - 1`` steps warm up with orders 1, 2, ...; every step but the last
    runs the corrector, whose model call is reused by the next step; with ``lower_order_final`` the last steps
    drop their order so that no step uses more history than remains. Returns x at t_end (not denoised further).

    ``callback`` gets, after each step, the new x and the data prediction the step computed (after the last step,
    which makes no model call, x itself)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniPC variant {variant!r}; expected one of {VARIANTS}")
    if steps < order:
        raise ValueError("UniPC order must be < sampling steps")
    t_0 = 1.0 / schedule.total_n if t_end is None else t_end
    t_T = 1.0 if t_start is None else t_start
    times = time_steps(schedule, skip_type, t_T, t_0, steps)
    solver = _Solver(model, schedule, variant)
    batch = x.shape[0]
    zero = x.new_zeros(())

    def report(i: int, x_new: Tensor, x0: Tensor | None) -> None:
        if callback is not None:
            callback(Step(i=i, x=x_new, sigma=zero, sigma_hat=zero, denoised=x_new if x0 is None else x0))

    vec_t = times[0].expand(batch)
    x0s = [solver.x0(x, vec_t)]
    ts = [vec_t]
    for init_order in range(1, order):
        vec_t = times[init_order].expand(batch)
        x, x0 = solver.update(x, x0s, ts, vec_t, init_order, True)
        assert x0 is not None
        report(init_order - 1, x, x0)
        x0s.append(x0)
        ts.append(vec_t)
    for step in range(order, steps + 1):
        vec_t = times[step].expand(batch)
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, x0 = solver.update(x, x0s, ts, vec_t, step_order, step != steps)
        report(step - 1, x, x0)
        x0s = [*x0s[1:], x0s[-1]]
        ts = [*ts[1:], vec_t]
        if x0 is not None:
            x0s[-1] = x0
    return x

"""A1111's schedule types in sigma space: the model's sigma table and the sigma lists the samplers step through.

A model trained on discrete timesteps 0..T-1 with cumulative signal fractions `alphas_cumprod` (abar) has the
noise levels sigma_t = sqrt((1 - abar_t) / abar_t), ascending in t. Eps- and v-prediction models share this table;
only the denoiser's output scalings differ. Continuous timesteps map to sigmas by linear interpolation of log-sigma
between neighbouring table entries, and back by the inverse of that map.

Every schedule returns a float32 CPU tensor, decreasing, with the values A1111 1.10.1 computes in the same
floating-point order. Most have n + 1 entries and end in 0; the exceptions are A1111's own: KL Optimal ends at
sigma_min instead of 0, and DDIM gives len(table) // (len(table) // n) + 1 entries when n does not divide the table.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from scipy import stats

AUTOMATIC = "Automatic"
# The abar given to the last timestep by the zero-terminal-SNR rescale, so that its sigma (about 4518.8) is finite.
ZERO_SNR_LAST_ABAR = 4.8973451890853435e-08
# Align Your Steps' optimised 10-step sigma lists (NVIDIA, 2024), by model family.
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


class UnknownScheduleError(ValueError):
    """A schedule type name that is neither an A1111 label nor an internal name."""


def scaled_linear_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000
) -> torch.Tensor:
    """The abar table of SD 1.x, SD 2.x and SDXL: betas linear in sqrt between the bounds, products in float64,
    stored as float32 (as the CompVis and SGM models hold it). A new tensor each call (made once per bounds)."""
    return _scaled_linear_alphas_cumprod(float(beta_start), float(beta_end), int(steps)).clone()


@functools.lru_cache(maxsize=8)
def _scaled_linear_alphas_cumprod(beta_start: float, beta_end: float, steps: int) -> torch.Tensor:
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    abar = np.cumprod(1.0 - betas.numpy(), axis=0)
    return torch.from_numpy(abar).to(torch.float32)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A1111's "Zero Terminal SNR" noise schedule (Lin et al., 2023, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed"): with s = sqrt(abar), s' = (s - s_last) * s_first / (s_first - s_last), so that s'_first =
    s_first and s'_last = 0; abar' = s'^2, except that the last entry is set to ZERO_SNR_LAST_ABAR instead of 0."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    rescaled = (root - last) * (first / (first - last))
    abar = rescaled**2
    abar[-1] = ZERO_SNR_LAST_ABAR
    return abar


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t), ascending with t, in the dtype of the table."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


@dataclass(frozen=True)
class SigmaTable:
    """A model's discrete noise levels (ascending) and the map between sigmas and continuous timesteps."""

    sigmas: torch.Tensor
    log_sigmas: torch.Tensor

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor) -> SigmaTable:
        return cls(sigmas, sigmas.log())

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor, zero_terminal_snr: bool = False) -> SigmaTable:
        abar = rescale_zero_terminal_snr(alphas_cumprod) if zero_terminal_snr else alphas_cumprod
        return cls.from_sigmas(sigmas_from_alphas_cumprod(abar))

    def __len__(self) -> int:
        return int(self.sigmas.shape[0])

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0].item())

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1].item())

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at continuous timesteps: log-sigma interpolated linearly between the two nearest table entries."""
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool = False) -> torch.Tensor:
        """The continuous timestep whose interpolated sigma is `sigma` (clamped to the table's range), or with
        `quantize` the index of the nearest table entry in log-sigma."""
        log_sigma = sigma.log()
        if quantize:
            return (log_sigma - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)
        # table entries at or below each sigma (the table ascends)
        table = self.log_sigmas if self.log_sigmas.dtype == log_sigma.dtype else self.log_sigmas.to(log_sigma.dtype)
        below = torch.searchsorted(table, log_sigma.reshape(-1), right=True)
        low = (below - 1).clamp(min=0, max=len(self) - 2)
        high = low + 1
        log_low, log_high = self.log_sigmas[low], self.log_sigmas[high]
        w = ((log_low - log_sigma) / (log_low - log_high)).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)


    @functools.cached_property
    def _log_sigmas_float32(self) -> tuple[list[float], npt.NDArray[np.float32]] | None:
        """The log-sigma table as Python floats (for bisection: float32 values compare exactly as doubles) and as
        float32 numbers; None unless it is a float32 table of at least two entries."""
        table = self.log_sigmas
        if table.dtype != torch.float32 or len(table) < 2:
            return None
        values = table.detach().cpu().numpy()
        return values.tolist(), values

    def sigma_to_t_float32(self, log_sigma: float) -> float | None:
        """``sigma_to_t`` of one float32 sigma, given its float32 logarithm as torch computes it: the same float32
        operations on numpy scalars (a few microseconds instead of a dozen tensor operations), the same value to the
        bit. None when the table is not float32 (the tensor method then)."""
        tables = self._log_sigmas_float32
        if tables is None:
            return None
        floats, table = tables
        log_value = np.float32(log_sigma)
        low = min(max(bisect.bisect_right(floats, float(log_value)) - 1, 0), len(floats) - 2)
        log_low, log_high = table[low], table[low + 1]
        w = min(max((log_low - log_value) / (log_low - log_high), np.float32(0.0)), np.float32(1.0))
        return float((np.float32(1.0) - w) * np.float32(low) + w * np.float32(low + 1))


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _from_floats(values: list[float]) -> torch.Tensor:
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def uniform(n: int, table: SigmaTable) -> torch.Tensor:
    """n timesteps evenly spaced from the last to the first of the table (A1111 "Uniform", and "Automatic" for
    samplers without a preferred schedule)."""
    t = torch.linspace(len(table) - 1, 0, n, device=table.sigmas.device)
    return _append_zero(table.t_to_sigma(t)).cpu()


def _timestep_range(table: SigmaTable, sigma_min: float, sigma_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    start = table.sigma_to_t(torch.tensor(sigma_max, device=table.sigmas.device))
    end = table.sigma_to_t(torch.tensor(sigma_min, device=table.sigmas.device))
    return start, end


def normal(n: int, sigma_min: float, sigma_max: float, table: SigmaTable) -> torch.Tensor:
    """n timesteps evenly spaced from sigma_max's to sigma_min's (equal to Uniform for the table's own range)."""
    start, end = _timestep_range(table, sigma_min, sigma_max)
    return _append_zero(table.t_to_sigma(torch.linspace(start, end, n))).cpu()


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, table: SigmaTable) -> torch.Tensor:
    """The first n of n + 1 timesteps evenly spaced from sigma_max's to sigma_min's, then 0 (SGM's spacing)."""
    start, end = _timestep_range(table, sigma_min, sigma_max)
    return _append_zero(table.t_to_sigma(torch.linspace(start, end, n + 1)[:-1])).cpu()


def simple(n: int, table: SigmaTable) -> torch.Tensor:
    """Every (len / n)-th table entry from the top, the stride a float truncated at each step."""
    stride = len(table) / n
    return _from_floats([float(table.sigmas[-(1 + int(i * stride))]) for i in range(n)])


def ddim_uniform(n: int, table: SigmaTable) -> torch.Tensor:
    """Table entries 1, 1 + k, 1 + 2k, ... with k = len // n, highest first (A1111 "DDIM"). Gives more than n
    sigmas when n does not divide the table's length, as A1111 does."""
    stride = max(len(table) // n, 1)
    picked = [float(table.sigmas[i]) for i in range(1, len(table), stride)]
    return _from_floats(picked[::-1])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: sigma_i^(1/rho) evenly spaced from sigma_max^(1/rho) to sigma_min^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _append_zero((top + ramp * (bottom - top)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """log-sigma evenly spaced from log(sigma_max) to log(sigma_min)."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """log-sigma = log(sigma_min) + r^rho * (log(sigma_max) - log(sigma_min)), r evenly spaced from 1 to 0."""
    ramp = torch.linspace(1, 0, n) ** rho
    log_min = math.log(sigma_min)
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - log_min) + log_min))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """arctan(sigma) evenly spaced from arctan(sigma_max) to arctan(sigma_min) over n + 1 points (Sabour et al.,
    2024). As in A1111 the list ends at sigma_min, not 0."""
    top, bottom = torch.arctan(torch.tensor(sigma_max)), torch.arctan(torch.tensor(sigma_min))
    frac = torch.arange(n + 1) / n
    return torch.tan(frac * bottom + (1.0 - frac) * top)


def _loglinear(values: tuple[float, ...], count: int) -> list[float]:
    """Resample a decreasing list to `count` points, linear in log over an even grid on [0, 1]."""
    grid = np.linspace(0, 1, len(values))
    logs = np.log(np.asarray(values[::-1]))
    return [float(v) for v in np.exp(np.interp(np.linspace(0, 1, count), grid, logs))[::-1]]


def align_your_steps(n: int, sdxl: bool = False) -> torch.Tensor:
    """NVIDIA's Align Your Steps lists (SDXL's or, for every other family, SD 1.5's), resampled to n points by
    log-linear interpolation when n is not 11. The model's range and overrides do not apply."""
    table = AYS_SDXL if sdxl else AYS_SD15
    values = list(table) if n == len(table) else _loglinear(table, n)
    return _from_floats(values)


def beta(n: int, sigma_min: float, sigma_max: float, dist_alpha: float = 0.6, dist_beta: float = 0.6) -> torch.Tensor:
    """Lee et al. (2024), "Beta Sampling is All You Need": sigma = sigma_min + q * (sigma_max - sigma_min) with q the
    Beta(dist_alpha, dist_beta) quantiles of n points evenly spaced from 1 to 0."""
    levels = 1 - np.linspace(0, 1, n)
    quantiles = [float(stats.beta.ppf(x, dist_alpha, dist_beta)) for x in levels]
    return _from_floats([sigma_min + q * (sigma_max - sigma_min) for q in quantiles])


@dataclass(frozen=True)
class ScheduleArgs:
    """Everything a schedule type may read; each reads only its own part."""

    n: int
    sigma_min: float
    sigma_max: float
    table: SigmaTable | None = None
    rho: float | None = None
    beta_alpha: float = 0.6
    beta_beta: float = 0.6
    sdxl: bool = False

    def need_table(self) -> SigmaTable:
        if self.table is None:
            raise ValueError("this schedule type needs the model's sigma table")
        return self.table


@dataclass(frozen=True)
class ScheduleType:
    """One of A1111's schedule types: internal name, UI/infotext label, builder, and what it needs."""

    name: str
    label: str
    build: Callable[[ScheduleArgs], torch.Tensor]
    default_rho: float | None = None
    needs_table: bool = False
    aliases: tuple[str, ...] = ()


def _rho(a: ScheduleArgs, default: float) -> float:
    return default if a.rho is None else a.rho


SCHEDULE_TYPES: tuple[ScheduleType, ...] = (
    ScheduleType("uniform", "Uniform", lambda a: uniform(a.n, a.need_table()), needs_table=True),
    ScheduleType("karras", "Karras", lambda a: karras(a.n, a.sigma_min, a.sigma_max, _rho(a, 7.0)), default_rho=7.0),
    ScheduleType("exponential", "Exponential", lambda a: exponential(a.n, a.sigma_min, a.sigma_max)),
    ScheduleType(
        "polyexponential",
        "Polyexponential",
        lambda a: polyexponential(a.n, a.sigma_min, a.sigma_max, _rho(a, 1.0)),
        default_rho=1.0,
    ),
    ScheduleType(
        "sgm_uniform",
        "SGM Uniform",
        lambda a: sgm_uniform(a.n, a.sigma_min, a.sigma_max, a.need_table()),
        needs_table=True,
        aliases=("SGMUniform",),
    ),
    ScheduleType("kl_optimal", "KL Optimal", lambda a: kl_optimal(a.n, a.sigma_min, a.sigma_max)),
    ScheduleType("align_your_steps", "Align Your Steps", lambda a: align_your_steps(a.n, a.sdxl)),
    ScheduleType("simple", "Simple", lambda a: simple(a.n, a.need_table()), needs_table=True),
    ScheduleType("normal", "Normal", lambda a: normal(a.n, a.sigma_min, a.sigma_max, a.need_table()), needs_table=True),
    ScheduleType("ddim", "DDIM", lambda a: ddim_uniform(a.n, a.need_table()), needs_table=True),
    ScheduleType(
        "beta",
        "Beta",
        lambda a: beta(a.n, a.sigma_min, a.sigma_max, a.beta_alpha, a.beta_beta),
        needs_table=True,
    ),
)


def schedule_labels() -> list[str]:
    """The labels of A1111's "Schedule type" menu, "Automatic" first."""
    return [AUTOMATIC, *(s.label for s in SCHEDULE_TYPES)]


def find_schedule(name: str) -> ScheduleType:
    """A schedule type by A1111 label, internal name or alias. "Automatic" is not one: see resolve_schedule_name."""
    for schedule in SCHEDULE_TYPES:
        if name in (schedule.name, schedule.label, *schedule.aliases):
            return schedule
    raise UnknownScheduleError(f"unknown schedule type: {name!r}")


def resolve_schedule_name(name: str | None, sampler_default: str | None) -> str:
    """A1111's "Automatic" rule: an empty name or "Automatic" means the sampler's preferred schedule, and a sampler
    without one steps through the model's table uniformly."""
    if name and name != AUTOMATIC:
        return name
    return sampler_default or "uniform"


@dataclass(frozen=True)
class ScheduleOptions:
    """A1111's schedule settings; 0 means "the default" for sigma_min, sigma_max and rho."""

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    beta_alpha: float = 0.6
    beta_beta: float = 0.6
    old_karras_range: bool = False  # the range (0.1, 10) instead of the model's
    discard_penultimate: bool = False  # the sampler's own flag or "Always discard next-to-last sigma"


def schedule_args(
    schedule: ScheduleType, steps: int, table: SigmaTable, options: ScheduleOptions, sdxl: bool = False
) -> ScheduleArgs:
    """The arguments A1111 passes: the model's range (or the old Karras one), each override that is set and differs
    from the model's value (rho: from the schedule's default), and one more step when the penultimate is dropped.
    A caller records the overrides that differ from the table here as "Schedule min/max sigma" and "Schedule rho"."""
    model_min, model_max = table.sigma_min, table.sigma_max
    low, high = (0.1, 10.0) if options.old_karras_range else (model_min, model_max)
    if options.sigma_min != 0 and options.sigma_min != model_min:
        low = options.sigma_min
    if options.sigma_max != 0 and options.sigma_max != model_max:
        high = options.sigma_max
    rho = None
    if schedule.default_rho is not None and options.rho != 0 and options.rho != schedule.default_rho:
        rho = options.rho
    n = steps + 1 if options.discard_penultimate else steps
    return ScheduleArgs(n, low, high, table, rho, options.beta_alpha, options.beta_beta, sdxl)


def discard_penultimate(sigmas: torch.Tensor) -> torch.Tensor:
    """Drop the next-to-last sigma (DPM2, DPM2 a, DPM++ 3M SDE, or A1111's "always" setting)."""
    return torch.cat([sigmas[:-2], sigmas[-1:]])


def build_sigmas(
    name: str, steps: int, table: SigmaTable, options: ScheduleOptions | None = None, sdxl: bool = False
) -> torch.Tensor:
    """The sigmas A1111 samples `steps` steps through for a schedule type (already resolved from "Automatic")."""
    options = options or ScheduleOptions()
    schedule = find_schedule(name)
    sigmas = schedule.build(schedule_args(schedule, steps, table, options, sdxl))
    return discard_penultimate(sigmas) if options.discard_penultimate else sigmas

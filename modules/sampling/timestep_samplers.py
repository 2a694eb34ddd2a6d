"""A1111's timestep samplers ("DDIM", "DDIM CFG++", "PLMS", "UniPC") and its "LCM" sampler, as small pure functions.

The timestep samplers work in the VP form x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps on the model's discrete
timesteps. Their model is ``model(x, t) -> eps``: the guided noise prediction at timesteps ``t`` (a float tensor, one
value per batch item; integer-valued except for UniPC). The starting latent is the unscaled noise (txt2img) or the
noised init latent from :func:`noise_init_latent` (img2img). Each sampler reports every step to ``callback`` as a
:class:`~modules.sampling.k_common.Step` after the update (new x, the step's x0 estimate, sigma = sigma_hat = 0).

Noise comes only from a caller-given ``noise() -> Tensor`` (one standard-normal draw shaped like x, per-image
seeded), called where A1111 draws: DDIM draws once per step even at eta = 0, where the draw is multiplied by 0.

LCM (Luo et al. 2023, "Latent Consistency Models") is a sigma-space sampler with the signature of
:mod:`modules.sampling.k_samplers`, over the denoiser :func:`lcm_denoise`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from modules.sampling.k_common import (
    Denoiser,
    NoiseRequiredError,
    NoiseSampler,
    Step,
    StepCallback,
    _add_noise,
    _denoise,
    _report,
)
from modules.sampling.schedules import SigmaTable
from modules.sampling.unipc import SKIP_TYPES, VARIANTS, DiscreteVPSchedule, EpsModel, unipc_sample

__all__ = [
    "CFGPP_SCALE_MULTIPLIER",
    "ETA_DDIM_DEFAULT",
    "LCM_ORIGINAL_STEPS",
    "SKIP_TYPES",
    "VARIANTS",
    "EpsModel",
    "TimestepNoise",
    "eps_from_v",
    "img2img_steps",
    "img2img_timesteps",
    "lcm_alphas_cumprod",
    "lcm_denoise",
    "lcm_scalings",
    "lcm_sigma_table",
    "lcm_sigma_to_t",
    "lcm_sigmas",
    "lcm_t_to_sigma",
    "noise_init_latent",
    "pred_x0_from_eps",
    "sample_ddim",
    "sample_ddim_cfgpp",
    "sample_lcm",
    "sample_plms",
    "sample_unipc",
    "timesteps",
]

TimestepNoise = Callable[[], Tensor]

ETA_DDIM_DEFAULT = 0.0  # A1111's option "eta_ddim", infotext "Eta DDIM", written only when eta differs from it
CFGPP_SCALE_MULTIPLIER = 1 / 12.5  # DDIM CFG++ multiplies the CFG scale by this inside the CFG combination
NUM_TRAIN_TIMESTEPS = 1000
LCM_ORIGINAL_STEPS = 50


# --- timesteps and img2img ----------------------------------------------------------------------------------------


def timesteps(steps: int, *, discard_penultimate: bool = False) -> Tensor:
    """The timesteps A1111's timestep samplers run through for ``steps`` steps, ascending (int64, CPU): 1, 1 + k,
    1 + 2k, ... below 1001 with k = 1000 // n, where n = steps, or steps + 1 when the next-to-last sigma is to be
    discarded (for these samplers that option only adds a step). There are ceil(1000 / k) of them, which is more
    than n when n does not divide 1000. The range is 1000 whatever the table's length, as in A1111."""
    n = steps + 1 if discard_penultimate else steps
    if not 1 <= n <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"steps must be between 1 and {NUM_TRAIN_TIMESTEPS}, got {steps}")
    return torch.clip(torch.arange(0, NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS // n) + 1, 0, NUM_TRAIN_TIMESTEPS - 1)


def img2img_steps(steps: int, denoising_strength: float, fix_steps: bool = False) -> tuple[int, int]:
    """A1111's img2img step split: (steps to build the schedule for, t_enc). Normally the schedule is built for
    ``steps`` and t_enc = int(min(strength, 0.999) * steps); with ``fix_steps`` (the "img2img_fix_steps" option,
    and always for the hires-fix pass) it is built for int(steps / min(strength, 0.999)) (0 at strength 0) and
    t_enc = steps - 1."""
    strength = min(denoising_strength, 0.999)
    if fix_steps:
        return (int(steps / strength) if denoising_strength > 0 else 0), steps - 1
    return steps, int(strength * steps)


def img2img_timesteps(
    steps: int, denoising_strength: float, *, fix_steps: bool = False, discard_penultimate: bool = False
) -> tuple[Tensor, int]:
    """(the timesteps the sampler runs through, the timestep the init latent is noised to) for img2img, as A1111
    does: the first t_enc timesteps of :func:`timesteps` for the split's step count, and the next one. The sampler
    thus starts one timestep below the noise level of its input (DDIM and PLMS at timesteps[t_enc - 1], UniPC at the
    continuous time of that entry)."""
    total, t_enc = img2img_steps(steps, denoising_strength, fix_steps)
    ts = timesteps(total, discard_penultimate=discard_penultimate)
    return ts[:t_enc], int(ts[t_enc])


def noise_init_latent(x0: Tensor, noise: Tensor, alphas_cumprod: Tensor, t: int, extra_noise: float = 0.0) -> Tensor:
    """The img2img start for the timestep samplers: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with ``noise`` the
    image's first draw (the txt2img starting noise), then, for A1111's "img2img_extra_noise" option, plus
    extra_noise * sqrt(abar_t) * noise (the same draw)."""
    abar = alphas_cumprod[t]
    sqrt_abar = torch.sqrt(abar)
    xi = x0 * sqrt_abar + noise * torch.sqrt(1 - abar)
    if extra_noise > 0:
        xi = xi + noise * extra_noise * sqrt_abar
    return xi


# --- model parameterisation helpers -------------------------------------------------------------------------------


def eps_from_v(alphas_cumprod: Tensor, x: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """Noise from a v-prediction (Salimans & Ho 2022): eps = sqrt(abar) v + sqrt(1 - abar) x, abar looked up at the
    timesteps truncated to integers (as A1111 does, also for UniPC's fractional timesteps)."""
    idx = t.to(torch.int)
    return _col(torch.sqrt(alphas_cumprod)[idx], x) * v + _col(torch.sqrt(1 - alphas_cumprod)[idx], x) * x


def pred_x0_from_eps(alphas_cumprod: Tensor, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) at integer-truncated timesteps: the estimate A1111 shows as the
    live preview and returns on interruption for the timestep samplers."""
    a_t = _col(alphas_cumprod[t.to(dtype=torch.int64)], x)
    return (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def _col(v: Tensor, x: Tensor) -> Tensor:
    return v.view(-1, *([1] * (x.dim() - 1)))


def _per_image(value: float, x: Tensor) -> Tensor:
    """A Python number as a (B, 1, ..., 1) tensor of x's dtype, which is how A1111 applies per-step scalars."""
    return value * x.new_ones((x.shape[0],) + (1,) * (x.dim() - 1))


# --- DDIM and PLMS ------------------------------------------------------------------------------------------------


def _ddim_tables(ts: Tensor, alphas_cumprod: Tensor, eta: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """abar at each timestep, abar at the previous one (float64), sqrt(1 - abar), and DDIM's sigma (float64, Song et
    al. 2021, eq. 16): eta * sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)), where, as in A1111,
    1 / (1 - abar) is rounded to the table's precision before the rest is computed in float64."""
    ts = ts.to(alphas_cumprod.device)
    alphas = alphas_cumprod[ts]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(ts[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus = torch.sqrt(1 - alphas)
    a, a_prev = alphas.cpu(), alphas_prev.cpu()
    sigmas = eta * torch.sqrt((1 - a).reciprocal() * (1 - a_prev) * (1 - a / a_prev))
    return alphas, alphas_prev, sqrt_one_minus, sigmas


def _ddim(
    model: EpsModel, x: Tensor, ts: Tensor, alphas_cumprod: Tensor, eta: float, noise: TimestepNoise | None,
    callback: StepCallback | None, uncond_eps: Callable[[], Tensor] | None,
) -> Tensor:  # fmt: skip
    alphas, alphas_prev, sqrt_one_minus, sigmas = _ddim_tables(ts, alphas_cumprod, eta)
    s_in = x.new_ones((x.shape[0],))
    zero = x.new_zeros(())
    for i in range(len(ts) - 1):
        index = len(ts) - 1 - i
        e_t = model(x, ts[index].item() * s_in)
        direction = e_t if uncond_eps is None else uncond_eps()
        a_t = _per_image(alphas[index].item(), x)
        a_prev = _per_image(alphas_prev[index].item(), x)
        sigma_t = _per_image(sigmas[index].item(), x)
        sqrt_one_minus_at = _per_image(sqrt_one_minus[index].item(), x)
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * direction
        x = a_prev.sqrt() * pred_x0 + dir_xt
        if noise is not None:
            x = x + sigma_t * noise()
        elif sigmas[index].item() != 0.0:
            raise NoiseRequiredError("DDIM with eta > 0 needs a noise source")
        if callback is not None:
            callback(Step(i=i, x=x, sigma=zero, sigma_hat=zero, denoised=pred_x0))
    return x


@torch.no_grad()
def sample_ddim(
    model: EpsModel, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, *, eta: float = ETA_DDIM_DEFAULT,
    noise: TimestepNoise | None = None, callback: StepCallback | None = None,
) -> Tensor:  # fmt: skip
    """DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12) through ``timesteps`` (ascending, from
    :func:`timesteps`), highest first, A1111's "DDIM". It makes len(timesteps) - 1 model calls and stops at the
    first timestep's noise level (abar at timestep 1 for txt2img), not at 0, as A1111 does. ``noise`` is called
    once per step (after the model call), also at eta = 0; it may be None only when eta = 0."""
    return _ddim(model, x, timesteps, alphas_cumprod, eta, noise, callback, None)


@torch.no_grad()
def sample_ddim_cfgpp(
    model: EpsModel, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, uncond_eps: Callable[[], Tensor], *,
    eta: float = ETA_DDIM_DEFAULT, noise: TimestepNoise | None = None, callback: StepCallback | None = None,
) -> Tensor:  # fmt: skip
    """DDIM with CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion
    Models"): x0 from the guided eps, but the step back to the next noise level along the unconditional eps,
    ``uncond_eps()``, read right after each model call (the unconditional eps of that call). A1111's "DDIM CFG++";
    its CFG wrapper must also scale the CFG scale by CFGPP_SCALE_MULTIPLIER (1 / 12.5). Otherwise as
    :func:`sample_ddim`."""
    return _ddim(model, x, timesteps, alphas_cumprod, eta, noise, callback, uncond_eps)


@torch.no_grad()
def sample_plms(
    model: EpsModel, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, *, callback: StepCallback | None = None
) -> Tensor:
    """Pseudo linear multistep (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"):
    DDIM's transfer with eps from Adams-Bashforth combinations of past eps (orders 2, 3, 4), the first step a
    pseudo improved Euler step (one extra model call). A1111's "PLMS": len(timesteps) model calls for
    len(timesteps) - 1 steps, ending at the first timestep's noise level."""
    alphas, alphas_prev, sqrt_one_minus, _ = _ddim_tables(timesteps, alphas_cumprod, 0.0)
    s_in = x.new_ones((x.shape[0],))
    zero = x.new_zeros(())
    old_eps: list[Tensor] = []

    def transfer(x: Tensor, e_t: Tensor, index: int) -> tuple[Tensor, Tensor]:
        a_t = _per_image(alphas[index].item(), x)
        a_prev = _per_image(alphas_prev[index].item(), x)
        sqrt_one_minus_at = _per_image(sqrt_one_minus[index].item(), x)
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in)
        if not old_eps:
            x_prev, _ = transfer(x, e_t, index)
            e_t_next = model(x_prev, timesteps[max(index - 1, 0)].item() * s_in)
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, pred_x0 = transfer(x, e_t_prime, index)
        old_eps = [*old_eps[-2:], e_t]
        if callback is not None:
            callback(Step(i=i, x=x, sigma=zero, sigma_hat=zero, denoised=pred_x0))
    return x


# --- UniPC --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_unipc(
    model: EpsModel, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, *, is_img2img: bool = False,
    variant: str = "bh1", skip_type: str = "time_uniform", order: int = 3, lower_order_final: bool = True,
    callback: StepCallback | None = None,
) -> Tensor:  # fmt: skip
    """A1111's "UniPC": multistep UniPC (see :mod:`modules.sampling.unipc`) with predict-x0, over the discrete VP
    schedule of ``alphas_cumprod`` (keep it where the model keeps it: the schedule's logs are taken there), in
    len(timesteps) steps and model calls. Only the count of ``timesteps`` matters for txt2img, which runs from
    continuous time 1 to 1 / N (table entry 0). For img2img it starts at continuous time timesteps[-1] / 1000 +
    1 / 1000 (float32, computed where ``timesteps`` lies: A1111 keeps them on the model's device), the entry of the
    last timestep given. The defaults are A1111's option defaults
    (uni_pc_variant, uni_pc_skip_type, uni_pc_order, uni_pc_lower_order_final). With fewer steps than the order
    (where A1111 stops with an error) the order drops to the step count; with no step ``x`` comes back."""
    if len(timesteps) == 0:
        return x
    order = min(order, len(timesteps))
    schedule = DiscreteVPSchedule.from_alphas_cumprod(alphas_cumprod, x.device)
    t_start = timesteps[-1] / 1000 + 1 / 1000 if is_img2img else None
    return unipc_sample(
        model, x, schedule, len(timesteps), t_start=t_start, order=order, variant=variant, skip_type=skip_type,
        lower_order_final=lower_order_final, callback=callback,
    )  # fmt: skip


# --- LCM ----------------------------------------------------------------------------------------------------------


def lcm_alphas_cumprod(alphas_cumprod: Tensor, original_steps: int = LCM_ORIGINAL_STEPS) -> Tensor:
    """The abar table of A1111's LCM denoiser: the model's entries at timesteps k - 1, 2k - 1, ..., 999 with
    k = 1000 // original_steps (entries 19, 39, ..., 999 for LCM's 50 original steps), as float32."""
    skip = NUM_TRAIN_TIMESTEPS // original_steps
    idx = torch.arange(skip - 1, NUM_TRAIN_TIMESTEPS, skip, device=alphas_cumprod.device)
    return alphas_cumprod[idx].to(torch.float32)


def lcm_sigma_table(alphas_cumprod: Tensor, original_steps: int = LCM_ORIGINAL_STEPS) -> SigmaTable:
    """The sigma table of A1111's LCM denoiser (ascending, ``original_steps`` entries). Its first and last entries
    are the sigma_min and sigma_max that schedule types get for "LCM"; schedule types that map sigmas to timesteps
    ("Automatic", "Uniform", "Normal", "SGM Uniform") need :func:`lcm_sigmas` instead."""
    return SigmaTable.from_alphas_cumprod(lcm_alphas_cumprod(alphas_cumprod, original_steps))


def _skip(table: SigmaTable) -> int:
    return NUM_TRAIN_TIMESTEPS // len(table)


def lcm_sigma_to_t(table: SigmaTable, sigma: Tensor) -> Tensor:
    """The model timestep (int64) of the table entry nearest to each sigma in log-sigma: index * k + k - 1."""
    skip = _skip(table)
    dists = sigma.log() - table.log_sigmas[:, None]
    return dists.abs().argmin(dim=0).view(sigma.shape) * skip + (skip - 1)


def lcm_t_to_sigma(table: SigmaTable, t: Tensor) -> Tensor:
    """Sigma at model timesteps: (t - (k - 1)) / k clamped to the table, log-sigma interpolated between entries."""
    skip = _skip(table)
    index = torch.clamp(((t - (skip - 1)) / skip).float(), min=0, max=len(table) - 1)
    return table.t_to_sigma(index)


def lcm_sigmas(
    n: int, table: SigmaTable, *, sigma_min: float | None = None, sigma_max: float | None = None, sgm: bool = False
) -> Tensor:
    """LCM's sigmas for "Automatic" and "Uniform" (and "Normal" with sgm=False, "SGM Uniform" with sgm=True): model
    timesteps evenly spaced from sigma_max's to sigma_min's (quantized to the table: 999 and 19 by default), mapped
    back by :func:`lcm_t_to_sigma`, then 0. Computed on the table's device (A1111 computes "Automatic" and
    "Uniform" on the model's device, "Normal" and "SGM Uniform" on the CPU); returned on the CPU."""
    device = table.sigmas.device
    top = table.sigmas[-1] if sigma_max is None else torch.tensor(sigma_max, device=device)
    bottom = table.sigmas[0] if sigma_min is None else torch.tensor(sigma_min, device=device)
    start, end = lcm_sigma_to_t(table, top), lcm_sigma_to_t(table, bottom)
    t = torch.linspace(int(start), int(end), n + 1 if sgm else n, device=device)[:n]
    sigmas = lcm_t_to_sigma(table, t)
    return torch.cat([sigmas, sigmas.new_zeros([1])]).cpu()


def lcm_scalings(t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> tuple[Tensor, Tensor]:
    """LCM's boundary-condition scalings (Luo et al. 2023, eq. 9; Song et al. 2023, "Consistency Models") at model
    timesteps t, with s = t * timestep_scaling: (c_skip, c_out) = (sigma_data^2 / (s^2 + sigma_data^2),
    s / sqrt(s^2 + sigma_data^2)), so that c_skip -> 1 and c_out -> 0 as t -> 0."""
    scaled = t * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def lcm_denoise(unet_eps: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: Tensor, table: SigmaTable) -> Tensor:
    """A1111's LCM denoiser in sigma space (x = x0 + sigma * eps): eps = unet_eps(x / sqrt(sigma^2 + 1), t) at the
    table's nearest model timestep t (int64), x0 = x - sigma * eps, and the result c_out(t) x0 + c_skip(t) x. As in
    A1111, c_skip multiplies the sigma-space x, and ``unet_eps`` is the network's raw output (A1111 does not convert
    v-predictions here). This is the inner model: guidance combines its outputs."""
    c_out = _col(-sigma, x)
    c_in = _col(1 / (sigma**2 + 1.0) ** 0.5, x)
    t = lcm_sigma_to_t(table, sigma)
    eps = unet_eps(x * c_in, t)
    x0 = x + eps * c_out
    c_skip, c_out_lcm = (_col(c, x) for c in lcm_scalings(t))
    return c_out_lcm * x0 + c_skip * x


@torch.no_grad()
def sample_lcm(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: StepCallback | None = None,
    noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0, eta: float = 1.0,
) -> Tensor:  # fmt: skip
    """Multistep consistency sampling (Luo et al. 2023, Algorithm 1; Song et al. 2023): jump to the denoiser's x0,
    then renoise to the next sigma with a fresh draw (none before sigma 0). A1111's "LCM" (no options)."""
    for i in range(len(sigmas) - 1):
        denoised = _denoise(model, x, sigmas[i])
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        x = denoised
        if float(sigmas[i + 1]) > 0:
            x = _add_noise(x, noise, sigmas[i], sigmas[i + 1], sigmas[i + 1])
    return x

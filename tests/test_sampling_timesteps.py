"""A1111's timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC) and LCM on closed-form problems.

The data is N(MU, S^2) per element, so the ideal noise predictor and the probability-flow ODE's solution are known
exactly: in x / sqrt(abar), x - MU scales with sqrt(S^2 + (1 - abar) / abar). The eps model reads abar at fractional
timesteps with log(abar) linear between table entries, which is the continuous schedule UniPC assumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from modules.sampling.k_common import NoiseRequiredError, Step
from modules.sampling.schedules import scaled_linear_alphas_cumprod
from modules.sampling.timestep_samplers import (
    CFGPP_SCALE_MULTIPLIER,
    eps_from_v,
    img2img_steps,
    img2img_timesteps,
    lcm_alphas_cumprod,
    lcm_denoise,
    lcm_scalings,
    lcm_sigma_table,
    lcm_sigma_to_t,
    lcm_sigmas,
    lcm_t_to_sigma,
    noise_init_latent,
    pred_x0_from_eps,
    sample_ddim,
    sample_ddim_cfgpp,
    sample_lcm,
    sample_plms,
    sample_unipc,
    timesteps,
)
from modules.sampling.unipc import DiscreteVPSchedule, unipc_sample

MU, S = 0.3, 0.5
AC32 = scaled_linear_alphas_cumprod()
AC = AC32.double()


def abar_at(ac: Tensor, t: Tensor) -> Tensor:
    """abar at (fractional) timesteps, log(abar) linear between table entries, in float64."""
    la = 0.5 * torch.log(ac.double())
    t = t.double()
    lo = t.floor().long().clamp(0, len(ac) - 2)
    w = t - lo
    return torch.exp(2 * ((1 - w) * la[lo] + w * la[lo + 1]))


def gauss_eps(ac: Tensor, x: Tensor, t: Tensor, mu: float = MU, s: float = S) -> Tensor:
    """The exact eps prediction E[eps | x_t] for data N(mu, s^2), x_t = sqrt(abar) x0 + sqrt(1 - abar) eps."""
    a = abar_at(ac, t).view(-1, *[1] * (x.dim() - 1))
    xd = x.double()
    x0 = mu + s * s * a.sqrt() / (a * s * s + 1 - a) * (xd - a.sqrt() * mu)
    return ((xd - a.sqrt() * x0) / (1 - a).sqrt()).to(x.dtype)


def model64(x: Tensor, t: Tensor) -> Tensor:
    return gauss_eps(AC, x, t)


def exact(x: Tensor, abar_from: float, abar_to: float) -> Tensor:
    """The probability-flow ODE solution from noise level abar_from to abar_to."""
    s_from, s_to = (1 - abar_from) / abar_from, (1 - abar_to) / abar_to
    y = x / math.sqrt(abar_from)
    return math.sqrt(abar_to) * (MU + (y - MU) * math.sqrt((S * S + s_to) / (S * S + s_from)))


def start(batch: int = 4) -> Tensor:
    return torch.linspace(-2.0, 2.0, batch, dtype=torch.float64).view(batch, 1, 1, 1)


def slope(ns: tuple[int, ...], errors: list[float]) -> float:
    return float(np.polyfit(np.log(ns), np.log(errors), 1)[0])


class Recorder:
    """An eps model that records the timesteps it is called with."""

    def __init__(self, model: Callable[[Tensor, Tensor], Tensor] = model64) -> None:
        self.model = model
        self.calls: list[Tensor] = []

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls.append(t.clone())
        return self.model(x, t)


class CountingNoise:
    def __init__(self, shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.shape, self.dtype, self.count = shape, dtype, 0

    def __call__(self) -> Tensor:
        self.count += 1
        return torch.randn(self.shape, generator=self.gen, dtype=self.dtype)


# --- timesteps and img2img ----------------------------------------------------------------------------------------


def test_timesteps_hand_checked() -> None:
    assert timesteps(20).tolist() == list(range(1, 1000, 50))
    assert timesteps(7).tolist() == [1, 143, 285, 427, 569, 711, 853, 995]  # stride 142: 8 timesteps for 7 steps
    assert timesteps(30).tolist() == list(range(1, 1000, 33))  # stride 33: 31 timesteps
    assert len(timesteps(30)) == 31
    assert timesteps(1).tolist() == [1]
    assert timesteps(19, discard_penultimate=True).tolist() == timesteps(20).tolist()
    assert timesteps(10).dtype == torch.int64
    top = timesteps(1000)
    assert top[-2:].tolist() == [999, 999]  # 1..1000, clipped to the table


@pytest.mark.parametrize("steps", [0, 1001])
def test_timesteps_rejects_out_of_range(steps: int) -> None:
    with pytest.raises(ValueError):
        timesteps(steps)


def test_img2img_steps() -> None:
    assert img2img_steps(20, 0.75) == (20, 15)
    assert img2img_steps(20, 1.0) == (20, 19)  # strength capped at 0.999
    assert img2img_steps(20, 0.75, fix_steps=True) == (26, 19)
    assert img2img_steps(20, 0.5, fix_steps=True) == (40, 19)
    assert img2img_steps(20, 0.0, fix_steps=True) == (0, 19)
    sched, t_noise = img2img_timesteps(20, 0.5)
    assert sched.tolist() == list(range(1, 452, 50))
    assert t_noise == 501
    sched, t_noise = img2img_timesteps(20, 0.5, fix_steps=True)
    assert sched.tolist() == list(range(1, 1000, 25))[:19]
    assert t_noise == 476


def test_noise_init_latent() -> None:
    x0 = torch.linspace(-1, 1, 8).view(2, 1, 2, 2)
    noise = torch.linspace(0.5, -0.7, 8).view(2, 1, 2, 2)
    a = float(AC32[501])
    xi = noise_init_latent(x0, noise, AC32, 501)
    torch.testing.assert_close(xi, math.sqrt(a) * x0 + math.sqrt(1 - a) * noise)
    extra = noise_init_latent(x0, noise, AC32, 501, extra_noise=0.2)
    torch.testing.assert_close(extra - xi, 0.2 * math.sqrt(a) * noise)


def test_eps_from_v_and_pred_x0() -> None:
    x0 = torch.linspace(-1, 1, 6, dtype=torch.float64).view(2, 3, 1, 1)
    eps = torch.linspace(0.9, -0.4, 6, dtype=torch.float64).view(2, 3, 1, 1)
    t = torch.tensor([10.0, 700.0], dtype=torch.float64)
    a = AC[t.long()].view(-1, 1, 1, 1)
    x = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(eps_from_v(AC, x, t, v), eps)
    torch.testing.assert_close(eps_from_v(AC, x, t + 0.9, v), eps)  # fractional timesteps truncate
    torch.testing.assert_close(pred_x0_from_eps(AC, x, eps, t), x0)


# --- DDIM, CFG++, PLMS --------------------------------------------------------------------------------------------


def test_ddim_and_plms_converge_on_a1111_timesteps() -> None:
    x = start()
    for sampler in (sample_ddim, sample_plms):
        errors = []
        for n in (10, 50, 250):
            ts = timesteps(n)
            out = sampler(model64, x, ts, AC)
            errors.append(float((out - exact(x, float(AC[ts[-1]]), float(AC[ts[0]]))).abs().max()))
        assert errors[0] > 4 * errors[1] > 16 * errors[2], errors
        assert errors[2] < 0.015


def interior_errors(sampler: Callable[..., Tensor], ns: tuple[int, ...]) -> list[float]:
    """Errors on evenly spaced timesteps 300..960, away from the ends of the table."""
    x = start()
    errors = []
    for n in ns:
        ts = torch.arange(300, 961, 660 // n)
        out = sampler(model64, x, ts, AC)
        errors.append(float((out - exact(x, float(AC[ts[-1]]), float(AC[ts[0]]))).abs().max()))
    return errors


def test_ddim_is_first_order() -> None:
    ns = (10, 20, 60, 220)
    assert -1.1 < slope(ns, interior_errors(sample_ddim, ns)) < -0.9


def test_plms_beats_ddim() -> None:
    ns = (10, 20, 60, 220)
    ddim, plms = interior_errors(sample_ddim, ns), interior_errors(sample_plms, ns)
    assert all(p < d / 20 for p, d in zip(plms, ddim, strict=True))
    assert slope(ns, plms) < -1.6


def test_ddim_calls_and_noise() -> None:
    ts = timesteps(10)
    x = start()
    model = Recorder()
    noise = CountingNoise(tuple(x.shape))
    steps: list[Step] = []
    out = sample_ddim(model, x, ts, AC, noise=noise, callback=steps.append)
    assert noise.count == len(ts) - 1  # drawn every step, also at eta = 0
    assert [float(c[0]) for c in model.calls] == [float(t) for t in ts.flip(0)[:-1]]
    assert all(c.dtype == x.dtype and c.shape == (4,) for c in model.calls)
    assert [s.i for s in steps] == list(range(len(ts) - 1))
    assert torch.equal(steps[-1].x, out)
    # at eta = 0 the draws are multiplied by 0: the same result without a noise source
    assert torch.equal(out, sample_ddim(model64, x, ts, AC))
    with pytest.raises(NoiseRequiredError):
        sample_ddim(model64, x, ts, AC, eta=0.5)
    a = sample_ddim(model64, x, ts, AC, eta=1.0, noise=CountingNoise(tuple(x.shape), seed=1))
    b = sample_ddim(model64, x, ts, AC, eta=1.0, noise=CountingNoise(tuple(x.shape), seed=2))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_eta_step_by_hand(eta: float) -> None:
    """One step from timestep 601 to 201 (Song et al. 2021, eqs. 12 and 16): x0 from eps, the direction scaled by
    sqrt(1 - a_prev - sigma^2), and sigma * noise with sigma = eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))."""
    x = start()
    pair = torch.tensor([201, 601])
    draw = torch.linspace(-1, 1, 4, dtype=torch.float64).view(4, 1, 1, 1)
    out = sample_ddim(model64, x, pair, AC, eta=eta, noise=lambda: draw)
    a, a_prev = float(AC[601]), float(AC[201])
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    eps = model64(x, torch.full((4,), 601.0))
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    want = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * draw
    torch.testing.assert_close(out, want)


def test_ddim_eta_one_samples_the_data_distribution() -> None:
    """From the exact law at the first timestep, DDIM at eta = 1 (DDPM's ancestral step) ends near the data's law at
    abar[1]: mean sqrt(a) MU and variance a S^2 + 1 - a (the small-variance steps bias the spread slightly low)."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn((20000, 1, 1, 1), generator=gen, dtype=torch.float64)
    z = (z - z.mean()) / z.std()
    ts = timesteps(200)
    a0, a = float(AC[ts[-1]]), float(AC[1])
    x = math.sqrt(a0) * MU + math.sqrt(a0 * S * S + 1 - a0) * z
    out = sample_ddim(model64, x, ts, AC, eta=1.0, noise=CountingNoise(tuple(x.shape), seed=3))
    assert abs(float(out.mean()) - math.sqrt(a) * MU) < 0.01
    assert abs(float(out.std()) - math.sqrt(a * S * S + 1 - a)) < 0.03


def test_ddim_cfgpp_steps_along_the_unconditional_eps() -> None:
    x = start()
    ts = timesteps(10)
    # with the unconditional eps equal to the guided one, CFG++ is DDIM
    seen: list[Tensor] = []

    def guided(xx: Tensor, t: Tensor) -> Tensor:
        seen.append(model64(xx, t))
        return seen[-1]

    assert torch.equal(sample_ddim_cfgpp(guided, x, ts, AC, lambda: seen[-1]), sample_ddim(model64, x, ts, AC))
    # one step by hand: x0 from the guided eps, the direction from the unconditional one
    pair = torch.tensor([201, 601])

    def uncond(xx: Tensor, t: Tensor) -> Tensor:
        return gauss_eps(AC, xx, t, mu=-0.2, s=0.7)

    def cfg(xx: Tensor, t: Tensor) -> Tensor:
        un = uncond(xx, t)
        return un + (model64(xx, t) - un) * (7.0 * CFGPP_SCALE_MULTIPLIER)

    out = sample_ddim_cfgpp(cfg, x, pair, AC, lambda: uncond(x, torch.full((4,), 601.0)))
    a, a_prev = float(AC[601]), float(AC[201])
    t601 = torch.full((4,), 601.0)
    x0 = (x - math.sqrt(1 - a) * cfg(x, t601)) / math.sqrt(a)
    torch.testing.assert_close(out, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * uncond(x, t601))


def test_plms_calls() -> None:
    ts = timesteps(10)
    model = Recorder()
    steps: list[Step] = []
    sample_plms(model, start(), ts, AC, callback=steps.append)
    called = [int(c[0]) for c in model.calls]
    down = [int(t) for t in ts.flip(0)]
    assert called == [down[0], down[1], *down[1:-1]]  # the first step's improved-Euler call at the next timestep
    assert len(steps) == len(ts) - 1


def test_img2img_starts_one_timestep_below_the_noise_level() -> None:
    sched, t_noise = img2img_timesteps(20, 0.5)
    model = Recorder()
    sample_ddim(model, start(), sched, AC)
    assert int(model.calls[0][0]) == int(sched[-1]) == t_noise - 50
    unipc_model = Recorder()
    sample_unipc(unipc_model, start(), sched, AC, is_img2img=True)
    assert abs(float(unipc_model.calls[0][0]) - int(sched[-1])) < 1e-3
    assert len(unipc_model.calls) == len(sched)


# --- UniPC --------------------------------------------------------------------------------------------------------


def test_unipc_converges_on_a1111_timesteps() -> None:
    """txt2img runs from table entry 999 to entry 0 whatever the timesteps' values."""
    x = start()
    errors = []
    for n in (10, 50, 250):
        out = sample_unipc(model64, x, timesteps(n), AC)
        errors.append(float((out - exact(x, float(AC[999]), float(AC[0]))).abs().max()))
    assert errors[0] > 4 * errors[1] > 16 * errors[2], errors
    assert errors[2] < 0.005
    assert errors[1] < ddim_error(50)


def ddim_error(n: int) -> float:
    x = start()
    ts = timesteps(n)
    return float((sample_ddim(model64, x, ts, AC) - exact(x, float(AC[ts[-1]]), float(AC[ts[0]]))).abs().max())


def unipc_errors(ns: tuple[int, ...], **options: object) -> list[float]:
    """UniPC from continuous time 0.95 to 0.301 (timesteps 949 to 300), away from the table's ends."""
    schedule = DiscreteVPSchedule.from_alphas_cumprod(AC)
    batch = 1 if options.get("variant") == "vary_coeff" else 4
    x = start(batch)
    ref = exact(x, float(abar_at(AC, torch.tensor(949.0))), float(abar_at(AC, torch.tensor(300.0))))
    errors = []
    for n in ns:
        out = unipc_sample(model64, x, schedule, n, t_start=0.95, t_end=0.301, **options)  # type: ignore[arg-type]
        errors.append(float((out - ref).abs().max()))
    return errors


@pytest.mark.parametrize(
    ("options", "low", "high"),
    [
        ({}, -2.2, -1.8),  # the defaults: the last steps drop to orders 2 and 1
        ({"order": 1}, -2.2, -1.8),  # UniP-1 with UniC: order 2
        ({"lower_order_final": False}, -4.0, -3.0),
        ({"variant": "bh2", "lower_order_final": False}, -4.0, -3.0),
        ({"skip_type": "time_quadratic", "lower_order_final": False}, -4.0, -3.0),
    ],
)
def test_unipc_order(options: dict[str, object], low: float, high: float) -> None:
    ns = (10, 20, 40, 80)
    assert low < slope(ns, unipc_errors(ns, **options)) < high


def test_unipc_vary_coeff_converges() -> None:
    """A1111's vary_coeff variant converges, though only at first order."""
    ns = (10, 20, 40, 80)
    errors = unipc_errors(ns, variant="vary_coeff")
    assert slope(ns, errors) < -0.8
    with pytest.raises(ValueError):
        sample_unipc(model64, start(2), timesteps(10), AC, variant="vary_coeff")


def test_unipc_logsnr_skip_type_converges() -> None:
    x = start()
    errors = [
        float((sample_unipc(model64, x, timesteps(n), AC, skip_type="logSNR") - exact(x, float(AC[999]), float(AC[0])))
              .abs().max())
        for n in (10, 40, 160)
    ]  # fmt: skip
    assert errors[0] > 4 * errors[1] > 16 * errors[2], errors


def test_unipc_calls_and_callback() -> None:
    ts = timesteps(10)
    model = Recorder()
    steps: list[Step] = []
    out = sample_unipc(model, start(), ts, AC, callback=steps.append)
    assert len(model.calls) == len(ts)
    first, last = float(model.calls[0][0]), float(model.calls[-1][0])
    assert abs(first - 999) < 1e-3 and 0 < last < 999
    assert all(float(b[0]) < float(a[0]) for a, b in zip(model.calls, model.calls[1:], strict=False))
    assert [s.i for s in steps] == list(range(len(ts)))
    assert torch.equal(steps[-1].x, out)
    # fewer steps than the order (an error in A1111): the order drops to the step count
    two = sample_unipc(model64, start(), timesteps(2), AC)
    assert torch.equal(two, sample_unipc(model64, start(), timesteps(2), AC, order=2))
    assert torch.equal(sample_unipc(model64, start(), timesteps(2)[:0], AC), start())
    with pytest.raises(ValueError):
        sample_unipc(model64, start(), ts, AC, variant="bh3")
    with pytest.raises(ValueError):
        sample_unipc(model64, start(), ts, AC, skip_type="cubic")


# --- golden values from A1111 -------------------------------------------------------------------------------------
# Produced by running A1111 v1.10.1's own functions (modules/sd_samplers_timesteps_impl.py: ddim, ddim_cfgpp, plms,
# unipc, with modules/models/diffusion/uni_pc/uni_pc.py) in a throwaway script, on the CPU in float32, with their
# imports stubbed: the model was `golden_model` below (CFG++: `cfg_model`, A1111 setting the multiplier 1 / 12.5),
# the timesteps A1111's get_timesteps, the shared options set as named, and k-diffusion's randn_like drawing from
# torch.Generator().manual_seed(seed) (seed 0 where eta = 0). This module's samplers matched them bit for bit there.

GOLDEN: dict[str, list[float]] = {
    "ddim10": [-0.32553622126579285, -0.20707355439662933, -0.08861088007688522, 0.02985190972685814,
               0.14831453561782837, 0.2667772173881531, 0.38524001836776733, 0.503702700138092, 0.6221654415130615,
               0.7406280040740967, 0.8590908646583557, 0.9775534868240356],
    "ddim7_eta07": [-0.046697668731212616, 0.3344826102256775, 0.18053896725177765, 0.4775053560733795,
                    -0.24039557576179504, 0.6522353887557983, 0.0678749531507492, -0.1071765199303627,
                    0.5203813314437866, 0.5719295144081116, 0.4250986576080322, 0.4159815311431885],
    "plms10": [-0.43563178181648254, -0.29631081223487854, -0.1569899171590805, -0.017669130116701126,
               0.12165171653032303, 0.26097261905670166, 0.4002935290336609, 0.5396144986152649, 0.6789352893829346,
               0.8182561993598938, 0.9575770497322083, 1.096897840499878],
    "cfgpp10": [-0.0801587924361229, 0.024698946624994278, 0.12955689430236816, 0.23441466689109802,
                0.33927246928215027, 0.4441302716732025, 0.5489882230758667, 0.653846025466919, 0.7587038278579712,
                0.863561749458313, 0.9684194326400757, 1.073277235031128],
    "unipc10": [-0.3584786057472229, -0.23251810669898987, -0.106557697057724, 0.019402697682380676,
                0.1453632265329361, 0.27132371068000793, 0.39728426933288574, 0.5232447385787964, 0.649205207824707,
                0.7751655578613281, 0.9011262655258179, 1.0270864963531494],
    "unipc10_img2img6": [-0.5291803479194641, -0.38365691900253296, -0.23813357949256897, -0.09261012077331543,
                         0.05291323736310005, 0.1984366625547409, 0.34396010637283325, 0.489483505487442,
                         0.6350067853927612, 0.7805304527282715, 0.9260535836219788, 1.0715771913528442],
    "unipc8_bh2_logsnr_o2": [-0.4770073890686035, -0.32836925983428955, -0.17973104119300842, -0.03109266236424446,
                             0.11754560470581055, 0.2661837935447693, 0.41482219099998474, 0.5634604692459106,
                             0.7120988368988037, 0.8607368469238281, 1.0093754529953003, 1.1580134630203247],
    "unipc6_vary_quad_b1": [-0.42159005999565125, -0.11791210621595383, 0.18576577305793762, 0.4894436001777649,
                            0.7931215763092041, 1.0967992544174194],
}  # fmt: skip


def golden_model(x: Tensor, t: Tensor) -> Tensor:
    return gauss_eps(AC32, x, t)


def golden_x(batch: int = 2) -> Tensor:
    return torch.linspace(-1.5, 1.7, batch * 6).view(batch, 1, 2, 3)


def test_golden_values_from_a1111() -> None:
    x = golden_x()
    last_uncond: list[Tensor] = []

    def cfg_model(xx: Tensor, t: Tensor) -> Tensor:
        un = gauss_eps(AC32, xx, t, mu=-0.2, s=0.7)
        last_uncond[:] = [un.clone()]
        return un + (gauss_eps(AC32, xx, t) - un) * (7.0 * CFGPP_SCALE_MULTIPLIER)

    gen = torch.Generator().manual_seed(5)
    results = {
        "ddim10": sample_ddim(golden_model, x, timesteps(10), AC32),
        "ddim7_eta07": sample_ddim(
            golden_model, x, timesteps(7), AC32, eta=0.7, noise=lambda: torch.randn(x.shape, generator=gen)
        ),
        "plms10": sample_plms(golden_model, x, timesteps(10), AC32),
        "cfgpp10": sample_ddim_cfgpp(cfg_model, x, timesteps(10), AC32, lambda: last_uncond[0]),
        "unipc10": sample_unipc(golden_model, x, timesteps(10), AC32),
        "unipc10_img2img6": sample_unipc(golden_model, x, timesteps(10)[:6], AC32, is_img2img=True),
        "unipc8_bh2_logsnr_o2": sample_unipc(
            golden_model, x, timesteps(8), AC32, variant="bh2", skip_type="logSNR", order=2
        ),
        "unipc6_vary_quad_b1": sample_unipc(
            golden_model, golden_x(1), timesteps(6), AC32, variant="vary_coeff", skip_type="time_quadratic"
        ),
    }
    for name, out in results.items():
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.flatten(), torch.tensor(GOLDEN[name]), rtol=0, atol=5e-6, msg=name)


# --- LCM ----------------------------------------------------------------------------------------------------------


def test_lcm_table() -> None:
    valid = lcm_alphas_cumprod(AC32)
    assert valid.shape == (50,) and valid.dtype == torch.float32
    assert torch.equal(valid, AC32[19::20])
    table = lcm_sigma_table(AC32)
    torch.testing.assert_close(table.sigmas, ((1 - valid) / valid).sqrt())
    assert lcm_sigma_to_t(table, table.sigmas).tolist() == list(range(19, 1000, 20))
    between = (table.sigmas[10] * table.sigmas[11]).sqrt() * 0.99  # nearer entry 10 in log sigma
    assert int(lcm_sigma_to_t(table, between.view(1))) == 219
    torch.testing.assert_close(lcm_t_to_sigma(table, torch.tensor([19.0, 999.0])), table.sigmas[[0, -1]])
    torch.testing.assert_close(lcm_t_to_sigma(table, torch.tensor([0.0, 2000.0])), table.sigmas[[0, -1]])
    mid = lcm_t_to_sigma(table, torch.tensor([29.0]))
    torch.testing.assert_close(mid, (table.sigmas[0] * table.sigmas[1]).sqrt().view(1))


def expected_lcm_sigmas(table_sigmas: Tensor, ts: list[float]) -> list[float]:
    logs = table_sigmas.double().log()
    out = []
    for t in ts:
        idx = min(max((t - 19) / 20, 0.0), 49.0)
        lo, w = math.floor(idx), idx - math.floor(idx)
        hi = min(lo + 1, 49)
        out.append(math.exp((1 - w) * float(logs[lo]) + w * float(logs[hi])))
    return [*out, 0.0]


def test_lcm_sigmas_hand_checked() -> None:
    table = lcm_sigma_table(AC32)
    got = lcm_sigmas(4, table)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    want = expected_lcm_sigmas(table.sigmas, [999.0, 999 - 980 / 3, 999 - 2 * 980 / 3, 19.0])
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=0)
    sgm = lcm_sigmas(4, table, sgm=True)
    want = expected_lcm_sigmas(table.sigmas, [999.0, 754.0, 509.0, 264.0])
    torch.testing.assert_close(sgm.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=0)
    assert float(got[0]) == pytest.approx(float(table.sigmas[-1]), rel=1e-6)
    assert float(got[-2]) == pytest.approx(float(table.sigmas[0]), rel=1e-6)


def test_lcm_scalings_match_the_formula() -> None:
    t = torch.tensor([0, 19, 259, 999])
    c_skip, c_out = lcm_scalings(t)
    for i, step in enumerate(t.tolist()):
        s = 10.0 * step
        assert float(c_skip[i]) == pytest.approx(0.25 / (s * s + 0.25), rel=1e-6)
        assert float(c_out[i]) == pytest.approx(s / math.sqrt(s * s + 0.25), rel=1e-6, abs=1e-12)
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0  # the boundary condition f(x, 0) = x


def test_lcm_denoise() -> None:
    """With a point-mass data distribution at C the exact eps gives x0 = C, so the denoiser returns
    c_out(t) C + c_skip(t) x, and the UNet sees x / sqrt(sigma^2 + 1) at the table's timestep."""
    table = lcm_sigma_table(AC32)
    c = 0.4
    x = torch.linspace(-3, 3, 8, dtype=torch.float64).view(2, 1, 2, 2) * 4
    sigma = torch.tensor([float(table.sigmas[30]), float(table.sigmas[5])], dtype=torch.float64)
    seen: list[tuple[Tensor, Tensor]] = []

    def unet_eps(x_in: Tensor, t: Tensor) -> Tensor:
        seen.append((x_in, t))
        scale = (sigma**2 + 1).sqrt().view(-1, 1, 1, 1)
        return (x_in * scale - c) / sigma.view(-1, 1, 1, 1)

    out = lcm_denoise(unet_eps, x, sigma, table)
    assert seen[0][1].tolist() == [619, 119] and seen[0][1].dtype == torch.int64
    torch.testing.assert_close(seen[0][0], x / (sigma**2 + 1).sqrt().view(-1, 1, 1, 1))
    c_skip, c_out = lcm_scalings(torch.tensor([619, 119]))
    want = c_out.double().view(-1, 1, 1, 1) * c + c_skip.double().view(-1, 1, 1, 1) * x
    torch.testing.assert_close(out, want)


def test_sample_lcm() -> None:
    table = lcm_sigma_table(AC32)
    sigmas = lcm_sigmas(4, table)
    x = torch.linspace(-1, 1, 8).view(2, 1, 2, 2) * float(sigmas[0])
    draws: list[tuple[float, float]] = []
    gen = torch.Generator().manual_seed(0)

    def noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        draws.append((float(sigma), float(sigma_next)))
        return torch.randn(x.shape, generator=gen)

    seen: list[Tensor] = []

    def denoiser(xx: Tensor, sigma: Tensor) -> Tensor:
        seen.append(xx)
        return torch.full_like(xx, 0.25)

    steps: list[Step] = []
    out = sample_lcm(denoiser, x, sigmas, noise=noise, callback=steps.append)
    assert torch.equal(out, torch.full_like(x, 0.25))
    assert draws == [(float(sigmas[i]), float(sigmas[i + 1])) for i in range(3)]
    assert len(seen) == 4 and len(steps) == 4
    gen2 = torch.Generator().manual_seed(0)
    first = torch.randn(x.shape, generator=gen2)
    torch.testing.assert_close(seen[1], 0.25 + sigmas[1] * first)
    with pytest.raises(NoiseRequiredError):
        sample_lcm(denoiser, x, sigmas)
    assert torch.equal(sample_lcm(denoiser, x, lcm_sigmas(1, table)), torch.full_like(x, 0.25))


# --- the global RNG ---------------------------------------------------------------------------------------------


def test_global_rng_untouched() -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    x = start()
    ts = timesteps(8)
    noise = CountingNoise(tuple(x.shape))
    sample_ddim(model64, x, ts, AC, eta=1.0, noise=noise)
    sample_ddim_cfgpp(model64, x, ts, AC, lambda: model64(x, torch.full((4,), 1.0)), eta=0.5, noise=noise)
    sample_plms(model64, x, ts, AC)
    sample_unipc(model64, x, ts, AC)
    table = lcm_sigma_table(AC32)
    sample_lcm(lambda xx, s: xx * 0.5, x.float(), lcm_sigmas(3, table), noise=lambda s, n: torch.ones(4, 1, 1, 1))
    assert torch.equal(torch.get_rng_state(), state)

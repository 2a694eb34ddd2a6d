"""A1111's schedule types on the SD 1.x sigma table, each checked against its formula written independently here."""

from __future__ import annotations

import math

import pytest
import torch

from modules.sampling import schedules as sch

TABLE = sch.SigmaTable.from_alphas_cumprod(sch.scaled_linear_alphas_cumprod())
LO, HI = TABLE.sigma_min, TABLE.sigma_max
STEPS = (1, 2, 3, 10, 11, 20, 30)


def _ramp(n: int) -> list[float]:
    return [i / (n - 1) if n > 1 else 0.0 for i in range(n)]


def _close(sigmas: torch.Tensor, expected: list[float], rel: float = 2e-6) -> None:
    assert sigmas.dtype == torch.float32
    assert sigmas.tolist() == pytest.approx(expected, rel=rel, abs=1e-7)


def _decreasing(sigmas: torch.Tensor) -> bool:
    return bool((sigmas[1:] < sigmas[:-1]).all())


def test_sd1_table_ends_hand_derived():
    # abar_0 = 1 - beta_0 = 1 - 0.00085, so sigma_min = sqrt(0.00085 / 0.99915) = 0.0291672; the table is float32,
    # and 1 - abar_0 taken in float32 loses about 1e-5 of that (the model's value is 0.0291675).
    assert LO == pytest.approx(math.sqrt(0.00085 / 0.99915), rel=3e-5)
    # sigma_max = sqrt(1 / abar_999 - 1), abar_999 = prod(1 - beta_i) summed in log space in float64 here.
    betas = [(0.00085**0.5 + i / 999 * (0.012**0.5 - 0.00085**0.5)) ** 2 for i in range(1000)]
    abar = math.exp(sum(math.log1p(-b) for b in betas))
    assert HI == pytest.approx(math.sqrt(1 / abar - 1), rel=1e-5)
    assert HI == pytest.approx(14.6146, abs=1e-4)  # A1111's settings page calls it "~14.6"
    assert len(TABLE) == 1000 and _decreasing(TABLE.sigmas.flip(0))


def test_t_to_sigma_interpolates_log_sigma_and_round_trips():
    whole = torch.arange(1000)
    assert TABLE.t_to_sigma(whole).tolist() == pytest.approx(TABLE.sigmas.tolist(), rel=1e-6)
    half = TABLE.t_to_sigma(torch.tensor([499.5])).item()
    assert half == pytest.approx(math.sqrt(TABLE.sigmas[499].item() * TABLE.sigmas[500].item()), rel=1e-6)
    t = torch.linspace(0, 999, 2001)
    assert TABLE.sigma_to_t(TABLE.t_to_sigma(t)).tolist() == pytest.approx(t.tolist(), abs=2e-3)
    assert TABLE.sigma_to_t(torch.tensor(HI)).item() == 999.0
    assert TABLE.sigma_to_t(torch.tensor(LO)).item() == 0.0
    assert TABLE.sigma_to_t(torch.tensor([1000.0, 1e-4])).tolist() == [999.0, 0.0]  # clamped to the table
    assert TABLE.sigma_to_t(TABLE.t_to_sigma(torch.tensor([10.4, 10.6])), quantize=True).tolist() == [10, 11]


def test_eps_and_v_models_share_the_table_and_zero_snr_rescales_it():
    abar = sch.scaled_linear_alphas_cumprod()
    zsnr = sch.rescale_zero_terminal_snr(abar)
    root, new_root = abar.double().sqrt(), zsnr.double().sqrt()
    # sqrt(abar) is mapped affinely: first entry kept, last sent to 0 (then to sqrt(4.897e-8) to keep sigma finite).
    expected = (root - root[-1]) * root[0] / (root[0] - root[-1])
    assert new_root[:-1].tolist() == pytest.approx(expected[:-1].tolist(), rel=1e-5, abs=1e-6)
    table = sch.SigmaTable.from_alphas_cumprod(abar, zero_terminal_snr=True)
    assert table.sigma_min == pytest.approx(LO, rel=1e-4)
    assert table.sigma_max == pytest.approx(math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08), rel=1e-4)
    assert table.sigma_max == pytest.approx(4518.8, abs=0.1)
    assert torch.equal(abar, sch.scaled_linear_alphas_cumprod())  # the input is left alone


@pytest.mark.parametrize("n", STEPS)
def test_karras(n):
    sigmas = sch.karras(n, LO, HI)
    top, bottom = HI ** (1 / 7), LO ** (1 / 7)
    _close(sigmas, [(top + r * (bottom - top)) ** 7 for r in _ramp(n)] + [0.0])
    assert sigmas[0].item() == pytest.approx(HI) and sigmas[-1] == 0 and _decreasing(sigmas[:-1])
    _close(sch.karras(n, LO, HI, rho=3.0), [(HI ** (1 / 3) * (1 - r) + LO ** (1 / 3) * r) ** 3 for r in _ramp(n)] + [0])


def test_karras_golden_midpoint():
    # n = 3, rho = 7: the middle sigma is ((14.6146^(1/7) + 0.0291675^(1/7)) / 2)^7 = ((1.466893 + 0.603532) / 2)^7
    # = 1.035212^7 = exp(7 * 0.0346058) = exp(0.242241) = 1.27411.
    assert sch.karras(3, LO, HI)[1].item() == pytest.approx(1.27411, abs=1e-4)


@pytest.mark.parametrize("n", STEPS)
def test_exponential_and_polyexponential(n):
    logs = [math.log(HI) + r * (math.log(LO) - math.log(HI)) for r in _ramp(n)]
    _close(sch.exponential(n, LO, HI), [math.exp(x) for x in logs] + [0.0], rel=1e-5)
    _close(sch.polyexponential(n, LO, HI), [math.exp(x) for x in logs] + [0.0], rel=1e-5)  # rho 1 is exponential
    poly = [math.exp(math.log(LO) + (1 - r) ** 2 * (math.log(HI) - math.log(LO))) for r in _ramp(n)]
    _close(sch.polyexponential(n, LO, HI, rho=2.0), poly + [0.0], rel=1e-5)
    # golden: for n = 3 the middle exponential sigma is the geometric mean sqrt(14.6146 * 0.0291672) = 0.65289
    assert sch.exponential(3, LO, HI)[1].item() == pytest.approx(0.65289, abs=1e-4)


@pytest.mark.parametrize("n", STEPS)
def test_uniform_normal_sgm_uniform(n):
    uniform = sch.uniform(n, TABLE)
    ts = [999 * (1 - r) for r in _ramp(n)]
    _close(uniform, [_interp(t) for t in ts] + [0.0], rel=1e-5)
    assert uniform[0].item() == pytest.approx(HI, rel=1e-6) and len(uniform) == n + 1 and _decreasing(uniform[:-1])
    assert torch.equal(sch.normal(n, LO, HI, TABLE), uniform)  # the table's own range gives the same timesteps
    sgm = sch.sgm_uniform(n, LO, HI, TABLE)
    _close(sgm, [_interp(999 * (1 - i / n)) for i in range(n)] + [0.0], rel=1e-5)
    assert sgm[0].item() == pytest.approx(HI, rel=1e-6) and (n == 1 or sgm[-2].item() > LO)


def _interp(t: float) -> float:
    low, w = int(math.floor(t)), t - math.floor(t)
    high = min(low + 1, 999)
    return math.exp((1 - w) * math.log(TABLE.sigmas[low].item()) + w * math.log(TABLE.sigmas[high].item()))


def test_normal_with_a_narrower_range_starts_at_its_max():
    sigmas = sch.normal(5, 0.1, 5.0, TABLE)
    assert sigmas[0].item() == pytest.approx(5.0, rel=1e-5) and sigmas[-2].item() == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize("n", STEPS)
def test_simple_and_ddim_pick_table_entries(n):
    simple = sch.simple(n, TABLE)
    assert simple.tolist() == [TABLE.sigmas[999 - int(i * 1000 / n)].item() for i in range(n)] + [0.0]
    assert simple[0].item() == HI
    ddim = sch.ddim_uniform(n, TABLE)
    stride = 1000 // n
    assert ddim.tolist() == [TABLE.sigmas[i].item() for i in range(1, 1000, stride)][::-1] + [0.0]
    assert _decreasing(ddim[:-1]) and ddim[-2].item() == TABLE.sigmas[1].item()


def test_ddim_golden_lengths_and_first():
    # n = 10: stride 100, entries 1, 101, ..., 901, so the first sigma is the table's at t = 901, not sigma_max.
    assert sch.ddim_uniform(10, TABLE)[0].item() == TABLE.sigmas[901].item()
    # n = 30: stride 33 gives entries 1, 34, ..., 991: 31 sigmas plus 0, as A1111 does.
    assert len(sch.ddim_uniform(30, TABLE)) == 32


@pytest.mark.parametrize("n", (2, 3, 10, 20))
def test_kl_optimal_ends_at_sigma_min(n):
    sigmas = sch.kl_optimal(n, LO, HI)
    expected = [math.tan(i / n * math.atan(LO) + (1 - i / n) * math.atan(HI)) for i in range(n + 1)]
    _close(sigmas, expected, rel=1e-5)
    assert sigmas[0].item() == pytest.approx(HI, rel=1e-6) and sigmas[-1].item() == pytest.approx(LO, rel=1e-5)


@pytest.mark.parametrize("n", (3, 5, 10, 20))
def test_beta(n):
    from scipy import stats

    sigmas = sch.beta(n, LO, HI)
    quantiles = [stats.beta.ppf(1 - r, 0.6, 0.6) for r in _ramp(n)]
    _close(sigmas, [LO + q * (HI - LO) for q in quantiles] + [0.0])
    assert sigmas[0].item() == pytest.approx(HI) and sigmas[-2].item() == pytest.approx(LO) and sigmas[-1] == 0
    assert _decreasing(sigmas[:-1])


def test_beta_golden_middle():
    # Beta(0.6, 0.6) is symmetric, so its median is 0.5 and the middle of 5 sigmas is (sigma_min + sigma_max) / 2.
    assert sch.beta(5, LO, HI)[2].item() == pytest.approx((LO + HI) / 2, rel=1e-6)


def test_align_your_steps():
    assert sch.align_your_steps(11).tolist() == pytest.approx([*sch.AYS_SD15, 0.0])
    assert sch.align_your_steps(11, sdxl=True).tolist() == pytest.approx([*sch.AYS_SDXL, 0.0])
    # 21 points over the same [0, 1] grid: every other one is a table entry, the rest geometric means of neighbours.
    sigmas = sch.align_your_steps(21).tolist()
    assert sigmas[:-1:2] == pytest.approx(list(sch.AYS_SD15), rel=1e-6) and sigmas[-1] == 0
    assert sigmas[1] == pytest.approx(math.sqrt(14.615 * 6.475), rel=1e-6)
    sigmas = sch.align_your_steps(5)
    assert len(sigmas) == 6 and sigmas[0].item() == pytest.approx(14.615) and sigmas[-2].item() == pytest.approx(0.029)


def test_registry_names_labels_and_needs():
    assert sch.schedule_labels() == [
        "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
        "Align Your Steps", "Simple", "Normal", "DDIM", "Beta",
    ]  # fmt: skip
    assert sch.find_schedule("karras") is sch.find_schedule("Karras")
    assert sch.find_schedule("SGMUniform").name == "sgm_uniform"
    needs = {s.name for s in sch.SCHEDULE_TYPES if s.needs_table}
    assert needs == {"uniform", "sgm_uniform", "simple", "normal", "ddim", "beta"}
    with pytest.raises(sch.UnknownScheduleError, match="unknown schedule type"):
        sch.find_schedule("Automatic")
    assert sch.resolve_schedule_name("Automatic", "karras") == "karras"
    assert sch.resolve_schedule_name(None, None) == "uniform"
    assert sch.resolve_schedule_name("Beta", "karras") == "Beta"


@pytest.mark.parametrize("schedule", sch.SCHEDULE_TYPES, ids=lambda s: s.name)
def test_every_schedule_through_the_registry(schedule):
    sigmas = sch.build_sigmas(schedule.label, 20, TABLE)
    assert len(sigmas) == 21 and _decreasing(sigmas[:-1]) and sigmas.dtype == torch.float32
    assert sigmas[-1] == (LO if schedule.name == "kl_optimal" else 0)
    dropped = sch.build_sigmas(schedule.name, 20, TABLE, sch.ScheduleOptions(discard_penultimate=True))
    one_more = sch.build_sigmas(schedule.name, 21, TABLE)  # for DDIM 21 steps give 22 sigmas (stride 47)
    assert torch.equal(dropped, torch.cat([one_more[:-2], one_more[-1:]])) and dropped[-1] == sigmas[-1]


def test_options_override_range_and_rho():
    opts = sch.ScheduleOptions(sigma_min=0.1, sigma_max=10.0, rho=5.0)
    _close(sch.build_sigmas("Karras", 8, TABLE, opts), sch.karras(8, 0.1, 10.0, rho=5.0).tolist())
    assert sch.schedule_args(sch.find_schedule("Exponential"), 8, TABLE, opts).rho is None  # no rho there
    same = sch.ScheduleOptions(rho=7.0, sigma_max=HI)  # equal to the defaults: not an override
    args = sch.schedule_args(sch.find_schedule("karras"), 8, TABLE, same)
    assert (args.rho, args.sigma_min, args.sigma_max) == (None, LO, HI)
    old = sch.schedule_args(sch.find_schedule("karras"), 8, TABLE, sch.ScheduleOptions(old_karras_range=True))
    assert (old.sigma_min, old.sigma_max) == (0.1, 10.0)


def test_discard_penultimate_builds_one_more_then_drops_it():
    full = sch.karras(11, LO, HI)
    dropped = sch.build_sigmas("karras", 10, TABLE, sch.ScheduleOptions(discard_penultimate=True))
    assert torch.equal(dropped, torch.cat([full[:-2], full[-1:]]))


def test_table_schedules_refuse_without_a_table():
    args = sch.ScheduleArgs(10, LO, HI)
    with pytest.raises(ValueError, match="sigma table"):
        sch.find_schedule("simple").build(args)
    assert len(sch.find_schedule("karras").build(args)) == 11


def test_sigma_to_t_of_one_float32_sigma_is_the_tensor_methods_value():
    gen = torch.Generator().manual_seed(0)
    sigmas = torch.cat([torch.rand(2000, generator=gen) * 20, torch.exp(torch.rand(2000, generator=gen) * 15 - 6),
                        TABLE.sigmas, torch.tensor([LO, HI, 1e-4, 1e4])])
    expected = TABLE.sigma_to_t(sigmas).tolist()
    got = [TABLE.sigma_to_t_float32(v) for v in sigmas.log().tolist()]
    assert got == expected  # the same float32 numbers, not only close ones
    zero_snr = sch.SigmaTable.from_alphas_cumprod(sch.scaled_linear_alphas_cumprod(), zero_terminal_snr=True)
    assert [zero_snr.sigma_to_t_float32(v) for v in sigmas.log().tolist()] == zero_snr.sigma_to_t(sigmas).tolist()
    assert sch.SigmaTable.from_sigmas(TABLE.sigmas.double()).sigma_to_t_float32(0.0) is None  # not a float32 table

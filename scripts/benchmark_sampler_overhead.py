"""Benchmark: each sampler's own work per step as a share of one UNet call (target: at most 3 %).

For every sampler, txt2img sampling runs through the engine's own wiring (``passes.sample_from_noise``: schedule,
guided denoiser, noise, sampler, progress) four ways, in one process:

  guided  the real UNet behind the real guidance (CFG, batch doubled)                    -> (a)
  bare    the same number of UNet calls with the same doubled batch, nothing else         -> (c)
  zero    the real guidance around a UNet that returns a precomputed tensor (no compute)  -> (z)
  instant the guided denoiser itself replaced by one returning a precomputed tensor       -> (b)

and prints, per sampler: steps, model calls, the bare UNet ms per call, the sampler's work per step (b / steps),
the sampler plus guidance work per step (z / steps, and (a - c) / steps where the UNet runs were made) and that as
a percentage of one UNet call, also per model call (for samplers that call the model more than once a step). The
target is judged on the +guidance figure (z), per model call for a sampler whose steps call the UNet more than once
(Heun, DPM2, DPM++ SDE, ...: the step's work set against the UNet work it wraps); a - c is the difference of two
long runs, noisy on a loaded machine. A table of the noise sources (CPU, NV, GPU draws; the SDE samplers' Brownian
tree, and torchsde's own tree, which A1111 uses, on the same queries; the tree prepared for the whole schedule as
the SDE samplers use it, with its plan cached from an earlier run of the schedule and worked out anew) follows,
since drawing noise is part of a stochastic sampler's step. Medians of several repeats after a warm-up.

The UNet has random weights: ``--size tiny`` is the test replica, ``--size real`` the full SD 1.5 UNet built from
the bundled config (no download; slow on a CPU: there the UNet is timed one call per sample and the guided/bare
runs are skipped unless ``--unet-repeats`` asks for them; use a few ``--steps``). Torch takes its thread count
from OMP_NUM_THREADS; on a machine shared with other busy processes set it to 1, as oversubscribed OpenMP threads
make the UNet timings erratic.

    OMP_NUM_THREADS=1 python scripts/benchmark_sampler_overhead.py
    python scripts/benchmark_sampler_overhead.py --size real --samplers "Euler,DPM++ 2M SDE" --unet-samples 3
    python scripts/benchmark_sampler_overhead.py --size real --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_PERCENT = 3.0


def build_unet(size: str) -> Any:
    """A random-weight SD 1.5 UNet: the tiny replica or the bundled full-size config."""
    import diffusers

    from modules.models.families import bundled_config_dir
    from modules.models.tiny import tiny_config

    if size == "tiny":
        config = tiny_config("sd1")["unet"]
    else:
        config = json.loads((bundled_config_dir("sd1") / "unet" / "config.json").read_text())
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel.from_config(config).eval()


class InstantUNet(torch.nn.Module):
    """Stands in for the UNet: returns a precomputed output of the input's shape, and counts its calls."""

    def __init__(self, config: Any, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.config = config
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=dtype, device=device), requires_grad=False)
        self.outputs: dict[tuple[int, ...], torch.Tensor] = {}
        self.calls = 0

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, **_: Any) -> tuple[torch.Tensor]:
        self.calls += 1
        shape = (sample.shape[0], 4, *sample.shape[2:])
        out = self.outputs.get(shape)
        if out is None:
            gen = torch.Generator("cpu").manual_seed(3)
            out = torch.randn(shape, generator=gen).to(device=self.anchor.device, dtype=self.anchor.dtype)
            self.outputs[shape] = out
        return (out,)


class InstantDenoiser:
    """Stands in for the guided denoiser: returns a precomputed estimate at once (the sampler's work alone)."""

    def __init__(self, cfg: Any) -> None:
        self.model = cfg.model  # the samplers' wiring reads the model's tables through it
        self.kind = cfg.model.kind
        self.out: torch.Tensor | None = None
        self.last_x0: torch.Tensor | None = None
        self.last_uncond: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.out is None or self.out.shape != x.shape:
            gen = torch.Generator("cpu").manual_seed(4)
            scale = 1.0 if self.kind == "eps" else 0.5
            self.out = (torch.randn(tuple(x.shape), generator=gen) * scale).to(x)
            self.last_x0 = self.last_uncond = self.out
        return self.out


@dataclass
class Setup:
    """What every run shares: the model parts, the conditioning and the request's shape."""

    parts: Any
    conds: list[Any]
    steps: int
    width: int
    height: int
    batch: int
    cfg_scale: float
    rng_source: str
    device: torch.device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def make_parts(unet: Any) -> Any:
    from modules.models.families import FAMILIES, bundled_config_dir
    from modules.models.loader import ModelParts

    sched = json.loads((bundled_config_dir("sd1") / "scheduler" / "scheduler_config.json").read_text())
    # sampling needs only the UNet and the scheduler config; the other parts stay unset
    return ModelParts(family=FAMILIES["sd1"], prediction_type=sched.get("prediction_type", "epsilon"), unet=unet,
                      vae=None, text_encoder=None, tokenizer=None, scheduler_config=sched)  # type: ignore[arg-type]


def make_conds(batch: int, dim: int, device: torch.device) -> list[Any]:
    from modules.generation.conditioning import Cond, ImageConds, ScheduledCond

    gen = torch.Generator("cpu").manual_seed(2)
    out = []
    for _ in range(batch):
        pos = Cond(torch.randn((1, 77, dim), generator=gen).to(device))
        neg = Cond(torch.randn((1, 77, dim), generator=gen).to(device))
        out.append(ImageConds([(1.0, [ScheduledCond(10**9, pos)])], [ScheduledCond(10**9, neg)]))
    return out


def sample_once(setup: Setup, spec: Any, parts: Any, instant: bool) -> tuple[float, int]:
    """One txt2img sampling pass as the engine runs it; (seconds, steps reported)."""
    from modules.generation import passes
    from modules.generation.control import JobControl
    from modules.generation.noise import ImageRNG
    from modules.sampling import schedules

    pass_spec = passes.PassSpec(sampler=spec, schedule=schedules.AUTOMATIC, steps=setup.steps,
                                cfg_scale=setup.cfg_scale, conds=setup.conds, width=setup.width,
                                height=setup.height)
    rng = ImageRNG((4, setup.height // 8, setup.width // 8), list(range(1, setup.batch + 1)),
                   source=setup.rng_source, device=setup.device)
    control = JobControl()
    real_denoiser = passes._denoiser

    def instant_denoiser(*args: Any, **kwargs: Any) -> Any:
        return InstantDenoiser(real_denoiser(*args, **kwargs))

    with torch.inference_mode(), mock.patch.object(passes, "_denoiser", instant_denoiser if instant else real_denoiser):
        setup.sync()
        start = time.perf_counter()
        passes.sample_from_noise(parts, pass_spec, rng, control)
        setup.sync()
        elapsed = time.perf_counter() - start
    return elapsed, control.progress.sampling_step


def bare_unet_loop(setup: Setup, calls: int) -> Callable[[], float]:
    """A loop of ``calls`` bare UNet calls on the guided batch (positive and negative rows)."""
    unet = setup.parts.unet
    rows = setup.batch * (1 if setup.cfg_scale == 1.0 else 2)
    gen = torch.Generator("cpu").manual_seed(5)
    x = torch.randn((rows, 4, setup.height // 8, setup.width // 8), generator=gen)
    x = x.to(device=setup.device, dtype=setup.parts.dtype)
    t = torch.full((rows,), 500.0, device=setup.device)
    ctx = torch.cat([c.positive[0][1][0].cond.context for c in setup.conds] +
                    [c.negative[0].cond.context for c in setup.conds][: rows - setup.batch])
    ctx = ctx.to(device=setup.device, dtype=setup.parts.dtype)

    def run() -> float:
        with torch.inference_mode():
            setup.sync()
            start = time.perf_counter()
            for _ in range(calls):
                unet(x, t, encoder_hidden_states=ctx, return_dict=False)
            setup.sync()
            return time.perf_counter() - start

    return run


@dataclass
class Row:
    name: str
    steps: int  # steps reported (for DPM adaptive: attempted steps) in the run with the real UNet, else with (z)
    calls: int  # UNet calls in that run
    sampler_ms: float  # (b) / steps
    zero_ms: float  # (z) / steps
    guided_ms: float | None  # ((a) - (c)) / steps


def bench_sampler(setup: Setup, spec: Any, instant_parts: Any, repeats: int, unet_repeats: int) -> Row:
    instant_unet = instant_parts.unet
    # (z): real guidance, instant UNet; the warm-up run counts the UNet calls
    instant_unet.calls = 0
    _, steps = sample_once(setup, spec, instant_parts, instant=False)
    calls = instant_unet.calls
    zero = statistics.median(sample_once(setup, spec, instant_parts, instant=False)[0] for _ in range(repeats))
    zero_ms = zero / max(steps, 1) * 1000
    # (b): the sampler alone
    _, steps_b = sample_once(setup, spec, instant_parts, instant=True)
    sampler = statistics.median(sample_once(setup, spec, instant_parts, instant=True)[0] for _ in range(repeats))
    guided_ms = None
    if unet_repeats > 0:
        # (a) and (c) in pairs, so that drift in the machine's load affects both alike; the median of the differences
        counter = [0]
        handle = setup.parts.unet.register_forward_pre_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
        try:
            _, steps = sample_once(setup, spec, setup.parts, instant=False)
        finally:
            handle.remove()
        calls = counter[0]
        bare = bare_unet_loop(setup, calls)
        bare()
        diffs = [sample_once(setup, spec, setup.parts, instant=False)[0] - bare() for _ in range(unet_repeats)]
        guided_ms = statistics.median(diffs) / max(steps, 1) * 1000
    return Row(spec.name, steps, calls, sampler / max(steps_b, 1) * 1000, zero_ms, guided_ms)


def time_unet_call(setup: Setup, samples: int) -> float:
    """Median ms of one bare UNet call on the guided batch, one call per timing sample."""
    one = bare_unet_loop(setup, 1)
    one()
    return statistics.median(one() for _ in range(samples)) * 1000


def bench_noise(setup: Setup, repeats: int) -> list[tuple[str, float, float | None]]:
    """(what, ms per step, ms once per run) for each noise source: a batch draw; the Brownian tree's queries."""
    from modules import samplers
    from modules.generation import passes
    from modules.generation.noise import ImageRNG
    from modules.sampling import schedules

    sources = ["CPU", "NV"] + (["GPU"] if setup.device.type == "cuda" else [])
    shape = (4, setup.height // 8, setup.width // 8)
    seeds = list(range(1, setup.batch + 1))
    out: list[tuple[str, float, float | None]] = []
    for source in sources:
        rng = ImageRNG(shape, seeds, source=source, device=setup.device)
        rng.next()

        def draw(rng: Any = rng) -> float:
            setup.sync()
            start = time.perf_counter()
            rng.next()
            setup.sync()
            return time.perf_counter() - start

        draw()
        out.append((f"draw {source}", statistics.median(draw() for _ in range(max(repeats, 10))) * 1000, None))
    spec = samplers.find("DPM++ 2M SDE")
    sigmas = passes.get_sigmas(spec, schedules.AUTOMATIC, setup.steps, passes.sigma_table(setup.parts),
                               schedules.ScheduleOptions(), False).to(setup.device)
    x = torch.zeros((setup.batch, *shape), device=setup.device)
    for source in sources:
        builds, queries = [], []
        for _ in range(max(repeats, 3) + 1):
            rng = ImageRNG(shape, seeds, source=source, device=setup.device)
            setup.sync()
            start = time.perf_counter()
            tree = rng.brownian_noise(x, sigmas)
            setup.sync()
            mid = time.perf_counter()
            for i in range(len(sigmas) - 2):  # the last step goes to sigma 0, where the SDE samplers draw nothing
                tree(sigmas[i], sigmas[i + 1])
            setup.sync()
            builds.append(mid - start)
            queries.append((time.perf_counter() - mid) / max(len(sigmas) - 2, 1))
        out.append((f"Brownian tree {source}", statistics.median(queries[1:]) * 1000,
                    statistics.median(builds[1:]) * 1000))
    out.extend(_bench_prepared_tree(setup, x, sigmas, seeds, repeats))
    out.extend(_bench_torchsde_tree(setup, x, sigmas, seeds, repeats))
    return out


def _bench_prepared_tree(setup: Setup, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int],
                         repeats: int) -> list[tuple[str, float, float | None]]:
    """The tree as the SDE samplers use it (NV): built and prepared for the whole schedule, then queried step by
    step; once with the preparation's plan already worked out for this schedule (a repeated job, as in the sampler
    rows above) and once with it cleared before each run (the first job with a schedule)."""
    from modules.generation.noise import ImageRNG
    from modules.sampling import brownian

    shape = tuple(x.shape[1:])
    out: list[tuple[str, float, float | None]] = []
    for label, cold in (("cached", False), ("new plan", True)):
        runs = []
        for _ in range(max(repeats, 3) + 1):
            if cold:
                brownian._geometry_of.cache_clear()
            rng = ImageRNG(shape, seeds, source="NV", device=setup.device)
            setup.sync()
            start = time.perf_counter()
            tree = rng.brownian_noise(x, sigmas)
            tree.prepare(sigmas)
            for i in range(len(sigmas) - 2):
                tree(sigmas[i], sigmas[i + 1])
            setup.sync()
            runs.append((time.perf_counter() - start) / max(len(sigmas) - 1, 1))
        out.append((f"prepared NV, {label}", statistics.median(runs[1:]) * 1000, None))
    return out


def _bench_torchsde_tree(setup: Setup, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int],
                         repeats: int) -> list[tuple[str, float, float | None]]:
    """The same queries on torchsde's own BrownianTree, one per image, drawing with torch's generator of the
    device: the tree A1111 (and diffusers' SDE scheduler) uses, with the CPU source. The same numbers as the
    ``Brownian tree CPU`` row (tests check it to the bit)."""
    try:
        import torchsde
    except ImportError:
        return []
    import warnings

    builds, queries = [], []
    for _ in range(max(repeats, 3) + 1):
        setup.sync()
        start = time.perf_counter()
        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        trees = [torchsde.BrownianTree(lo, torch.zeros_like(x[0]), hi, entropy=s) for s in seeds]
        setup.sync()
        mid = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for i in range(len(sigmas) - 2):
                a, b = sigmas[i + 1], sigmas[i]
                torch.stack([t(a, b) for t in trees]) / (b - a).abs().sqrt()
        setup.sync()
        builds.append(mid - start)
        queries.append((time.perf_counter() - mid) / max(len(sigmas) - 2, 1))
    return [("torchsde tree (A1111)", statistics.median(queries[1:]) * 1000, statistics.median(builds[1:]) * 1000)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None)
    ap.add_argument("--width", type=int, default=None, help="default 64 (tiny), 512 (real)")
    ap.add_argument("--height", type=int, default=None, help="default 64 (tiny), 512 (real)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--cfg-scale", type=float, default=7.0)
    ap.add_argument("--rng", choices=["GPU", "CPU", "NV"], default="GPU", help="the RNG source (GPU: NV on a CPU)")
    ap.add_argument("--samplers", default="", help="comma-separated sampler names (default: all)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the runs without the UNet")
    ap.add_argument("--unet-repeats", type=int, default=None,
                    help="repeats of the guided and bare UNet runs; 0 skips them (default: --repeats, but 0 for "
                         "--size real on a CPU)")
    ap.add_argument("--unet-samples", type=int, default=None, help="single-call UNet timings (default 20; 3 real CPU)")
    args = ap.parse_args()

    from modules import samplers

    device = torch.device(args.device)
    real_cpu = args.size == "real" and device.type == "cpu"
    width = args.width or (512 if args.size == "real" else 64)
    height = args.height or (512 if args.size == "real" else 64)
    unet_repeats = args.unet_repeats if args.unet_repeats is not None else (0 if real_cpu else args.repeats)
    unet_samples = args.unet_samples or (3 if real_cpu else 20)
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    names = [n.strip() for n in args.samplers.split(",") if n.strip()]
    specs = [samplers.find(n) for n in names] if names else list(samplers.SAMPLERS)

    unet = build_unet(args.size).to(device)
    if dtype != torch.float32:
        unet = unet.to(dtype)
    parts = make_parts(unet)
    instant_parts = replace(parts, unet=InstantUNet(unet.config, dtype, device))
    conds = make_conds(args.batch_size, int(unet.config.cross_attention_dim), device)
    setup = Setup(parts, conds, args.steps, width, height, args.batch_size, args.cfg_scale, args.rng, device)

    unet_ms = time_unet_call(setup, unet_samples)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows_per_call = args.batch_size * (1 if args.cfg_scale == 1.0 else 2)
    print(f"model: sd1 {args.size} UNet, random weights, {width}x{height}, {args.steps} steps, batch "
          f"{args.batch_size} ({rows_per_call} rows per UNet call), {precision} on {device_name}, "
          f"{torch.get_num_threads()} threads, RNG {args.rng}")
    print(f"bare UNet call: {unet_ms:.2f} ms (median of {unet_samples}); runs without the UNet: median of "
          f"{args.repeats}; guided/bare UNet runs: " + (f"median of {unet_repeats}" if unet_repeats else "skipped"))
    print("per step: sampler = the sampler alone (instant denoiser); +guidance = the sampler with the real guidance "
          "around an instant UNet;\n          a-c = guided run minus the bare UNet calls (noisy); % = of one bare "
          "UNet call; %/call = +guidance per model call")
    print(f"{'sampler':<18} {'steps':>5} {'calls':>5} {'sampler ms':>10} {'+guidance ms':>12} {'%':>6} "
          f"{'%/call':>6} {'a-c ms':>8} {'%':>6}")
    over = []
    for spec in specs:
        try:
            row = bench_sampler(setup, spec, instant_parts, args.repeats, unet_repeats)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other samplers
            print(f"{spec.name:<18} failed: {type(exc).__name__}: {exc}")
            over.append(f"{spec.name} (failed)")
            continue
        percent = row.zero_ms / unet_ms * 100
        per_call = row.zero_ms * row.steps / max(row.calls, 1) / unet_ms * 100
        guided = (f"{row.guided_ms:8.3f} {row.guided_ms / unet_ms * 100:5.1f}%" if row.guided_ms is not None
                  else f"{'-':>8} {'-':>6}")
        # a step that calls the UNet more than once is judged per call: its work set against the UNet work it wraps
        judged = percent if row.calls <= row.steps else per_call
        flag = "  > target" if judged > TARGET_PERCENT else ""
        print(f"{row.name:<18} {row.steps:5d} {row.calls:5d} {row.sampler_ms:10.3f} {row.zero_ms:12.3f} "
              f"{percent:5.1f}% {per_call:5.1f}% {guided}{flag}", flush=True)
        if judged > TARGET_PERCENT:
            over.append(f"{row.name} ({judged:.1f}%)")
    print()
    print(f"{'noise':<22} {'ms/step':>8} {'% UNet':>7} {'once/run ms':>12}")
    noise_rows = bench_noise(setup, args.repeats)
    for what, per_step, once in noise_rows:
        once_text = f"{once:12.3f}" if once is not None else f"{'-':>12}"
        print(f"{what:<22} {per_step:8.3f} {per_step / unet_ms * 100:6.2f}% {once_text}")
    per_query = {what: per_step for what, per_step, _ in noise_rows}
    if "torchsde tree (A1111)" in per_query and "Brownian tree CPU" in per_query:
        print(f"Brownian tree queries: {per_query['torchsde tree (A1111)'] / per_query['Brownian tree CPU']:.1f}x "
              "faster than torchsde's tree, the same numbers")
    print()
    print(f"target: sampler work per step (per model call where a step calls the UNet more than once) <= "
          f"{TARGET_PERCENT:g}% of one UNet call; over it: "
          + (", ".join(over) if over else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

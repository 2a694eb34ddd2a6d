"""The command line of the original CompVis ``scripts/txt2img.py``, same flags, driving the engine.

Outputs are laid out as the original writes them: ``OUTDIR/samples/NNNNN.png`` and ``OUTDIR/grid-NNNN.png``; each
image also carries A1111's infotext, so it can be regenerated from the web UI or the API.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from modules.errors import WebUIError
from modules.generation.control import JobControl, Progress
from webui.merge_cli import ConsoleBar, check_model_file

# The engine (torch, diffusers) is imported by run(), once the flags and the checkpoint are checked and the progress
# bar shows "loading model": a mistyped flag or a picture given as --ckpt fails at once.

DEFAULT_CKPT = "models/ldm/stable-diffusion-v1/model.ckpt"
DEFAULT_CONFIG = "configs/stable-diffusion/v1-inference.yaml"
LAION_CKPT = "models/ldm/text2img-large/model.ckpt"
LAION_CONFIG = "configs/latent-diffusion/txt2img-1p4B-eval.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="txt2img.py", description="Stable Diffusion text-to-image (CompVis flags)")
    p.add_argument("--prompt", type=str, nargs="?", default="a painting of a virus monster playing guitar",
                   help="the prompt to render")
    p.add_argument("--outdir", type=str, nargs="?", default=None, help="dir to write results to")
    p.add_argument("--skip_grid", action="store_true", help="do not save a grid, only individual samples")
    p.add_argument("--skip_save", action="store_true", help="do not save individual samples")
    p.add_argument("--ddim_steps", type=int, default=50, help="number of ddim sampling steps")
    p.add_argument("--plms", action="store_true", help="use plms sampling")
    p.add_argument("--laion400m", action="store_true", help="uses the LAION400M model")
    p.add_argument("--fixed_code", action="store_true", help="if enabled, uses the same starting code across samples")
    p.add_argument("--ddim_eta", type=float, default=0.0, help="ddim eta (eta=0.0 corresponds to deterministic)")
    p.add_argument("--n_iter", type=int, default=2, help="sample this often")
    p.add_argument("--H", type=int, default=512, help="image height, in pixel space")
    p.add_argument("--W", type=int, default=512, help="image width, in pixel space")
    p.add_argument("--C", type=int, default=4, help="latent channels")
    p.add_argument("--f", type=int, default=8, help="downsampling factor")
    p.add_argument("--n_samples", type=int, default=3, help="how many samples to produce for each given prompt")
    p.add_argument("--n_rows", type=int, default=0, help="rows in the grid (default: n_samples)")
    p.add_argument("--scale", type=float, default=7.5, help="unconditional guidance scale")
    p.add_argument("--from-file", type=str, help="if specified, load prompts from this file")
    p.add_argument("--config", type=str, default=None, help="path to config which constructs model")
    p.add_argument("--ckpt", type=str, default=None, help="path to checkpoint of model")
    p.add_argument("--seed", type=int, default=42, help="the seed (for reproducible sampling)")
    p.add_argument("--precision", type=str, choices=["full", "autocast"], default="autocast",
                   help="evaluate at this precision")
    p.add_argument("--disable-console-progressbars", action="store_true",
                   help="no progress bar on stderr (as A1111's flag)")
    return p


def _fail(message: str) -> int:
    print(f"txt2img.py: error: {message}", file=sys.stderr)
    return 1


def _read_prompts(opt: argparse.Namespace) -> list[list[str]]:
    if not opt.from_file:
        return [[opt.prompt] * opt.n_samples]
    try:
        lines = Path(opt.from_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WebUIError(f"cannot read prompts from {opt.from_file}: {exc}") from None
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise WebUIError(f"{opt.from_file} contains no prompts")
    return [lines[i:i + opt.n_samples] for i in range(0, len(lines), opt.n_samples)]


def _validate(opt: argparse.Namespace) -> None:
    for flag, value in (("--H", opt.H), ("--W", opt.W)):
        if value % 8 != 0 or value < 64:
            raise WebUIError(f"{flag} must be a multiple of 8 and at least 64 (got {value})")
    if opt.C != 4 or opt.f != 8:
        raise WebUIError("Stable Diffusion checkpoints need --C 4 and --f 8")
    for flag, value in (("--ddim_steps", opt.ddim_steps), ("--n_iter", opt.n_iter), ("--n_samples", opt.n_samples)):
        if value < 1:
            raise WebUIError(f"{flag} must be at least 1 (got {value})")
    if not 0 <= opt.ddim_eta <= 1:
        raise WebUIError(f"--ddim_eta must be between 0 and 1 (got {opt.ddim_eta})")


def _batches(prompts: list[str]) -> list[tuple[str, int]]:
    """Consecutive identical prompts of a chunk are generated as one batch."""
    out: list[tuple[str, int]] = []
    for prompt in prompts:
        if out and out[-1][0] == prompt:
            out[-1] = (prompt, out[-1][1] + 1)
        else:
            out.append((prompt, 1))
    return out


def _jobs(opt: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(prompt, seed, batch size) of each engine call, in order: the original's loops over n_iter and the chunks."""
    jobs: list[tuple[str, int, int]] = []
    chunks = _read_prompts(opt)
    index = 0
    for _ in range(opt.n_iter):
        for chunk in chunks:
            position = 0  # --fixed_code: every batch starts from the same noise, as the original's start_code
            for prompt, count in _batches(chunk):
                jobs.append((prompt, opt.seed + (position if opt.fixed_code else index), count))
                index += count
                position += count
    return jobs


class _StepProgress:
    """The engine's progress events on one bar over the sampling steps of every call: call ``k`` of ``calls``
    has done ``k * steps`` steps before it. When the engine reports another step count than ``--ddim_steps``
    (a sampler that adds a step), the total follows it."""

    def __init__(self, bar: ConsoleBar, calls: int, steps: int) -> None:
        self.bar, self.calls, self.steps = bar, calls, steps
        self.call = 0

    def start(self, call: int) -> None:
        self.call = call
        self.bar.to(call * self.steps)

    def finish(self) -> None:
        """The call's sampling is complete: A1111's timestep samplers (DDIM, PLMS) report one step fewer than
        ``steps`` when it does not divide 1000 (``--ddim_steps 2`` or 4 runs 1 or 3), the engine as well."""
        self.bar.to((self.call + 1) * self.steps)

    def __call__(self, event: Progress) -> None:
        if event.phase == "sampling" and event.sampling_steps:
            if event.sampling_steps != self.steps:
                self.steps = event.sampling_steps
                self.bar.set_total(self.calls * self.steps)
            self.bar.to(self.call * self.steps + min(event.sampling_step, self.steps))
        if event.phase and event.phase not in ("done", "loading model"):
            self.bar.phase(self.label(event.phase))

    def label(self, phase: str) -> str:
        return f"{phase} (batch {self.call + 1}/{self.calls})" if self.calls > 1 else phase


def run(opt: argparse.Namespace) -> int:
    started = time.monotonic()
    _validate(opt)
    ckpt = opt.ckpt or (LAION_CKPT if opt.laion400m else DEFAULT_CKPT)
    config = opt.config or (LAION_CONFIG if opt.laion400m else None)
    if config and not Path(config).exists():
        if opt.config:
            raise WebUIError(f"config not found: {config}")
        config = None
    outdir = Path(opt.outdir or ("outputs/txt2img-samples-laion400m" if opt.laion400m else "outputs/txt2img-samples"))
    if not Path(ckpt).exists():
        raise WebUIError(f"checkpoint not found: {ckpt}")
    check_model_file(Path(ckpt))
    jobs = _jobs(opt)
    sampler = "PLMS" if opt.plms else "DDIM"
    with ConsoleBar("loading model", len(jobs) * opt.ddim_steps,
                    enabled=not opt.disable_console_progressbars) as bar:
        from modules import images as image_utils
        from modules import outputs
        from modules.app import build_engine
        from modules.param_io import cli_values, request_from_values
        from modules.requests import GenerationRequest, validate

        engine = build_engine(precision="fp32" if opt.precision == "full" else "auto")
        engine.models.load_path(Path(ckpt), Path(config) if config else None)
        loaded = time.monotonic()
        sample_dir = outdir / "samples"
        sample_dir.mkdir(parents=True, exist_ok=True)
        base_count = outputs.next_sequence_number(sample_dir)
        all_images, first_info, saved = [], None, []
        steps = _StepProgress(bar, len(jobs), opt.ddim_steps)
        bar.phase(steps.label("sampling"))
        bar.restart()  # the rate is of the sampling steps, not of the model loading
        for call, (prompt, seed, count) in enumerate(jobs):
            values = {**cli_values(vars(opt)), "prompt": prompt, "seed": seed, "batch_size": count,
                      "sampler_name": sampler, "scheduler": "Automatic", "randn_source": "CPU"}
            req = request_from_values(GenerationRequest, values)
            validate(req)
            steps.start(call)
            job = engine.txt2img(req, JobControl(steps), grid=False)
            steps.finish()
            if not opt.skip_save:
                bar.phase(steps.label("saving"))
            for image, info in zip(job.result.images, job.result.infotexts, strict=True):
                first_info = first_info or info
                all_images.append(image)
                if not opt.skip_save:
                    saved.append(_save(sample_dir, lambda n: f"{n:05}.png", base_count, image, info))
                    base_count += 1
        grid = None
        if not opt.skip_grid and all_images:
            bar.phase("saving grid")
            per_row = opt.n_rows if opt.n_rows > 0 else opt.n_samples  # the original's n_rows is images per row
            image = image_utils.image_grid(all_images, rows=-(-len(all_images) // per_row))
            grid_count = outputs.next_sequence_number(outdir, "grid-")
            grid = _save(outdir, lambda n: f"grid-{n:04}.png", grid_count, image, first_info)
        bar.phase("done")
    print(f"Your samples are ready and waiting for you here: \n{outdir} \n \nEnjoy.")
    print(_summary(len(all_images), sample_dir, saved, grid, time.monotonic() - started, loaded - started))
    return 0


def _summary(images: int, sample_dir: Path, saved: list[Path], grid: Path | None, seconds: float,
             loading: float) -> str:
    """``txt2img.py: 4 images in OUT/samples (00004.png to 00007.png), grid OUT/grid-0001.png, 9.1 s (2.0 s
    loading the model)``."""
    what = f"{images} image{'s' if images != 1 else ''}"
    if not saved:
        where = "not saved (--skip_save)"
    elif len(saved) == 1:
        where = f"in {sample_dir} ({saved[0].name})"
    else:
        where = f"in {sample_dir} ({saved[0].name} to {saved[-1].name})"
    grid_text = f"grid {grid}" if grid is not None else "no grid"
    return f"txt2img.py: {what} {where}, {grid_text}, {seconds:.1f} s ({loading:.1f} s loading the model)"


def _save(folder: Path, name_for, start: int, image, info: str | None) -> Path:
    from modules import images as image_utils
    from modules.fileio import write_new_file

    data = image_utils.encode_image(image, "png", info)
    return write_new_file(folder, name_for, start, lambda f: f.write(data))


class _LogHandler(logging.Handler):
    """Log records on stderr through ``tqdm.write``, which keeps a progress bar below them intact. A checkpoint
    that cannot be loaded is left out: the command line reports it as its one error line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "modules.models.registry" and "cannot be loaded" in str(record.msg))

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _setup_logging() -> None:
    root = logging.getLogger()
    if root.handlers:  # configured already (a test, an embedding program): as logging.basicConfig, leave it
        return
    handler = _LogHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    opt = build_parser().parse_args(argv)
    try:
        return run(opt)
    except WebUIError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted")
    except MemoryError:
        return _fail("out of memory")

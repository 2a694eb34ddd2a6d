"""Benchmark: jobs per minute with 1 and with 2 (or more) generation workers on Ray, measured in one run.

For each worker count, a local Ray cluster is started with that many workers (one per GPU when the machine has GPUs,
else CPU workers sharing the cores: torch in each takes cores / workers threads, or ``--threads``), the same
txt2img jobs are sent through the server's own queue (the path the APIs take), and the time from the first
submission to the last result gives jobs per minute. The model is the tiny random-weight SD 1.x test model unless
``--checkpoint`` names a file.
Worker start-up is not counted (the clock starts once every worker is ready and has loaded the model).

    python scripts/benchmark_cluster.py                       # tiny model, 1 and 2 workers, 16 jobs each
    python scripts/benchmark_cluster.py --checkpoint model.safetensors --width 512 --height 512 --steps 20
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(count: int, data: Path, args: argparse.Namespace) -> tuple[float, dict[str, int]]:
    """Jobs per minute with ``count`` workers, and how many jobs each worker ran."""
    import ray

    from modules.app import App, StartOptions
    from modules.requests import GenerationRequest

    app = App(StartOptions(data_dir=data, device="cpu", skip_load_model=True, workers="ray", worker_count=count,
                           worker_threads=args.threads))
    app.start()
    try:
        deadline = time.monotonic() + 600
        while not all(w["state"] == "ready" for w in app.workers_status()):
            if time.monotonic() > deadline:
                raise SystemExit(f"the workers did not start: {app.workers_status()}")
            time.sleep(0.5)
        request = GenerationRequest(prompt="a red circle on a white background", steps=args.steps, width=args.width,
                                    height=args.height, sampler_name="Euler", seed=1)
        for worker in app.workers_status():  # every worker runs once (loads the model) before the clock starts
            app.submit(app.generation_job(request, save=False), pin=worker["id"]).wait(600)
        start = time.perf_counter()
        jobs = [app.submit_txt2img(request.replace(seed=i), save=False) for i in range(args.jobs)]
        for job in jobs:
            job.wait(3600)
        elapsed = time.perf_counter() - start
        failed = [job.error for job in jobs if job.error]
        if failed:
            raise SystemExit(f"{len(failed)} job(s) failed: {failed[0]}")
        per_worker: dict[str, int] = {}
        for job in jobs:
            per_worker[job.worker or "?"] = per_worker.get(job.worker or "?", 0) + 1
        return args.jobs / elapsed * 60, per_worker
    finally:
        app.stop()
        if ray.is_initialized():
            ray.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint file (default: the tiny test model)")
    ap.add_argument("--counts", default="1,2", help="worker counts to compare (comma-separated)")
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in each CPU worker (default: the cores shared out among the workers)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    counts = [int(c) for c in args.counts.split(",") if c.strip()]

    import torch

    from modules.models.tiny import write_tiny_model

    root = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    try:
        target = root / "models" / "Stable-diffusion"
        target.mkdir(parents=True)
        if args.checkpoint is not None:
            shutil.copy2(args.checkpoint, target / args.checkpoint.name)
            name = args.checkpoint.name
        else:
            source = write_tiny_model("sd1", root / "tiny-src", fmt="safetensors")
            shutil.copy2(source, target / "tiny.safetensors")
            if source.with_suffix("").is_dir():
                shutil.copytree(source.with_suffix(""), target / "tiny")
            name = "tiny (random weights)"
        gpus = torch.cuda.device_count()
        print(f"model: {name}, {args.width}x{args.height}, {args.steps} steps, {args.jobs} jobs per run; "
              f"{f'{gpus} GPU(s)' if gpus else 'CPU workers'}")
        rates = {}
        for count in counts:
            rate, per_worker = run(count, root, args)
            rates[count] = rate
            print(f"{count} worker(s): {rate:7.1f} jobs/min   jobs per worker: {per_worker}", flush=True)
        base = rates[counts[0]]
        for count in counts[1:]:
            print(f"{count} workers vs {counts[0]}: {rates[count] / base:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

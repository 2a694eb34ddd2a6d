"""Benchmark: txt2img through HTTP (the A1111 route, on a live server) against a direct engine call, same work.

Also measures the time from launching ``python -m webui`` to the UI answering. Prints medians and the ratio.

    python scripts/benchmark_http.py
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark_txt2img import time_runs as median_time  # noqa: E402  (same folder: the warm-up-then-median rule)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_time(data: Path, nowebui: bool) -> float:
    """Seconds from starting the process to the first successful answer of ``/`` (UI) or ``/internal/ping``."""
    import httpx

    port = free_port()
    args = [sys.executable, "-m", "webui", "--port", str(port), "--data-dir", str(data)]
    if nowebui:
        args.append("--nowebui")
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    path = "/internal/ping" if nowebui else "/"
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.perf_counter() - start > 300:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def start_server(data: Path, nowebui: bool = True) -> tuple[subprocess.Popen, int]:
    import httpx

    port = free_port()
    args = [sys.executable, "-m", "webui", "--port", str(port), "--data-dir", str(data)]
    if nowebui:
        args.append("--nowebui")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    while True:
        try:
            ping = httpx.get(f"http://127.0.0.1:{port}/internal/ping", timeout=1)
            if ping.status_code == 200 and ping.json()["model"] == "loaded":
                return proc, port
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the server did not start")
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()

    import httpx

    from modules.app import App, StartOptions
    from modules.models.tiny import write_tiny_model
    from modules.requests import GenerationRequest

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_tiny_model("sd1", data / "models" / "Stable-diffusion", name="bench")
        body = {"prompt": "a photograph of an astronaut riding a horse", "negative_prompt": "blurry",
                "steps": args.steps, "width": args.size, "height": args.size, "seed": 1, "sampler_name": "Euler"}
        # The server runs as the user launches it, in its own process; the direct calls run in this one, so
        # each process has a single thread doing tensor work, as in production.
        proc, port = start_server(data)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
                t_http = median_time(lambda: client.post("/sdapi/v1/txt2img", json=body).raise_for_status(),
                                     args.repeats)
        finally:
            proc.terminate()
            proc.wait(30)
        app = App(StartOptions(data_dir=data, device="cpu"))
        fields: dict[str, Any] = {**app.request_defaults(), **body}
        req = GenerationRequest(**fields)
        t_direct = median_time(lambda: app.engine.txt2img(req), args.repeats)
        print(f"txt2img {args.size}x{args.size}, {args.steps} steps, tiny SD 1.x on cpu, median of {args.repeats}")
        print(f"HTTP /sdapi/v1/txt2img {t_http:8.3f} s")
        print(f"direct engine call     {t_direct:8.3f} s")
        print(f"ratio                  {t_http / t_direct:8.3f}  (HTTP / direct)")
        print(f"launch to API answering {launch_time(data, nowebui=True):6.2f} s")
        print(f"launch to UI answering  {launch_time(data, nowebui=False):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

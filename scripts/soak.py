"""Soak: a real server process with a tiny model answers many small mixed requests; its memory is sampled.

Sends txt2img (64x64, 2 steps), options, progress and bad bodies in turn, reads the server's resident memory from
``/proc/PID/statm`` every ``--every`` requests, and prints the series and the ratio last/first, with the count of
answers by status. It never judges time; a 5xx answer makes the exit status 1.

    python scripts/soak.py [--requests 1000] [--every 50]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JSON = {"content-type": "application/json"}
Send = Callable[[httpx.Client], httpx.Response]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def install_tiny_model(data: Path) -> None:
    """A tiny random-weight SD 1.x checkpoint (and its config folder) in ``data/models/Stable-diffusion``."""
    from modules.models.tiny import write_tiny_model

    built = write_tiny_model("sd1", data / "build", fmt="safetensors")
    target = data / "models" / "Stable-diffusion"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, target / f"tiny{built.suffix}")
    if built.with_suffix("").is_dir():
        shutil.copytree(built.with_suffix(""), target / "tiny")
    shutil.rmtree(data / "build")


def start_server(data: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), COMMANDLINE_ARGS="",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.Popen([sys.executable, "-m", "webui", "--nowebui", "--port", str(port), "--data-dir",
                             str(data)], cwd=data, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    """Until the server answers and its model is loaded (the start-up load is a job like any other)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if client.get("/internal/ping").json().get("model") == "loaded":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start or did not load its model")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _raw(path: str, text: str) -> Send:
    return lambda c: c.post(path, content=text.encode("ascii"), headers=JSON)


def request_mix() -> list[tuple[str, Send]]:
    """One round of the mix: generations, reads, and the bad bodies a client can send."""
    small = {"prompt": "a tiny fox", "width": 64, "height": 64, "steps": 2}
    return [
        ("txt2img", lambda c: c.post("/sdapi/v1/txt2img", json=small)),
        ("options", lambda c: c.get("/sdapi/v1/options")),
        ("progress", lambda c: c.get("/sdapi/v1/progress")),
        ("bad: width", lambda c: c.post("/sdapi/v1/txt2img", json={**small, "width": 65})),
        ("txt2img batch", lambda c: c.post("/sdapi/v1/txt2img", json={**small, "batch_size": 2, "seed": 3})),
        ("bad: NaN", _raw("/sdapi/v1/txt2img", '{"prompt": "x", "cfg_scale": NaN}')),
        ("surrogate", _raw("/sdapi/v1/txt2img", '{"prompt": "a \\ud800", "width": 64, "height": 64, "steps": 2}')),
        ("bad: json", _raw("/sdapi/v1/txt2img", '{"prompt": ')),
        ("bad: image", lambda c: c.post("/sdapi/v1/img2img", json={"init_images": ["bm90IGFuIGltYWdl"]})),
        ("bad: option", lambda c: c.post("/sdapi/v1/options", json={"samples_format": "bmp"})),
        ("bad: infotext", lambda c: c.post("/sdapi/v1/txt2img", json={
            **small, "infotext": "x\nSteps: 2, CFG scale: nan, ENSD: -1e30, Size: 64x64"})),
        ("memory", lambda c: c.get("/sdapi/v1/memory")),
    ]


def soak(requests: int, every: int) -> int:
    data = Path(tempfile.mkdtemp(prefix="soak-"))
    install_tiny_model(data)
    port = free_port()
    proc = start_server(data, port)
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    series: list[int] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            wait_ready(client, proc)
            mix = request_mix()
            for i in range(requests):
                if i % every == 0:
                    series.append(rss_bytes(proc.pid))
                name, send = mix[i % len(mix)]
                statuses[(name, send(client).status_code)] += 1
            series.append(rss_bytes(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)
    report(series, every, statuses)
    return 1 if any(status >= 500 for _, status in statuses) else 0


def report(series: list[int], every: int, statuses: collections.Counter[tuple[str, int]]) -> None:
    print(f"server RSS (MiB) every {every} requests:")
    print(" ".join(f"{b / 2**20:.0f}" for b in series))
    print(f"last/first: {series[-1] / series[0]:.3f}   last/second: {series[-1] / series[1]:.3f}   "
          f"max/first: {max(series) / series[0]:.3f}")
    for (name, status), count in sorted(statuses.items()):
        print(f"{status}  {name}: {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50, help="sample the server's memory every N requests")
    args = parser.parse_args()
    sys.exit(soak(args.requests, args.every))


if __name__ == "__main__":
    main()

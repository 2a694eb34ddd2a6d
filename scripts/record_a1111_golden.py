"""Record the golden images of tests/test_a1111_golden.py from a real A1111 v1.10.1 (the oracle).

    python scripts/record_a1111_golden.py [--oracle DIR] [--work DIR] [--port PORT] [--out DIR]

Builds the test's tiny checkpoint (``build_golden_checkpoint``) under ``--work``, starts a second A1111 server on
it with the oracle's ``start.sh`` (its own models, data and state folders and port, so the shared oracle and its
default model are left alone), sends every case of :data:`CASES` to ``/sdapi/v1/txt2img`` or ``/img2img`` with the
settings pinned in ``override_settings``, saves each returned image as a PNG (pixels only) and the requests with
A1111's infotexts as ``cases.json`` in ``--out``, and stops that server.

A1111 samples an img2img init image's VAE posterior with torch's global generator, which the previous request's
last seed left seeded: each img2img case is therefore preceded by a 1-step txt2img request of the same seed, size
and settings (its image is discarded), which is what this engine reproduces for a single request.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_a1111_golden import (  # noqa: E402 - the test folder is put on the path above
    CHECKPOINT_NAME,
    GOLDEN,
    build_golden_checkpoint,
    resolve_images,
)

SETTINGS: dict[str, Any] = {"randn_source": "CPU", "CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0,
                            "sgm_noise_multiplier": False, "always_discard_next_to_last_sigma": False,
                            "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0}
BASE: dict[str, Any] = {"prompt": "a red fox, (autumn forest:1.2)", "negative_prompt": "blurry", "steps": 5,
                        "width": 64, "height": 64, "seed": 42, "cfg_scale": 7, "sampler_name": "Euler a",
                        "override_settings": SETTINGS}
_IMG2IMG: dict[str, Any] = {"init_images": ["@init"], "resize_mode": 0}
_INPAINT: dict[str, Any] = {**_IMG2IMG, "mask": "@mask", "mask_blur": 4, "inpainting_fill": 1,
                            "inpaint_full_res": False}
# name -> (endpoint, changes to BASE)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "euler_a": ("txt2img", {}),
    "dpmpp_2m_karras": ("txt2img", {"sampler_name": "DPM++ 2M", "scheduler": "Karras", "seed": 43}),
    "dpmpp_2m_sde": ("txt2img", {"sampler_name": "DPM++ 2M SDE", "seed": 44, "steps": 6}),
    "ddim": ("txt2img", {"sampler_name": "DDIM", "seed": 45}),
    "unipc": ("txt2img", {"sampler_name": "UniPC", "seed": 46, "prompt": "a blue boat on a lake"}),
    "batch_variation": ("txt2img", {"batch_size": 2, "subseed": 7, "subseed_strength": 0.3, "seed": 47}),
    "hires_latent": ("txt2img", {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
                                 "denoising_strength": 0.6, "hr_second_pass_steps": 0, "seed": 48, "steps": 4}),
    "img2img": ("img2img", {**_IMG2IMG, "denoising_strength": 0.6, "seed": 49}),
    "inpaint": ("img2img", {**_INPAINT, "denoising_strength": 0.75, "sampler_name": "DPM++ 2M", "seed": 50}),
}


def _post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:  # noqa: S310 - the local server this script started
        data: dict[str, Any] = json.loads(resp.read())
    return data


def _start(oracle: Path, work: Path, port: int, command: str = "start") -> None:
    env = {**os.environ, "A1111_MODELS": str(work / "models"), "A1111_DATA": str(work / "data"),
           "A1111_STATE": str(work / "state"), "A1111_PORT": str(port), "OMP_NUM_THREADS": "1"}
    args = [str(oracle / "start.sh")] + ([] if command == "start" else [command])
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)


def record(url: str, out: Path, model_hash: str) -> list[dict[str, Any]]:
    """Send every case to the A1111 at ``url``; save its images in ``out``; the cases as written to cases.json."""
    recorded = []
    for name, (endpoint, changes) in CASES.items():
        body = {**BASE, **changes}
        preceded_by = None
        if endpoint == "img2img":
            preceded_by = {**BASE, "seed": body["seed"], "steps": 1}
            _post(url, "/sdapi/v1/txt2img", preceded_by)
        data = _post(url, f"/sdapi/v1/{endpoint}", resolve_images(body))
        info = json.loads(data["info"])
        count = int(body.get("batch_size", 1))
        files = []
        for k, encoded in enumerate(data["images"][:count]):
            text = info["infotexts"][k]
            if f"Model hash: {model_hash}" not in text:
                raise RuntimeError(f"{name}: A1111 did not use the golden checkpoint: {text}")
            image = Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")
            files.append(f"{name}-{k}.png")
            image.save(out / files[-1], "PNG", optimize=True)
        print(f"{name:18s} {endpoint:8s} {image.size[0]}x{image.size[1]} x{count}  seeds {info['all_seeds'][:count]}")
        recorded.append({"name": name, "endpoint": endpoint, "body": body, "preceded_by": preceded_by,
                         "images": files, "infotexts": info["infotexts"][:count]})
    return recorded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--oracle", type=Path, default=ROOT.parent / "shared" / "a1111-oracle",
                    help="the folder of the oracle's start.sh")
    ap.add_argument("--work", type=Path, default=Path("/tmp/a1111-golden-run"),
                    help="models, data and state of the server this script starts")
    ap.add_argument("--port", type=int, default=7893)
    ap.add_argument("--out", type=Path, default=GOLDEN)
    args = ap.parse_args(argv)
    work: Path = args.work.resolve()
    ckpt = build_golden_checkpoint(work / "models")
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    _start(args.oracle, work, args.port)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for old in args.out.glob("*.png"):
            old.unlink()
        cases = record(f"http://127.0.0.1:{args.port}", args.out, digest[:10])
    finally:
        _start(args.oracle, work, args.port, "stop")
    doc = {"a1111": "v1.10.1", "checkpoint": f"{CHECKPOINT_NAME}.safetensors", "checkpoint_sha256": digest,
           "omp_num_threads": 1, "cases": cases}
    (args.out / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {len(cases)} cases to {args.out} ({total} bytes); checkpoint sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

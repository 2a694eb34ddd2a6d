"""Record the golden images of tests/test_a1111_golden.py from a real A1111 v1.10.1 (the oracle).

    python scripts/record_a1111_golden.py [--oracle DIR] [--work DIR] [--port PORT] [--out DIR]

Builds the test's tiny checkpoints (``build_golden_checkpoints``: plain, inpainting, v-prediction) under ``--work``,
starts a second A1111 server on them with the oracle's ``start.sh`` (its own models, data and state folders and port,
so the shared oracle and its default model are left alone), sends every case of :data:`CASES` to
``/sdapi/v1/txt2img`` or ``/img2img`` with the checkpoint and settings pinned in ``override_settings``, saves each
returned image as a PNG (pixels only) and the requests with A1111's infotexts as ``cases.json`` in ``--out``, and
stops that server. It also prints how much the inpainting model's extra inputs move A1111's pixels (:data:`PROBES`).

A1111 samples an img2img init image's VAE posterior (and an inpainting model's masked image's) with torch's global
generator, which the previous request left seeded with its last seed, and from which loading a checkpoint draws too
(transformers' CLIP text embeddings initialise themselves before the weights are loaded). Each img2img case is
therefore sent twice on its own checkpoint and the second answer kept: that one starts from a generator freshly seeded
with the case's seed, which is what this engine reproduces for a single request. (A txt2img request would not do on
an inpainting checkpoint: it draws from that generator once more, for the latents of its grey conditioning image.)
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

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_a1111_golden import (  # noqa: E402 - the test folder is put on the path above
    CHECKPOINT_NAME,
    GOLDEN,
    build_golden_checkpoints,
    resolve_images,
)

SETTINGS: dict[str, Any] = {"randn_source": "CPU", "CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0,
                            "sgm_noise_multiplier": False, "always_discard_next_to_last_sigma": False,
                            "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0}
BASE: dict[str, Any] = {"prompt": "a red fox, (autumn forest:1.2)", "negative_prompt": "blurry", "steps": 5,
                        "width": 64, "height": 64, "seed": 42, "cfg_scale": 7, "sampler_name": "Euler a",
                        "override_settings": {**SETTINGS, "sd_model_checkpoint": CHECKPOINT_NAME}}
_IMG2IMG: dict[str, Any] = {"init_images": ["@init"], "resize_mode": 0}
_INPAINT: dict[str, Any] = {**_IMG2IMG, "mask": "@mask", "mask_blur": 4, "inpainting_fill": 1,
                            "inpaint_full_res": False}
_INPAINTING_MODEL: dict[str, Any] = {"override_settings": {**SETTINGS, "sd_model_checkpoint": "tiny_inpaint"}}
_V_MODEL: dict[str, Any] = {"override_settings": {**SETTINGS, "sd_model_checkpoint": "tiny_v"}}
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
    # the inpainting checkpoint: txt2img (a grey image and a mask of ones as its extra inputs), img2img without a
    # mask, inpainting the whole picture, only the masked area (cropped with 8 pixels of padding), latent nothing
    "inpainting_model_txt2img": ("txt2img", {**_INPAINTING_MODEL, "seed": 60}),
    "inpainting_model_img2img": ("img2img", {**_INPAINTING_MODEL, **_IMG2IMG, "denoising_strength": 0.6,
                                             "seed": 61}),
    "inpainting_model_whole": ("img2img", {**_INPAINTING_MODEL, **_INPAINT, "denoising_strength": 0.75,
                                           "seed": 62}),
    "inpainting_model_only_masked": ("img2img", {**_INPAINTING_MODEL, **_INPAINT, "inpaint_full_res": True,
                                                 "inpaint_full_res_padding": 8, "denoising_strength": 0.75,
                                                 "sampler_name": "DPM++ 2M", "seed": 63}),
    "inpainting_model_latent_nothing": ("img2img", {**_INPAINTING_MODEL, **_INPAINT, "inpainting_fill": 3,
                                                    "denoising_strength": 0.9, "seed": 64}),
    # the v-prediction checkpoint
    "v_euler_a": ("txt2img", {**_V_MODEL, "seed": 70}),
    "v_dpmpp_2m_karras": ("txt2img", {**_V_MODEL, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "seed": 71}),
    "v_ddim": ("txt2img", {**_V_MODEL, "sampler_name": "DDIM", "seed": 72}),
    "v_unipc": ("txt2img", {**_V_MODEL, "sampler_name": "UniPC", "seed": 73, "prompt": "a blue boat on a lake"}),
    "v_img2img": ("img2img", {**_V_MODEL, **_IMG2IMG, "denoising_strength": 0.6, "seed": 74}),
}
# label -> (case, changes, (top, bottom, left, right) or None): requests whose pixels are set against the case's
# (inside the box), to show that the inpainting UNet's extra inputs matter in A1111: another mask, compared where both
# masks are white (both regenerated there); inpainting_mask_weight 0, which shows the masked-image latents the whole
# image
PROBES: dict[str, tuple[str, dict[str, Any], tuple[int, int, int, int] | None]] = {
    "another mask": ("inpainting_model_whole", {"mask": "@mask2"}, (16, 40, 20, 44)),
    "mask weight 0": ("inpainting_model_whole", {"override_settings": {
        **_INPAINTING_MODEL["override_settings"], "inpainting_mask_weight": 0.0}}, None),
    "img2img, mask weight 0": ("inpainting_model_img2img", {"override_settings": {
        **_INPAINTING_MODEL["override_settings"], "inpainting_mask_weight": 0.0}}, None),
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


def _checkpoint(body: dict[str, Any]) -> str:
    return str(body["override_settings"]["sd_model_checkpoint"])


def _images(url: str, endpoint: str, body: dict[str, Any]) -> tuple[list[Image.Image], dict[str, Any]]:
    """A1111's images and info for ``body``; an img2img request is sent twice, and the second answer kept."""
    if endpoint == "img2img":
        _post(url, "/sdapi/v1/img2img", resolve_images(body))
    data = _post(url, f"/sdapi/v1/{endpoint}", resolve_images(body))
    count = int(body.get("batch_size", 1))
    images = [Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB") for encoded in data["images"][:count]]
    return images, json.loads(data["info"])


def record(url: str, out: Path, model_hashes: dict[str, str]) -> list[dict[str, Any]]:
    """Send every case to the A1111 at ``url``; save its images in ``out``; the cases as written to cases.json."""
    recorded = []
    for name, (endpoint, changes) in CASES.items():
        body = {**BASE, **changes}
        images, info = _images(url, endpoint, body)
        files = []
        for k, image in enumerate(images):
            text = info["infotexts"][k]
            if f"Model hash: {model_hashes[_checkpoint(body)]}" not in text:
                raise RuntimeError(f"{name}: A1111 did not use the golden checkpoint {_checkpoint(body)}: {text}")
            files.append(f"{name}-{k}.png")
            image.save(out / files[-1], "PNG", optimize=True)
        print(f"{name:32s} {endpoint:8s} {_checkpoint(body):13s} {image.size[0]}x{image.size[1]} x{len(images)}  "
              f"seeds {info['all_seeds'][:len(images)]}")
        recorded.append({"name": name, "endpoint": endpoint, "body": body,
                         "sent_twice": endpoint == "img2img",
                         "images": files, "infotexts": info["infotexts"][:len(images)]})
    return recorded


def probe(url: str, out: Path) -> dict[str, float]:
    """The mean change, in grey levels, of each :data:`PROBES` request against its recorded case."""
    changes = {}
    for label, (name, change, box) in PROBES.items():
        endpoint, case_changes = CASES[name]
        (image,), _ = _images(url, endpoint, {**BASE, **case_changes, **change})
        a = np.asarray(image, dtype=np.float64)
        b = np.asarray(Image.open(out / f"{name}-0.png").convert("RGB"), dtype=np.float64)
        top, bottom, left, right = box or (0, a.shape[0], 0, a.shape[1])
        changes[label] = float(np.abs(a - b)[top:bottom, left:right].mean())
        print(f"probe {label!r} on {name}: mean change {changes[label]:.2f} grey levels")
    return changes


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
    paths = build_golden_checkpoints(work / "models")
    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in paths.items()}
    _start(args.oracle, work, args.port)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for old in args.out.glob("*.png"):
            old.unlink()
        url = f"http://127.0.0.1:{args.port}"
        cases = record(url, args.out, {name: digest[:10] for name, digest in digests.items()})
        probes = probe(url, args.out)
    finally:
        _start(args.oracle, work, args.port, "stop")
    doc = {"a1111": "v1.10.1", "checkpoints_sha256": {f"{name}.safetensors": d for name, d in digests.items()},
           "omp_num_threads": 1, "inpainting_probes": probes, "cases": cases}
    (args.out / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {len(cases)} cases to {args.out} ({total} bytes); checkpoints sha256 {digests}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

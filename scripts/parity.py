"""Pixel parity against A1111: send the same requests to A1111 and to this server, compare the PNGs.

    python scripts/parity.py --a1111 http://127.0.0.1:7890 --ours http://127.0.0.1:7861 [--only NAME ...]

Both servers must run the same checkpoint (e.g. the A1111 oracle's tiny model, loaded here with its yaml).
Every request is sent with ``override_settings`` ``randn_source: CPU`` to both, and every other setting a case
changes is pinned at its default in every request (A1111 does not always restore overridden settings). A1111 on a
machine without CUDA makes its "GPU" noise with torch's CPU generator, which is this server's "CPU" source.
img2img requests follow a txt2img request with the same seed (A1111 samples the init image's latents from its
global generator, which that request seeds). For each case it prints the share of pixel values within 1 grey
level and the mean and max difference; the exit status is 1 when any case is under 99%.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BASE: dict[str, Any] = {"prompt": "a red fox, (autumn forest:1.2)", "negative_prompt": "blurry", "steps": 6,
                        "width": 64, "height": 64, "seed": 42, "cfg_scale": 7, "sampler_name": "Euler a",
                        "override_settings": {"randn_source": "CPU", "CLIP_stop_at_last_layers": 1,
                                              "eta_noise_seed_delta": 0, "sgm_noise_multiplier": False,
                                              "always_discard_next_to_last_sigma": False, "sigma_min": 0.0,
                                              "sigma_max": 0.0, "rho": 0.0}}
SAMPLERS = ("DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
            "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++",
            "PLMS", "UniPC", "LCM")
SCHEDULES = ("Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal", "Align Your Steps",
             "Simple", "Normal", "DDIM", "Beta")


def _init_image() -> str:
    rng = np.random.default_rng(7)
    x = np.linspace(0, 255, 64, dtype=np.float32)
    arr = np.stack([np.add.outer(x, x) / 2, np.add.outer(x[::-1], x) / 2, np.full((64, 64), 128.0)], -1)
    arr = np.clip(arr + rng.normal(0, 12, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _mask() -> str:
    arr = np.zeros((64, 64), np.uint8)
    arr[16:48, 20:52] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def cases() -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    for name in SAMPLERS:
        out.append((f"sampler {name}", "txt2img", {"sampler_name": name}))
    for sched in SCHEDULES:
        out.append((f"schedule {sched}", "txt2img", {"sampler_name": "DPM++ 2M", "scheduler": sched}))
    out += [
        ("variation seed", "txt2img", {"subseed": 7, "subseed_strength": 0.3}),
        ("seed resize", "txt2img", {"seed_resize_from_w": 96, "seed_resize_from_h": 80}),
        ("batch of 2", "txt2img", {"batch_size": 2}),
        ("non-square", "txt2img", {"width": 96, "height": 64}),
        ("clip skip 2", "txt2img", {"override_settings": {**BASE["override_settings"], "CLIP_stop_at_last_layers": 2}}),
        ("prompt editing", "txt2img", {"prompt": "a [red:blue:0.5] fox AND a cat:0.6"}),
        ("ENSD with Euler a", "txt2img", {"override_settings": {**BASE["override_settings"],
                                                                "eta_noise_seed_delta": 31337}}),
        ("hires latent", "txt2img", {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.6,
                                     "hr_upscaler": "Latent"}),
        ("hires lanczos", "txt2img", {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.6,
                                      "hr_upscaler": "Lanczos"}),
        ("img2img", "img2img", {"denoising_strength": 0.6}),
        ("img2img DPM++ 2M SDE", "img2img", {"denoising_strength": 0.6, "sampler_name": "DPM++ 2M SDE"}),
        ("inpainting", "img2img", {"denoising_strength": 0.75, "mask": "@mask", "mask_blur": 4}),
        ("inpainting latent noise", "img2img", {"denoising_strength": 0.9, "mask": "@mask", "inpainting_fill": 2}),
        ("inpainting whole picture DDIM", "img2img", {"denoising_strength": 0.8, "mask": "@mask",
                                                      "inpaint_full_res": False, "sampler_name": "DDIM"}),
        ("img2img UniPC", "img2img", {"denoising_strength": 0.7, "sampler_name": "UniPC"}),
        ("img2img LCM", "img2img", {"denoising_strength": 0.7, "sampler_name": "LCM"}),
        ("DDIM eta 0.6", "txt2img", {"sampler_name": "DDIM", "eta": 0.6}),
        ("Euler churn", "txt2img", {"sampler_name": "Euler", "s_churn": 0.5, "s_noise": 1.01}),
        ("NGMS", "txt2img", {"s_min_uncond": 2.0}),
        ("hires with its own sampler", "txt2img", {"enable_hr": True, "hr_scale": 1.25, "denoising_strength": 0.5,
                                                   "hr_sampler_name": "DPM++ SDE", "hr_scheduler": "Exponential",
                                                   "hr_second_pass_steps": 3}),
        ("batch of 2, variation, SDE", "txt2img", {"batch_size": 2, "subseed": 5, "subseed_strength": 0.5,
                                                   "sampler_name": "DPM++ 2M SDE"}),
        ("SGM noise multiplier", "txt2img", {"override_settings": {**BASE["override_settings"],
                                                                   "sgm_noise_multiplier": True}}),
        ("always discard penultimate", "txt2img", {"sampler_name": "DPM++ 2M", "override_settings": {
            **BASE["override_settings"], "always_discard_next_to_last_sigma": True}}),
        ("schedule overrides", "txt2img", {"sampler_name": "DPM++ 2M", "override_settings": {
            **BASE["override_settings"], "sigma_min": 0.05, "sigma_max": 10.0, "rho": 5.0}}),
    ]
    return out


NETWORK_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("lora", "txt2img", {"prompt": "a red house <lora:parity:0.8>"}),
    ("lora te and unet weights, alias", "txt2img", {"prompt": "a red house <lora:parityAlias:0.5:1.2>"}),
    ("lora named weights", "txt2img", {"prompt": "a red house <lora:parity:unet=0.3:te=0.9>"}),
    ("loha", "txt2img", {"prompt": "a red house <lora:loha:1>"}),
    ("two networks, lyco tag", "txt2img", {"prompt": "a red house <lora:loha:0.7> <lyco:parity:0.4>"}),
    ("embedding, weighted, negative", "txt2img", {"prompt": "a photo of myemb, (myemb:1.3)",
                                                   "negative_prompt": "myemb"}),
    ("hypernetwork", "txt2img", {"prompt": "a red house <hypernet:hyper:0.7>"}),
    ("embedding, lora, hypernetwork", "txt2img", {"prompt": "myemb house <lora:parity:0.6> <hypernet:hyper:0.5>",
                                                   "sampler_name": "DPM++ 2M"}),
]
HASH_KEYS = ("Lora hashes", "TI hashes")


def _hashes(data: dict[str, Any]) -> dict[str, Any]:
    extra = json.loads(data.get("info") or "{}").get("extra_generation_params") or {}
    return {k: extra[k] for k in HASH_KEYS if k in extra}


def _post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:  # noqa: S310 - local servers given on the command line
        data: dict[str, Any] = json.loads(resp.read())
    return data


def _images(data: dict[str, Any], count: int) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"), dtype=np.int16)
            for b in data["images"][:count]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a1111", required=True)
    ap.add_argument("--ours", required=True)
    ap.add_argument("--only", nargs="*", default=None, help="case names (substrings) to run")
    ap.add_argument("--save", type=Path, default=None, help="folder to save both images of each case")
    ap.add_argument("--networks", action="store_true",
                    help="also the extra-network cases (both servers started with the folders that "
                         "scripts/make_parity_networks.py writes)")
    args = ap.parse_args(argv)
    init, mask = _init_image(), _mask()
    worst = 100.0
    for name, kind, changes in cases() + (NETWORK_CASES if args.networks else []):
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        body = {**BASE, **changes}
        if kind == "img2img":
            body["init_images"] = [init]
            if body.get("mask") == "@mask":
                body["mask"] = mask
        count = int(body.get("batch_size", 1))
        results, hashes = [], []
        for url in (args.a1111, args.ours):
            if kind == "img2img":  # seed A1111's global generator the same way on both sides
                _post(url, "/sdapi/v1/txt2img", {**BASE, "steps": 1})
            try:
                data = _post(url, f"/sdapi/v1/{kind}", body)
                results.append(_images(data, count))
                hashes.append(_hashes(data))
            except Exception as exc:  # noqa: BLE001 - report and go on with the next case
                results.append([])
                print(f"{name:28s} {url}: {exc}")
        if not results[0] or not results[1]:
            worst = 0.0
            continue
        diffs = [np.abs(a - b) for a, b in zip(results[0], results[1], strict=True)]
        d = np.concatenate([x.ravel() for x in diffs])
        share = float((d <= 1).mean() * 100)
        worst = min(worst, share)
        print(f"{name:28s} within 1: {share:6.2f}%  mean {d.mean():6.3f}  max {int(d.max()):3d}")
        if len(hashes) == 2 and hashes[0] != hashes[1]:
            print(f"{'':28s} infotext hashes differ: A1111 {hashes[0]}, ours {hashes[1]}")
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            for side, imgs in zip(("a1111", "ours"), results, strict=True):
                for k, arr in enumerate(imgs):
                    Image.fromarray(arr.astype(np.uint8)).save(args.save / f"{name.replace(' ', '_')}-{k}-{side}.png")
    print(f"worst case: {worst:.2f}% of pixel values within 1 grey level")
    return 0 if worst >= 99.0 else 1


if __name__ == "__main__":
    sys.exit(main())

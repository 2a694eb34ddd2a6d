"""Benchmark: a VAE decode of a large image whole and in tiles (``vae_tiling`` Never / Always): peak memory, time,
and how far the tiled pixels are from the whole ones.

Each decode runs in its own process, so its peak resident memory (CPU) or peak allocated memory (CUDA) is its own.
The VAE is the demo model's (``models/Stable-diffusion/demo-shapes.safetensors``, trained, so the pixel comparison
means something) or, with ``--model``, any single-file checkpoint with its config; the latent is the encoding of
a picture of shapes at ``--size``.

    python scripts/benchmark_vae_tiling.py --size 1536
    python scripts/benchmark_vae_tiling.py --model ~/models/v1-5-pruned-emaonly.safetensors --device cuda --size 2048
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODEL = ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _rss_now_and_reset_peak() -> int | None:
    """Linux: reset the process's peak resident size to its current one (``clear_refs``) and return it (KiB), so
    that the peak measured next is the decode's own, not the model loading's. None where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:
        return None


def _load_vae(model: Path, device: str):  # type: ignore[no-untyped-def]
    import torch

    from modules.hashing import HashCache
    from modules.models.loader import load_model
    from modules.models.registry import CheckpointRegistry

    with tempfile.TemporaryDirectory() as tmp:
        info = next(i for i in CheckpointRegistry([model.parent], HashCache(Path(tmp) / "h.json")).list()
                    if i.path == model)
        return load_model(info, torch.float32, None).vae.to(device)


def child(model: Path, device: str, mode: str, latent: Path, out: Path) -> None:
    """One decode; prints {"seconds", "peak_mib"}."""
    import resource

    import numpy as np
    import torch

    from modules.generation import latents as lat

    vae = _load_vae(model, device)
    z = torch.from_numpy(np.load(latent)).to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # elsewhere: only growth beyond loading's peak
    before = _rss_now_and_reset_peak()
    if mode == "Compact":  # the tiles Automatic takes on a CPU when the image would not fit: bfloat16 stores
        lat.wants_tiling = lambda *args, **kwargs: True  # type: ignore[assignment]
        mode = "Automatic"
    start = time.perf_counter()
    image = lat.decode(vae, z, tiling=mode)
    seconds = time.perf_counter() - start
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (_status_kib("VmHWM") - before) / 1024 if before is not None else \
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_max) / 1024
    np.save(out, image.numpy())
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "LATENT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.device, args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    import numpy as np
    from PIL import Image

    from modules.generation import latents as lat
    from modules.models import demo

    canvas = Image.new("RGB", (args.size, args.size), demo.COLOURS["white"])
    rng = random.Random(0)
    for y in range(0, args.size, demo.SIZE):
        for x in range(0, args.size, demo.SIZE):
            canvas.paste(demo.render(demo.random_scene(rng)), (x, y))
    with tempfile.TemporaryDirectory() as tmp:
        latent = Path(tmp) / "z.npy"
        vae = _load_vae(args.model, "cpu")
        np.save(latent, lat.encode(vae, lat.from_pil([canvas]), tiling="Always").numpy())
        del vae
        results = {}
        for mode in ("Never", "Always", "Compact"):
            out = Path(tmp) / f"{mode}.npy"
            done = subprocess.run([sys.executable, __file__, "--model", str(args.model), "--device", args.device,
                                   "--child", mode, str(latent), str(out)], capture_output=True, text=True,
                                  check=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            results[mode]["image"] = np.load(out)
    whole = results["Never"]
    print(f"decode of {args.size}x{args.size} on {args.device} ({args.model.name}):")
    print(f"  whole: {whole['peak_mib']:.0f} MiB peak, {whole['seconds']:.2f} s")
    for mode, label in (("Always", "tiled"), ("Compact", "tiled, bfloat16 stores (Automatic on a CPU)")):
        tiled = results[mode]
        diff = np.abs(whole["image"] - tiled["image"]) * 255
        print(f"  {label}: {tiled['peak_mib']:.0f} MiB peak, {tiled['seconds']:.2f} s; memory / whole "
              f"{tiled['peak_mib'] / max(whole['peak_mib'], 1):.2f}; pixels: mean difference {diff.mean():.2f} "
              f"levels, 99th percentile {np.percentile(diff, 99):.1f}")


if __name__ == "__main__":
    main()

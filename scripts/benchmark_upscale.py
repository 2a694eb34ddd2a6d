"""Benchmark: peak memory and time of a x4 model upscale at 512², 1024² and 2048² inputs, tiled (the settings'
defaults: 192-pixel tiles, 8 overlap) against the same model run on the whole image, each in its own process.

    OMP_NUM_THREADS=1 python scripts/benchmark_upscale.py
    python scripts/benchmark_upscale.py --model models/ESRGAN/4x-UltraSharp.pth --sizes 512 1024 --device cuda

Without ``--model`` a small random-weight Real-ESRGAN Compact (x4) built from spandrel's own class is used: its
activations are what grows with the image, as with any upscaler. The peak is the process's maximum resident set
(CPU) or the device's peak allocation (CUDA), after the model is loaded, so it is what the image costs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _child(model: str, size: int, tile: int, device: str) -> dict[str, float]:
    import numpy as np
    import torch
    from PIL import Image

    from modules.upscalers.registry import UpscalerRegistry

    path = Path(model)
    folder = path.parent
    registry = UpscalerRegistry(folder.parent, lambda: torch.device(device), extra_dirs=[("ESRGAN", folder)],
                                tiles=lambda kind: (tile, 8))
    upscaler = registry.find(path.stem)
    assert upscaler is not None, f"{path} not found"
    registry.model(upscaler)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    out = registry.upscale(image, path.stem, 4)
    seconds = time.perf_counter() - start
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    return {"peak_mb": peak, "seconds": seconds, "out": out.width}


def _tiny_model(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from modules.upscalers.spandrel_loader import spandrel

    spandrel()
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    path = folder / "tiny-compact-x4.safetensors"
    save_file(Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4).state_dict(), str(path))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), int(args.child[2]), args.device)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ESRGAN"
        folder.mkdir()
        model = Path(args.model) if args.model else _tiny_model(folder)
        print(f"model: {model.name}, x4, {args.device}; peak memory beyond the loaded model")
        print(f"{'input':>7} {'output':>7} {'tiled MB':>9} {'whole MB':>9} {'ratio':>6} {'tiled s':>8} {'whole s':>8}")
        for size in args.sizes:
            runs = []
            for tile in (192, 0):
                cmd = [sys.executable, __file__, "--device", args.device, "--child", str(model), str(size),
                       str(tile)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None)
            tiled, whole = runs
            if tiled is None:
                print(f"{size:>7} failed")
                continue
            whole_mb = f"{whole['peak_mb']:9.0f}" if whole else f"{'failed':>9}"
            ratio = f"{whole['peak_mb'] / max(tiled['peak_mb'], 1):6.1f}" if whole else f"{'-':>6}"
            whole_s = f"{whole['seconds']:8.1f}" if whole else f"{'-':>8}"
            print(f"{size:>7} {int(tiled['out']):>7} {tiled['peak_mb']:9.0f} {whole_mb} {ratio} "
                  f"{tiled['seconds']:8.1f} {whole_s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

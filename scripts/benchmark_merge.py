"""Benchmark: our streamed checkpoint merge against a naive load-everything merge (A1111's way), same files.

Builds two synthetic checkpoints with SD 1.x's real key layout (1,131 keys, real shapes, float16 by default; the first
dimension of every tensor scaled to reach ``--size-gb``), writing random data tensor by tensor so building them is
itself bounded in memory. Then, for each size, runs in separate processes a Weighted sum merge (M = 0.3) with our
merger and with the naive one, and prints each one's peak RSS (``VmHWM`` of the process) and time, and the ratios.

    python scripts/benchmark_merge.py                      # 0.5 GB and 1 GB models (about 6 GB of disk)
    python scripts/benchmark_merge.py --size-gb 2 --dtype fp32 --recipe

Target: our peak RSS at most a quarter of the naive one and about the same at every size; time no worse.
``--recipe`` adds the metadata recipe, which needs the sha256 of both inputs (one more read of each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POS_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


def sd1_layout() -> list[tuple[str, tuple[int, ...]]]:
    """The keys and shapes of a real SD 1.x checkpoint (built on the meta device: no memory, no weights)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules.models import convert
    from modules.models.families import bundled_config_dir

    folder = bundled_config_dir("sd1")
    read = lambda p: json.loads((folder / p).read_text())  # noqa: E731
    te_cfg = {k: v for k, v in read("text_encoder/config.json").items()
              if not k.startswith("_") and k != "architectures"}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(read("unet/config.json"))
        vae = AutoencoderKL.from_config(read("vae/config.json"))
        te = CLIPTextModel(CLIPTextConfig(**te_cfg))
    sd = convert.unet_to_ldm(unet.state_dict(), unet.config)
    sd.update(convert.vae_to_ldm(vae.state_dict(), vae.config))
    sd.update(convert.clip_to_ldm(te.state_dict(), "cond_stage_model.transformer."))
    return [(k, tuple(v.shape)) for k, v in sd.items()]


def build_checkpoint(path: Path, layout: list[tuple[str, tuple[int, ...]]], size_gb: float, dtype_name: str,
                     seed: int) -> int:
    """Write a checkpoint of about ``size_gb`` with ``layout``'s keys; random data, a chunk at a time."""
    import torch

    from modules.merge.safetensors_io import StreamingWriter

    dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    full = sum(math.prod(s) for _, s in layout) * torch.empty((), dtype=dtype).element_size()
    scale = size_gb * 1e9 / full
    shapes = [(k, (max(1, round(s[0] * scale)), *s[1:]) if s else s, dtype) for k, s in layout]
    shapes.append((POS_IDS, (1, 77), torch.int64))
    g = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        writer = StreamingWriter(f, shapes, {"format": "pt"})
        for key, shape, dt in shapes:
            if dt == torch.int64:
                writer.write(key, torch.arange(77)[None])
                continue
            row = max(1, math.prod(shape[1:]))
            step = max(1, (16 << 20) // row)
            for start in range(0, shape[0], step):
                rows = min(step, shape[0] - start)
                writer.write(key, (torch.randn((rows, *shape[1:]), generator=g) * 0.02).to(dt))
        writer.finish()
    return path.stat().st_size


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``). Not ``ru_maxrss``: Linux carries that over ``exec`` from the parent
    that forked the child, so a child of a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ours(a: str, b: str, out: str, recipe: bool) -> None:
    from modules.merge import Merge, MergeOptions, ModelRef

    started = time.perf_counter()
    options = MergeOptions(multiplier=0.3, add_merge_recipe=recipe, config_source=3)
    with Merge(ModelRef.from_path(a), ModelRef.from_path(b), None, options, output=Path(out)) as merge:
        merge.run()
    print(json.dumps({"merge_seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}))


def child_naive(a: str, b: str, out: str) -> None:
    """A1111's way: both models loaded whole, merged in place, saved in one go."""
    from safetensors.torch import load_file, save_file

    started = time.perf_counter()
    theta_0, theta_1 = load_file(a), load_file(b)
    for key in theta_0:
        if "model" in key and key in theta_1 and key != POS_IDS:
            theta_0[key] = (0.7 * theta_0[key]) + (0.3 * theta_1[key])
    del theta_1
    save_file(theta_0, out, metadata={"format": "pt"})
    saved = time.perf_counter()
    del theta_0
    from modules.hashing import sha256_of_files

    sha256_of_files([Path(out)])  # A1111 then computes the new model's hash (calculate_shorthash) by reading it
    print(json.dumps({"merge_seconds": saved - started, "hash_seconds": time.perf_counter() - saved,
                      "peak_rss_mb": peak_rss_mb()}))


def run_child(kind: str, a: Path, b: Path, out: Path, recipe: bool) -> dict[str, float]:
    """Run one merge in a fresh process; its own timing and peak RSS, and the process's wall time."""
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", kind, str(a), str(b), str(out)] + (["--recipe"] if recipe else [])
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        proc = subprocess.run(cmd, stdout=stdout, stderr=stderr, text=True)
        wall = time.perf_counter() - started
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{kind} merge failed: {stderr.read().strip()[-2000:]}")
        result = json.loads(stdout.read().strip().splitlines()[-1])
    result.update(wall_seconds=wall, out_bytes=out.stat().st_size)
    out.unlink(missing_ok=True)
    return result


def bench_size(folder: Path, layout, size_gb: float, dtype: str, recipe: bool,
               repeat: int) -> dict[str, dict[str, float]]:
    a, b = folder / f"a-{size_gb}.safetensors", folder / f"b-{size_gb}.safetensors"
    t0 = time.perf_counter()
    size = build_checkpoint(a, layout, size_gb, dtype, 1)
    build_checkpoint(b, layout, size_gb, dtype, 2)
    os.sync()  # the inputs' write-back must not slow down the first run
    print(f"\n== {size / 1e9:.2f} GB per model ({dtype}, {len(layout) + 1} keys), built in "
          f"{time.perf_counter() - t0:.1f} s")
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "naive": []}
    for _ in range(repeat):  # alternated, so a busy moment on the machine does not favour one side
        for kind in ("ours", "naive"):
            r = run_child(kind, a, b, folder / f"out-{kind}.safetensors", recipe)
            runs[kind].append(r)
            hashed = f" (+{r['hash_seconds']:.2f} s to hash the result, as A1111 does)" if "hash_seconds" in r else \
                " (result hashed while written)"
            print(f"{kind:>6}: peak RSS {r['peak_rss_mb']:8.0f} MB   merge {r['merge_seconds']:6.2f} s{hashed}   "
                  f"process {r['wall_seconds']:6.2f} s")
    results = {kind: {"peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                      "merge_seconds": min(r["merge_seconds"] for r in rs),
                      "hashed_seconds": min(r["merge_seconds"] + r.get("hash_seconds", 0.0) for r in rs),
                      "wall_seconds": min(r["wall_seconds"] for r in rs)} for kind, rs in runs.items()}
    o, n = results["ours"], results["naive"]
    print(f" ratio: peak RSS ours/naive = {o['peak_rss_mb'] / n['peak_rss_mb']:.3f}   time ours/naive = "
          f"{o['merge_seconds'] / n['merge_seconds']:.2f} ({o['merge_seconds'] / n['hashed_seconds']:.2f} against "
          f"naive + hashing the result) (best of {repeat})")
    a.unlink()
    b.unlink()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, nargs="+", default=[0.5, 1.0], help="model sizes to run (GB each)")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--dir", default=None, help="where to put the files (default: the system's temporary folder; "
                   "give a folder on disk if that is a RAM disk)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each merge per size (best time is kept)")
    p.add_argument("--recipe", action="store_true", help="also write the merge recipe (hashes both inputs)")
    p.add_argument("--child", nargs=4, metavar=("KIND", "A", "B", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, a, b, out = args.child
        child_ours(a, b, out, args.recipe) if kind == "ours" else child_naive(a, b, out)
        return 0
    layout = sd1_layout()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="merge-bench-") as tmp:
        results = {size: bench_size(Path(tmp), layout, size, args.dtype, args.recipe, args.repeat)
                   for size in args.size_gb}
    print("\nsummary (peak RSS MB, merge s):")
    for size, r in results.items():
        print(f"  {size:5.2f} GB: ours {r['ours']['peak_rss_mb']:.0f} MB {r['ours']['merge_seconds']:.2f} s | "
              f"naive {r['naive']['peak_rss_mb']:.0f} MB {r['naive']['merge_seconds']:.2f} s "
              f"({r['naive']['hashed_seconds']:.2f} s with the result's hash)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

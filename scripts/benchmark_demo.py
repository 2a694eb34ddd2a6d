"""Benchmark: the built-in demo model's 20-step 128x128 image (target: at most 1.5 s on 2 CPU cores), through the
engine and through a bare diffusers pipeline loaded from the same file, and how well it follows its prompts.

Prints the median seconds per image of each, their ratio (engine / diffusers), and the prompt adherence on
``--prompts`` random prompts of its vocabulary with random seeds, judged by pixel statistics
(``modules/models/demo.py``): background colour, shape colour, shape.

    OMP_NUM_THREADS=2 python scripts/benchmark_demo.py
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark_txt2img import time_runs  # noqa: E402  (same folder: the warm-up-then-median rule)

from modules.models import demo  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / f"{demo.DEMO_NAME}.safetensors"


def adherence(engine: object, prompts: int, seed: int) -> tuple[int, int, int]:
    from modules.requests import GenerationRequest

    rng = random.Random(seed)
    hits = [0, 0, 0]
    for _ in range(prompts):
        scene = demo.random_scene(rng)
        req = GenerationRequest(prompt=scene.caption, seed=rng.randrange(2**31), **demo.DEFAULTS)
        seen = demo.judge(engine.txt2img(req).result.images[0])  # type: ignore[attr-defined]
        hits[0] += seen.background == scene.background
        hits[1] += seen.colour == scene.colour
        hits[2] += seen.shape == scene.shape
    return hits[0], hits[1], hits[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHIPPED)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from modules.app import build_engine, quiet_libraries
    from modules.models.tokenizer import build_clip_tokenizer
    from modules.paths import Paths
    from modules.requests import GenerationRequest

    quiet_libraries()
    root = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    try:
        folder = root / "models" / "Stable-diffusion"
        folder.mkdir(parents=True)
        shutil.copy2(args.model, folder / args.model.name)
        shutil.copytree(args.model.with_suffix(""), folder / args.model.stem)
        engine = build_engine(Paths.create(root), device="cpu", precision="fp32")
        req = GenerationRequest(prompt="a red circle on a blue background", seed=3, **demo.DEFAULTS)
        ours = time_runs(lambda: engine.txt2img(req), args.repeats)
        pipe = StableDiffusionPipeline.from_single_file(str(args.model), config=str(args.model.with_suffix("")),
                                                        local_files_only=True, torch_dtype=torch.float32,
                                                        tokenizer=build_clip_tokenizer(),
                                                        safety_checker=None, requires_safety_checker=False)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
        pipe.set_progress_bar_config(disable=True)

        def bare() -> None:
            pipe(req.prompt, height=128, width=128, num_inference_steps=20, guidance_scale=req.cfg_scale,
                 generator=torch.Generator().manual_seed(3))

        theirs = time_runs(bare, args.repeats)
        print(f"threads: {torch.get_num_threads()}  a 20-step 128x128 image: engine {ours:.2f} s, bare diffusers "
              f"{theirs:.2f} s, ratio {ours / theirs:.2f} (target: engine <= 1.5 s)")
        b, c, s = adherence(engine, args.prompts, args.seed)
        n = args.prompts
        print(f"adherence on {n} prompts: background {b}/{n} ({b / n:.0%}, target 90%), shape colour {c}/{n} "
              f"({c / n:.0%}, target 85%), shape {s}/{n} ({s / n:.0%}, target 75%)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

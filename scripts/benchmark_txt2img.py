"""Benchmark: the same txt2img work through the engine and through a bare diffusers pipeline, in one process.

Prints the median time of each and their ratio (engine / diffusers). Both load the same diffusers folder of a
random-weight model: ``--size tiny`` (the test replica) or ``--size real`` (full SD 1.5 or SDXL shapes; use a GPU).
With ``--modes`` the engine runs once per mode (memory modes, ``compile`` for torch.compile, ``tome`` for token
merging at 0.5, ``fp8`` for 8-bit weight storage), printing its speed (sampling steps per second of the whole job)
and, on CUDA, its peak allocated memory, beside the bare pipeline's.

    python scripts/benchmark_txt2img.py
    python scripts/benchmark_txt2img.py --size real --device cuda --width 512 --height 512 --steps 20
    python scripts/benchmark_txt2img.py --size real --device cuda --modes normal,medvram,lowvram,compile,tome
    python scripts/benchmark_txt2img.py --size real --family sdxl --device cuda --width 1024 --height 1024 \
        --modes normal,medvram
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_model(root: Path, family: str, size: str) -> Path:
    from modules.models.tiny import _pipeline_class, _pipeline_kwargs, write_tiny_model

    if size == "tiny":
        return write_tiny_model(family, root, name="bench", fmt="diffusers")
    import json

    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from modules.models.families import FAMILIES, bundled_config_dir
    from modules.models.tokenizer import build_clip_tokenizer

    src = bundled_config_dir(family)
    read = lambda p: json.loads((src / p).read_text())  # noqa: E731
    torch.manual_seed(0)
    clean = lambda c: {k: v for k, v in c.items() if not k.startswith("_") and k != "architectures"}  # noqa: E731
    parts = {
        "unet": diffusers.UNet2DConditionModel.from_config(read("unet/config.json")),
        "vae": diffusers.AutoencoderKL.from_config(read("vae/config.json")),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**clean(read("text_encoder/config.json")))),
        "tokenizer": build_clip_tokenizer(FAMILIES[family].pad_token),
        "scheduler": getattr(diffusers, read("scheduler/scheduler_config.json")["_class_name"]).from_config(
            read("scheduler/scheduler_config.json")),
    }
    if FAMILIES[family].is_xl:
        te2_config = CLIPTextConfig(**clean(read("text_encoder_2/config.json")))
        parts["text_encoder_2"] = CLIPTextModelWithProjection(te2_config)
        parts["tokenizer_2"] = build_clip_tokenizer("!")
    target = root / "bench"
    _pipeline_class(family)(**_pipeline_kwargs(family, parts)).save_pretrained(target)
    return target


def time_runs(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--family", choices=["sd1", "sdxl"], default="sd1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--modes", default="", help="comma-separated: normal, medvram, lowvram, compile, tome, fp8")
    args = ap.parse_args()

    import diffusers
    import torch

    from modules.app import build_engine
    from modules.paths import Paths
    from modules.requests import GenerationRequest

    precision = args.precision or ("fp16" if args.device.startswith("cuda") else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        folder = build_model(data / "models" / "Stable-diffusion", args.family, args.size)
        engine = build_engine(Paths.create(data), device=args.device, precision=precision)
        prompt, negative = "a photograph of an astronaut riding a horse", "blurry, lowres"
        req = GenerationRequest(prompt=prompt, negative_prompt=negative, sampler_name="Euler", scheduler="Uniform",
                                steps=args.steps, width=args.width, height=args.height, seed=1,
                                batch_size=args.batch_size, cfg_scale=7.0)
        cls = diffusers.StableDiffusionXLPipeline if args.family == "sdxl" else diffusers.StableDiffusionPipeline
        pipe = cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True).to(args.device)
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                      timestep_spacing="linspace")
        pipe.set_progress_bar_config(disable=True)

        def sync():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        def run_engine():
            engine.txt2img(req)
            sync()

        def run_diffusers():
            gen = torch.Generator("cpu").manual_seed(1)
            pipe(prompt, negative_prompt=negative, num_inference_steps=args.steps, guidance_scale=7.0,
                 width=args.width, height=args.height, generator=gen, num_images_per_prompt=args.batch_size)
            sync()

        cuda = args.device.startswith("cuda")

        def peak_of(fn) -> tuple[float, float | None]:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t = time_runs(fn, args.repeats)
            return t, (torch.cuda.max_memory_allocated() / 2**30 if cuda else None)

        device_name = torch.cuda.get_device_name() if cuda else "cpu"
        print(f"model: {args.family} {args.size}, {args.width}x{args.height}, {args.steps} steps, batch "
              f"{args.batch_size}, {precision} on {device_name}, median of {args.repeats}")
        if not args.modes:
            t_engine = time_runs(run_engine, args.repeats)
            t_diffusers = time_runs(run_diffusers, args.repeats)
            print(f"engine   {t_engine:8.3f} s")
            print(f"diffusers{t_diffusers:8.3f} s")
            print(f"ratio    {t_engine / t_diffusers:8.3f}  (engine / bare diffusers)")
            return 0
        import dataclasses

        def show(name: str, t: float, peak: float | None, base: float) -> None:
            memory = f"{peak:7.2f} GiB peak" if peak is not None else "   (no CUDA: no peak)"
            print(f"{name:10s} {args.steps / t:8.2f} it/s  {t:7.3f} s  {memory}  speed x{base / t:5.2f} of diffusers")

        t_diffusers, peak_diffusers = peak_of(run_diffusers)
        show("diffusers", t_diffusers, peak_diffusers, t_diffusers)
        pipe.to("cpu")
        engine.txt2img(req)  # loads the model
        base_config = engine.models.config
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            config = base_config
            if mode in ("normal", "medvram", "lowvram"):
                config = dataclasses.replace(base_config, memory=mode)
            elif mode == "compile":
                config = dataclasses.replace(base_config, memory="normal", compile=True)
            elif mode == "fp8":
                config = dataclasses.replace(base_config, memory="normal", fp8="Enable")
            elif mode != "tome":
                raise SystemExit(f"unknown mode {mode!r}")
            engine.models.apply_config(config)
            run = (lambda: (engine.txt2img(req.replace(token_merging_ratio=0.5)), sync())) if mode == "tome" \
                else run_engine
            t, peak = peak_of(run)
            show(mode, t, peak, t_diffusers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

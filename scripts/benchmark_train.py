"""Benchmark: LoRA training steps per second, the product's training job against a bare diffusers + peft loop doing
the same work (target: a ratio of at least 0.95).

Both train the same LoRA (rank ``--rank`` on the UNet's attention projections, peft layers) on copies of the same
loaded model, with the same images (latents encoded once), captions, batch size, AdamW and learning rate:

  ours   a ``TrainLoraJob`` through the application's queue (A1111 prompt handling of the captions, the loss of
         the model's own schedule, progress events, the loss log)
  bare   the loop a diffusers + peft script writes: ``inject_adapter_in_model``, ``DDPMScheduler.add_noise``, the
         text encoder on the tokenized caption, UNet forward, MSE, backward, AdamW step

Each side's step times are taken after ``--warmup`` steps; their medians give steps per second, and the ratio
ours / bare is printed. The model is the tiny random-weight SD 1.x test model by default; ``--ckpt PATH`` uses a
real single-file SD 1.x checkpoint (for a real-size measurement on a GPU with ``--device cuda --size 512``).

    OMP_NUM_THREADS=2 python scripts/benchmark_train.py
    python scripts/benchmark_train.py --ckpt ~/models/v1-5-pruned-emaonly.safetensors --device cuda --size 512
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_dataset(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a photo, tag{i % 5}, red, blue", encoding="utf-8")


def run_ours(app: Any, data: Path, args: argparse.Namespace) -> list[float]:
    from modules.training.specs import TrainLoraJob, TrainOptions

    opts = TrainOptions(data_root=str(data), training_width=args.size, training_height=args.size,
                        steps=args.warmup + args.steps, batch_size=args.batch, learn_rate="0.0001",
                        create_image_every=0, save_every=0, seed=1, write_csv_every=0,
                        template_filename="filewords.txt", log_directory="bench_logs")
    stamps: dict[int, float] = {}
    job = app.submit(TrainLoraJob(name=f"bench{time.time_ns()}", options=opts, rank=args.rank, alpha=args.rank,
                                  overwrite=True))
    job.control.subscribe(lambda event: stamps.setdefault(event.sampling_step, time.perf_counter()))
    job.wait()
    if job.error:
        raise SystemExit(f"training failed: {job.error}")
    steps = sorted(s for s in stamps if s >= args.warmup)
    return [stamps[b] - stamps[a] for a, b in zip(steps, steps[1:], strict=False)]


def run_bare(parts: Any, data: Path, args: argparse.Namespace) -> list[float]:
    """The diffusers + peft loop on copies of the same components."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig, inject_adapter_in_model

    from modules.generation import latents as lat

    device = parts.device
    unet = copy.deepcopy(parts.unet).float().requires_grad_(False)
    text_encoder = copy.deepcopy(parts.text_encoder).float().requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=args.rank, lora_alpha=args.rank,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]), unet)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    scheduler = DDPMScheduler.from_config(parts.scheduler_config)
    files = sorted(data.glob("*.png"))
    x0 = torch.cat([lat.encode(parts.vae, lat.from_pil([Image.open(f)])) for f in files]).to(device)
    captions = [f.with_suffix(".txt").read_text(encoding="utf-8") for f in files]
    ids = parts.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids.to(device)
    gen = torch.Generator().manual_seed(1)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        idx = torch.randint(0, len(files), (args.batch,), generator=gen)
        latents = x0[idx]
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=gen).to(device)
        with torch.no_grad():
            context = text_encoder(ids[idx])[0]
        pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="a single-file SD 1.x checkpoint (default: the tiny test model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="ours and bare alternate this many times")
    args = parser.parse_args()

    from modules.app import App, StartOptions, quiet_libraries
    from modules.models.tiny import write_tiny_model

    quiet_libraries()
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        models = root / "models" / "Stable-diffusion"
        models.mkdir(parents=True)
        if args.ckpt:
            (models / args.ckpt.name).symlink_to(args.ckpt.resolve())
        else:
            source = write_tiny_model("sd1", root / "store", fmt="safetensors")
            shutil.copy2(source, models / source.name)
            if source.with_suffix("").is_dir():
                shutil.copytree(source.with_suffix(""), models / source.stem)
        make_dataset(root / "data", args.images, args.size)
        app = App(StartOptions(data_dir=root, device=args.device, skip_load_model=True))
        app.start()
        try:
            parts = app.models.get(None)
            ours: list[float] = []
            bare: list[float] = []
            for _ in range(args.rounds):
                ours += run_ours(app, root / "data", args)
                bare += run_bare(parts, root / "data", args)
        finally:
            app.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours_rate, bare_rate = 1 / statistics.median(ours), 1 / statistics.median(bare)
    print(f"model: {args.ckpt or 'tiny SD 1.x'}  device: {args.device}  size: {args.size}  batch: {args.batch}  "
          f"rank: {args.rank}  steps timed: {len(ours)} / {len(bare)}")
    print(f"ours: {ours_rate:.2f} steps/s   bare diffusers + peft: {bare_rate:.2f} steps/s")
    print(f"ratio ours / bare: {ours_rate / bare_rate:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()

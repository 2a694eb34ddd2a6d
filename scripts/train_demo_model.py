"""The recipe of the built-in demo model: a small SD 1.x-architecture model trained from scratch on coloured shapes.

    python scripts/train_demo_model.py                      # about 2.5 hours on 2 CPU cores
    python scripts/train_demo_model.py --device cuda        # much faster on a GPU
    python scripts/train_demo_model.py --vae-minutes 1 --unet-minutes 3 --images 500   # a quick trial

Stages (each resumes from its saved state in ``--work``, so an interrupted run continues):

1. data: ``--images`` scenes "a {colour} {shape} on a {colour} background" drawn at 128x128 from ``--seed``
   (``modules/models/demo.py``);
2. vae: an ``AutoencoderKL`` with f=8 (4 latent channels, 16x16 latents) trained on the images (L1 + MSE, a small
   KL term); its latent scale is set so that the latents have unit variance, as SD's 0.18215 does;
3. vae decoder: the decoder fine-tuned on whole images with the encoder frozen (truer flat colours; the latent space
   does not change);
4. unet: the UNet (cross-attention, SD 1.x blocks) and the CLIP text encoder (the real CLIP tokenizer; the token
   table stays as initialised) trained together from scratch by the product's trainer in full-training mode
   (``modules/training``): SD 1.x's noise schedule, epsilon prediction, min-SNR weighting, 10% empty captions for
   classifier-free guidance, AdamW with warm-up and a cosine decay over the steps the time budget allows;
5. export: one ``.safetensors`` in the original LDM key layout (fp16) with its config folder beside it and the
   generation defaults in its metadata, written to ``--out``.

Time budgets are wall-clock minutes per stage; the step counts follow from the measured speed, so the result
depends on the machine, while the data, initial weights and sample order depend only on ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modules.models import demo  # noqa: E402

UNET = {"block_out_channels": [64, 128, 128, 128], "layers_per_block": 1, "attention_head_dim": 4,
        "cross_attention_dim": 128, "sample_size": 16}
VAE = {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "sample_size": demo.SIZE}
TEXT = {"hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4, "num_hidden_layers": 3,
        "projection_dim": 128}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def configs() -> dict[str, dict[str, Any]]:
    from modules.models.tiny import tiny_config

    cfg = tiny_config("sd1")
    cfg["unet"].update(UNET)
    cfg["vae"].update(VAE)
    cfg["text_encoder"].update(TEXT)
    return cfg


def scenes(count: int, seed: int) -> list[demo.Scene]:
    rng = random.Random(seed)
    return [demo.random_scene(rng) for _ in range(count)]


# -- the VAE -----------------------------------------------------------------------------------------------------
def train_vae(cfg: dict[str, Any], data: list[demo.Scene], work: Path, minutes: float, device: torch.device,
              seed: int) -> Any:
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(cfg["vae"]).to(device)
    done = work / "vae.safetensors"
    if done.is_file():
        vae.load_state_dict(load_file(str(done)))
        log("vae: loaded from the work folder")
        return vae.eval()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    rng = random.Random(seed + 1)
    deadline = time.monotonic() + minutes * 60
    step = 0
    while time.monotonic() < deadline:
        batch = torch.stack([_pixels(demo.render(data[rng.randrange(len(data))])) for _ in range(8)]).to(device)
        crop = rng.randrange(0, demo.SIZE - 64 + 1, 8), rng.randrange(0, demo.SIZE - 64 + 1, 8)
        x = batch[:, :, crop[0]:crop[0] + 64, crop[1]:crop[1] + 64] * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean() + 1e-6 * posterior.kl().mean()
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 100)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % 100 == 0:
            log(f"vae step {step}: loss {float(loss):.4f}")
    vae.eval()
    with torch.no_grad():  # SD's latent scale: unit variance of the latents
        sample = torch.stack([_pixels(demo.render(s)) for s in data[:256]]).to(device) * 2 - 1
        std = float(vae.encode(sample).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    log(f"vae: {step} steps, latent std {std:.4f}, scaling factor {vae.config.scaling_factor}")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(done))
    (work / "vae_scale.json").write_text(json.dumps({"scaling_factor": vae.config.scaling_factor}))
    return vae


def train_decoder(vae: Any, data: list[demo.Scene], work: Path, minutes: float, device: torch.device,
                  seed: int) -> Any:
    """Fine-tune the VAE's decoder on whole images with the encoder frozen (as SD's "ft-MSE" VAE was made): the
    latent space the UNet learns stays the same, and flat colours come back truer. The latents get a little noise
    so that the decoder forgives the sampler's small errors."""
    from safetensors.torch import load_file, save_file

    done = work / "vae-decoder.safetensors"
    if done.is_file():
        vae.load_state_dict(load_file(str(done)))
        log("vae decoder: loaded from the work folder")
        return vae.eval()
    if minutes <= 0:
        return vae.eval()
    torch.manual_seed(seed + 3)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    rng = random.Random(seed + 4)
    start = time.monotonic()
    deadline = start + minutes * 60
    step = 0
    while (now := time.monotonic()) < deadline:
        batch = torch.stack([_pixels(demo.render(data[rng.randrange(len(data))])) for _ in range(8)]).to(device)
        x = batch * 2 - 1
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mean
            latents = latents + 0.05 * latents.std() * torch.randn_like(latents)
        recon = vae.decode(latents).sample
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean()
        progress = (now - start) / (deadline - start)
        for group in optimizer.param_groups:  # warm-up, then a cosine decay over the time budget
            group["lr"] = 2e-4 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * progress))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % 100 == 0:
            log(f"vae decoder step {step}: loss {float(loss):.4f}")
    vae.requires_grad_(False)
    vae.eval()
    log(f"vae decoder: {step} steps")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(done))
    return vae


def _pixels(image: Any) -> torch.Tensor:
    from modules.training.dataset import pixels

    return pixels(image)[0]


# -- the UNet and text encoder -----------------------------------------------------------------------------------
def build_parts(cfg: dict[str, Any], vae: Any, device: torch.device, seed: int) -> Any:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules.models.families import FAMILIES
    from modules.models.loader import ModelParts
    from modules.models.tiny import _clean
    from modules.models.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel.from_config(cfg["unet"]).to(device)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_clean(cfg["text_encoder"]))).to(device)
    return ModelParts(FAMILIES["sd1"], "epsilon", unet, vae, text_encoder, build_clip_tokenizer(),
                      dict(cfg["scheduler"]))


def train_unet(parts: Any, data: list[demo.Scene], work: Path, minutes: float, seed: int, batch: int,
               lr: float) -> int:
    from modules.generation.conditioning import TextEncoder
    from modules.generation.control import JobControl
    from modules.training import core, schedule
    from modules.training.dataset import Item
    from modules.training.full import FullSubject
    from modules.training.specs import TrainOptions

    subject = FullSubject(parts)
    state = work / "unet-state.safetensors"
    if state.is_file():
        subject.load(state)
        log(f"unet: continuing from step {subject.step}")
        if minutes <= 0:
            for module in (parts.unet, parts.text_encoder):
                module.eval()
            return subject.step
    opts = TrainOptions(batch_size=batch, learn_rate=str(lr), latent_sampling_method="deterministic",
                        caption_dropout=0.1, min_snr_gamma=5.0, flip=True, create_image_every=0, save_every=500,
                        seed=seed, write_csv_every=50, steps=10**9)
    control = JobControl()
    items = [Item(Path(f"{i}.png"), demo.render(s), s.caption) for i, s in enumerate(data)]
    log(f"unet: encoding {len(items)} images")
    prepared = core.prepare(parts, items, opts, torch.Generator().manual_seed(seed), control)
    inputs = core.LossInputs.build(parts, TextEncoder(parts), opts, seed + subject.step, ["[filewords]"], "")
    planned = _planned_steps(inputs, prepared, subject, minutes, batch)
    total = subject.step + planned
    rates = schedule.plan(str(lr), total, subject.step, "cosine", warmup=min(500, planned // 10))
    log(f"unet: training from step {subject.step} to {total} (about {minutes:.0f} min)")
    timer = threading.Timer(minutes * 60, control.interrupt)
    timer.daemon = True
    timer.start()
    last = time.monotonic()

    def save(step: int, optimizer: torch.optim.Optimizer) -> Path:
        nonlocal last
        path = subject.save(state, step, optimizer)
        losses = [loss for _, loss in control.losses[-500:]]
        log(f"unet step {step}: mean loss {sum(losses) / len(losses):.4f} ({(time.monotonic() - last) / 500:.2f} s"
            "/step), saved")
        last = time.monotonic()
        return path

    hooks = core.Hooks(save=save, preview=lambda step, caption: None)
    with torch.enable_grad():
        result = core.run_loop(inputs, prepared, subject, rates, control, hooks, work, "unet_loss.csv", 50)
    timer.cancel()
    subject.save(state, result.step, result.optimizer)
    log(f"unet: stopped at step {result.step}")
    for module in (parts.unet, parts.text_encoder):
        module.eval()
    return result.step


def _planned_steps(inputs: Any, prepared: Any, subject: Any, minutes: float, batch: int) -> int:
    """How many steps fit the time budget, from the speed of a few measured steps (their updates thrown away)."""
    import copy

    from modules.training import core

    params = [p for g in subject.param_groups() for p in g["params"]]
    saved = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=0.0)
    indices = list(range(min(batch, len(prepared.items))))
    rng_state = copy.deepcopy(inputs.rng.getstate()), inputs.generator.get_state()
    timings = []
    for _ in range(4):
        start = time.perf_counter()
        loss, _ = core.batch_loss(inputs, prepared, indices)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - start)
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
    inputs.rng.setstate(rng_state[0])
    inputs.generator.set_state(rng_state[1])
    per_step = sorted(timings)[1] * 1.05
    log(f"unet: {per_step:.3f} s a step of {batch}")
    return max(1, int(minutes * 60 / per_step))


# -- export ------------------------------------------------------------------------------------------------------
def export(parts: Any, cfg: dict[str, Any], out: Path, seed: int, steps: int) -> None:
    from safetensors.torch import save_file

    from modules.models.tiny import to_single_file_state_dict

    components = {"unet": parts.unet, "vae": parts.vae, "text_encoder": parts.text_encoder}
    sd = {k: v.half() if v.is_floating_point() else v for k, v in to_single_file_state_dict("sd1", components).items()}
    meta = {"modelspec.title": "Demo shapes", "modelspec.architecture": "stable-diffusion-v1",
            "modelspec.description": "a {colour} {shape} on a {colour} background, 128x128; colours: "
            + ", ".join(demo.COLOURS) + "; shapes: " + ", ".join(demo.SHAPES),
            "sdwebui.defaults": json.dumps(demo.DEFAULTS), "sdwebui.recipe": f"scripts/train_demo_model.py --seed "
            f"{seed}", "sdwebui.steps": str(steps)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(out)
    folder = out.with_suffix("")
    if folder.exists():
        shutil.rmtree(folder)
    cfg = json.loads(json.dumps(cfg))
    cfg["vae"]["scaling_factor"] = float(parts.vae.config.scaling_factor)
    for name, data in cfg.items():
        path = folder / "model_index.json" if name == "model_index" else folder / name / (
            "scheduler_config.json" if name == "scheduler" else "config.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
    log(f"exported {out} ({out.stat().st_size / 2**20:.1f} MiB) and {folder}/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "Stable-diffusion" / f"{demo.DEMO_NAME}"
                        ".safetensors")
    parser.add_argument("--work", type=Path, default=Path("/tmp/demo-model-work"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--vae-minutes", type=float, default=12)
    parser.add_argument("--decoder-minutes", type=float, default=15)
    parser.add_argument("--unet-minutes", type=float, default=120)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from modules.app import quiet_libraries

    quiet_libraries()
    args.work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    cfg = configs()
    data = scenes(args.images, args.seed)
    vae = train_vae(cfg, data, args.work, args.vae_minutes, device, args.seed)
    scale = json.loads((args.work / "vae_scale.json").read_text())["scaling_factor"]
    vae.register_to_config(scaling_factor=scale)
    vae = train_decoder(vae, data, args.work, args.decoder_minutes, device, args.seed)
    vae.requires_grad_(False)
    parts = build_parts(cfg, vae, device, args.seed)
    steps = train_unet(parts, data, args.work, args.unet_minutes, args.seed, args.batch, args.lr)
    export(parts, cfg, args.out, args.seed, steps)
    log("done")


if __name__ == "__main__":
    main()

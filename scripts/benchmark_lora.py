"""Benchmark: what one LoRA costs a generation, and what changing LoRAs between jobs costs (target: at most 10% on a
20-step generation; no checkpoint reload when the LoRAs change).

In one process, on one engine (the product's own job path: prompt, networks, sampling, decoding):

  plain     20-step txt2img without a network                                         -> (a)
  lora      the same with ``<lora:bench:0.8>`` (rank ``--rank`` on every attention and text-encoder Linear) -> (b)
  switch    alternating between two LoRAs job after job; the checkpoint loads are counted (must stay 0)

and prints (b)/(a) (runs alternated, medians) and the time a job spends merging the network in and putting the
weights back, which is all a LoRA adds to a job here (the merged layers cost nothing per step). For comparison
the same LoRA file goes through diffusers' own loader on the same UNet and text encoder
(``load_lora_weights`` + ``fuse_lora``, then ``unfuse_lora`` + ``unload_lora_weights``, with peft), the bare library
route to the same merged weights; its time is printed beside ours, with the ratio.

The model is the tiny random-weight SD 1.x test model by default; ``--ckpt PATH`` uses a real single-file SD 1.x
checkpoint instead (for a real-size measurement, e.g. on a GPU with ``--device cuda``).

    OMP_NUM_THREADS=1 python scripts/benchmark_lora.py
    python scripts/benchmark_lora.py --ckpt ~/models/v1-5-pruned-emaonly.safetensors --device cuda --size 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def lora_state_dict(parts: Any, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA over every attention Linear of the UNet and every Linear of the text encoder."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    layers = [("lora_unet_" + n.replace(".", "_"), m) for n, m in parts.unet.named_modules()
              if isinstance(m, torch.nn.Linear) and ".attentions." in n]
    for n, m in parts.text_encoder.named_modules():
        if isinstance(m, torch.nn.Linear):
            hf = n if n.startswith("text_model.") else f"text_model.{n}"
            layers.append(("lora_te_" + hf.replace(".", "_"), m))
    for key, module in layers:
        out[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=gen) * 0.01
        out[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=gen) * 0.01
        out[f"{key}.alpha"] = torch.tensor(float(rank))
    return out


def timed(fn: Any, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def paired(first: Any, second: Any, repeats: int) -> tuple[float, float]:
    """Medians of ``first`` and ``second`` run in alternation, so that a drift in the machine's load touches both."""
    first()
    second()
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def diffusers_route(parts: Any, path: Path, repeats: int) -> float | None:
    """diffusers' loader on the same modules: load + fuse, then unfuse + unload (seconds), or None if it cannot."""
    try:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                       unet=parts.unet, scheduler=_scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)

        def once() -> None:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="bench")
            pipe.fuse_lora(lora_scale=0.8)
            pipe.unfuse_lora()
            pipe.unload_lora_weights()

        return timed(once, repeats)
    except Exception as exc:  # noqa: BLE001 - a library route that fails is reported, not fatal
        print(f"diffusers route unavailable: {type(exc).__name__}: {str(exc)[:200]}")
        return None


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None, help="a real SD 1.x checkpoint (default: the tiny test model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=None, help="image side (default 64 tiny, 512 with --ckpt)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    from safetensors.torch import save_file

    from modules.app import build_engine
    from modules.models.tiny import write_tiny_model
    from modules.paths import Paths
    from modules.requests import GenerationRequest

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = root / "models" / "Stable-diffusion"
        models.mkdir(parents=True)
        if args.ckpt:
            (models / Path(args.ckpt).name).symlink_to(Path(args.ckpt).resolve())
        else:
            write_tiny_model("sd1", models, name="tiny", fmt="safetensors")
        (root / "models" / "Lora").mkdir()
        precision = "fp16" if args.device.startswith("cuda") else "fp32"
        engine = build_engine(Paths.create(root), device=args.device, precision=precision)
        size = args.size or (512 if args.ckpt else 64)
        req = GenerationRequest(prompt="a lighthouse at dusk", seed=1, width=size, height=size, steps=args.steps,
                                sampler_name="Euler a")
        engine.txt2img(req)
        parts = engine.models.current
        assert parts is not None
        for i, name in enumerate(("bench", "other")):
            save_file(lora_state_dict(parts, args.rank, i), str(root / "models" / "Lora" / f"{name}.safetensors"))
        engine.networks.refresh()
        loads = [0]
        original = engine.models._load

        def counting(info: Any) -> Any:
            loads[0] += 1
            return original(info)

        engine.models._load = counting  # type: ignore[method-assign]
        lora_req = req.replace(prompt=req.prompt + " <lora:bench:0.8>")
        plain, with_lora = paired(lambda: engine.txt2img(req), lambda: engine.txt2img(lora_req), args.repeats)
        merge = timed(lambda: _apply_only(engine, parts), args.repeats)
        switch_reqs = [req.replace(prompt=req.prompt + f" <lora:{n}:0.8>") for n in ("bench", "other") * 2]
        switching = timed(lambda: [engine.txt2img(r) for r in switch_reqs], 1) / len(switch_reqs)
        library = diffusers_route(parts, root / "models" / "Lora" / "bench.safetensors", args.repeats)

    print(f"model: {'tiny SD 1.x (random weights)' if not args.ckpt else args.ckpt}, {size}x{size}, {args.steps} "
          f"steps, LoRA rank {args.rank}, {args.device}, {torch.get_num_threads()} threads; medians of "
          f"{args.repeats}")
    print(f"txt2img without LoRA           {plain * 1000:9.1f} ms")
    print(f"txt2img with one LoRA          {with_lora * 1000:9.1f} ms   ratio {with_lora / plain:.3f} "
          f"({(with_lora / plain - 1) * 100:+.1f}%, target <= +10%)")
    print(f"  of which merge in + restore  {merge * 1000:9.1f} ms   ({merge / plain * 100:.1f}% of the plain job)")
    print(f"txt2img switching LoRAs        {switching * 1000:9.1f} ms per job; checkpoint loads meanwhile: {loads[0]}")
    if library is not None:
        print(f"diffusers load+fuse+unfuse+unload on the same modules {library * 1000:9.1f} ms; ours merge+restore is "
              f"{library / merge:.1f}x faster" if merge > 0 else "")
    return 0


def _apply_only(engine: Any, parts: Any) -> None:
    from modules.networks.lora import LoraTag

    with engine.networks.loras.applied(parts, [LoraTag("bench", 0.8, 0.8)], lambda _m: None):
        pass


if __name__ == "__main__":
    sys.exit(main())

"""Write extra networks that fit a checkpoint, for the network cases of ``scripts/parity.py --networks``.

    python scripts/make_parity_networks.py /tmp/a1111-oracle-run/models/Stable-diffusion/tiny.safetensors /tmp/nets

makes, from seeded random numbers, under OUT:

- ``Lora/parity.safetensors``: a kohya LoRA in the original (CompVis) UNet layer names, rank 4, alpha 2, on every
  attention layer and every resnet's first convolution (LoCon), and on every text-encoder Linear (alpha 4); its
  metadata gives the alias ``parityAlias``;
- ``Lora/loha.safetensors``: a LyCORIS LoHa on the attention Linears;
- ``embeddings/myemb.pt``: A1111's embedding format, two vectors;
- ``hypernetworks/hyper.pt``: A1111's hypernetwork format (layer structure 1, 2, 1; relu) for the context width and
  the UNet's attention widths.

The ``.pt`` files use torch's legacy serialisation: A1111's pickle checker refuses the newer zip layout's
``.format_version`` entry. Start A1111 with ``--lora-dir OUT/Lora --embeddings-dir OUT/embeddings
--hypernetwork-dir OUT/hypernetworks`` and this server with the same flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _attention_layers(parts: Any) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in parts.unet.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and (".attentions." in n or n.endswith("conv1"))]


def lora(parts: Any, gen: torch.Generator) -> dict[str, torch.Tensor]:
    from modules.models.convert import UNET_PREFIX, unet_to_ldm

    layers = _attention_layers(parts)
    ldm = {name: key for key, name in unet_to_ldm({f"{n}.weight": n for n, _ in layers}, parts.unet.config).items()}
    out: dict[str, torch.Tensor] = {}
    for name, module in layers:
        key = "lora_unet_" + ldm[name][len(UNET_PREFIX):-len(".weight")].replace(".", "_")
        w = module.weight
        kernel = tuple(w.shape[2:])
        out[f"{key}.lora_down.weight"] = torch.randn(4, w.shape[1], *kernel, generator=gen) * 0.3
        out[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], 4, *((1, 1) if kernel else ()), generator=gen) * 0.3
        out[f"{key}.alpha"] = torch.tensor(2.0)
    for name, module in parts.text_encoder.named_modules():
        if isinstance(module, torch.nn.Linear):
            hf = name if name.startswith("text_model.") else f"text_model.{name}"
            key = "lora_te_" + hf.replace(".", "_")
            out[f"{key}.lora_down.weight"] = torch.randn(4, module.in_features, generator=gen) * 0.3
            out[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 4, generator=gen) * 0.3
            out[f"{key}.alpha"] = torch.tensor(4.0)
    return out


def loha(parts: Any, gen: torch.Generator) -> dict[str, torch.Tensor]:
    from modules.models.convert import UNET_PREFIX, unet_to_ldm

    layers = [(n, m) for n, m in _attention_layers(parts) if isinstance(m, torch.nn.Linear)]
    ldm = {name: key for key, name in unet_to_ldm({f"{n}.weight": n for n, _ in layers}, parts.unet.config).items()}
    out: dict[str, torch.Tensor] = {}
    for name, module in layers:
        key = "lora_unet_" + ldm[name][len(UNET_PREFIX):-len(".weight")].replace(".", "_")
        o, i = module.weight.shape
        for part, shape in (("hada_w1_a", (o, 2)), ("hada_w1_b", (2, i)), ("hada_w2_a", (o, 2)), ("hada_w2_b", (2, i))):
            out[f"{key}.{part}"] = torch.randn(*shape, generator=gen) * 0.5
        out[f"{key}.alpha"] = torch.tensor(1.0)
    return out


def hypernetwork(parts: Any, gen: torch.Generator) -> dict[Any, Any]:
    def mlp(d: int) -> dict[str, torch.Tensor]:
        return {"linear.0.weight": torch.randn(d * 2, d, generator=gen) * 0.2,
                "linear.0.bias": torch.randn(d * 2, generator=gen) * 0.1,
                "linear.2.weight": torch.randn(d, d * 2, generator=gen) * 0.2,
                "linear.2.bias": torch.randn(d, generator=gen) * 0.1}

    widths = {int(parts.text_encoder.config.hidden_size)}
    widths |= {int(m.to_k.in_features) for n, m in parts.unet.named_modules() if n.endswith("attn1")}
    data: dict[Any, Any] = {w: [mlp(w), mlp(w)] for w in sorted(widths)}
    data.update({"layer_structure": [1, 2, 1], "activation_func": "relu", "is_layer_norm": False,
                 "use_dropout": False, "activate_output": False, "last_layer_dropout": False,
                 "weight_initialization": "Normal", "name": "hyper", "step": 5, "sd_checkpoint": None,
                 "sd_checkpoint_name": None})
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()

    from safetensors.torch import save_file

    from modules.models.loader import load_single_file

    parts = load_single_file(args.checkpoint, torch.float32)
    gen = torch.Generator().manual_seed(0)
    for sub in ("Lora", "embeddings", "hypernetworks"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    save_file(lora(parts, gen), str(args.out / "Lora" / "parity.safetensors"),
              metadata={"ss_output_name": "parityAlias"})
    save_file(loha(parts, gen), str(args.out / "Lora" / "loha.safetensors"))
    width = int(parts.text_encoder.config.hidden_size)
    torch.save({"string_to_param": {"*": torch.randn(2, width, generator=gen)}, "step": 10, "name": "myemb"},
               args.out / "embeddings" / "myemb.pt", _use_new_zipfile_serialization=False)
    torch.save(hypernetwork(parts, gen), args.out / "hypernetworks" / "hyper.pt", _use_new_zipfile_serialization=False)
    print(f"networks written under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

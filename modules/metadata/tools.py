"""Other generators' metadata read as A1111 parameters: NovelAI, InvokeAI (2.x ``Dream`` and ``sd-metadata``, 3.x+
``invokeai_metadata``), Fooocus (JSON scheme), Ruined Fooocus, SwarmUI (``sui_image_params``), Easy Diffusion and
Draw Things.

Each parser takes the raw JSON/text and returns a :class:`Parsed`, or raises ``ValueError``/``KeyError``/
``TypeError`` when the data is not what that tool writes (the caller then shows the raw items).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Any

from modules.metadata import names
from modules.metadata.model import Parsed


def _num(value: Any) -> Any:
    """Numbers as numbers (JSON often stores them as text); anything else unchanged."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return value
    return value


def _size(width: Any, height: Any) -> str | None:
    width, height = _num(width), _num(height)
    if isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0:
        return f"{int(width)}x{int(height)}"
    return None


def _lora_tags(loras: Sequence[tuple[str | None, Any]]) -> str:
    return " ".join(f"<lora:{name}:{_num(weight)}>" for name, weight in loras if name)


def parse_novelai(items: dict[str, str], comment: dict[str, Any], size: tuple[int | None, int | None]) -> Parsed:
    """NovelAI: ``Description`` (or the JSON's ``prompt``) and the ``Comment`` JSON; v4 character prompts too.

    As A1111 does, ``Clip skip: 2`` and ``ENSD: 31337`` are added (NovelAI's own settings)."""
    v4 = comment.get("v4_prompt") if isinstance(comment.get("v4_prompt"), dict) else None
    v4_neg = comment.get("v4_negative_prompt") if isinstance(comment.get("v4_negative_prompt"), dict) else None
    prompt = items.get("Description") or comment.get("prompt") or ""
    negative = comment.get("uc") or ""
    params: dict[str, Any] = {}
    if v4:
        caption = v4.get("caption") or {}
        prompt = caption.get("base_caption") or prompt
        neg_chars = ((v4_neg or {}).get("caption") or {}).get("char_captions") or []
        negative = ((v4_neg or {}).get("caption") or {}).get("base_caption") or negative
        for i, char in enumerate(caption.get("char_captions") or [], 1):
            params[f"Character {i} prompt"] = char.get("char_caption")
            if i <= len(neg_chars) and neg_chars[i - 1].get("char_caption"):
                params[f"Character {i} negative prompt"] = neg_chars[i - 1]["char_caption"]
            centers = char.get("centers") or []
            if centers and isinstance(centers[0], dict) and v4.get("use_coords"):
                params[f"Character {i} center"] = f"{centers[0].get('x')} {centers[0].get('y')}"
    sampler, schedule = names.sampler(comment.get("sampler"), comment.get("noise_schedule"))
    source = items.get("Source", "")
    match = re.fullmatch(r"(.*?)\s+([0-9A-F]{8})", source.strip())
    width, height = comment.get("width", size[0]), comment.get("height", size[1])
    params = {"Steps": comment.get("steps"), "Sampler": sampler,
              "Schedule type": schedule if schedule != "native" else None, "CFG scale": comment.get("scale"),
              "Seed": comment.get("seed"), "Size": _size(width, height),
              "Model hash": match.group(2) if match else None, "Model": match.group(1) if match else source or None,
              "Denoising strength": comment.get("strength"),
              "Clip skip": 2, "ENSD": 31337, "CFG rescale": comment.get("cfg_rescale") or None,
              "Noise": comment.get("noise") or None, **params}
    return Parsed("NovelAI", str(prompt).strip(), str(negative).strip(), params, source="Comment")


def _split_invoke_prompt(text: str) -> tuple[str, str]:
    """InvokeAI 2.x puts the negative prompt in square brackets inside the prompt."""
    negatives = re.findall(r"\[([^\[\]]*)\]", text)
    positive = re.sub(r"\[[^\[\]]*\]", "", text)
    return " ".join(positive.split()), ", ".join(n.strip() for n in negatives if n.strip())


def parse_dream(text: str) -> Parsed:
    """InvokeAI 2.x ``Dream``: ``"prompt [negative]" -s steps -S seed -W w -H h -C cfg -A sampler ...``."""
    args = shlex.split(text)
    if not args:
        raise ValueError("empty Dream string")
    opts: dict[str, str] = {}
    rest = args[1:]
    for i, arg in enumerate(rest):
        if re.fullmatch(r"-{1,2}[A-Za-z][\w-]*", arg) and i + 1 < len(rest):
            opts[arg.lstrip("-")] = rest[i + 1]
    prompt, negative = _split_invoke_prompt(args[0])
    sampler, schedule = names.sampler(opts.get("A") or opts.get("sampler"))
    params = {"Steps": _num(opts.get("s")), "Sampler": sampler, "Schedule type": schedule,
              "CFG scale": _num(opts.get("C")), "Seed": _num(opts.get("S")),
              "Size": _size(opts.get("W"), opts.get("H")),
              "Denoising strength": _num(opts.get("f")), "GFPGAN strength": _num(opts.get("G")),
              "CodeFormer fidelity": _num(opts.get("cf")), "Upscale": _num(opts.get("U"))}
    return Parsed("InvokeAI", prompt, negative, params, source="Dream")


def parse_sd_metadata(data: dict[str, Any]) -> Parsed:
    """InvokeAI 2.3 ``sd-metadata`` JSON."""
    image = data["image"]
    prompts = image.get("prompt")
    texts = [p.get("prompt", "") for p in prompts if isinstance(p, dict)] if isinstance(prompts, list) \
        else [str(prompts or "")]
    positive, negative = _split_invoke_prompt(" ".join(texts))
    sampler, schedule = names.sampler(image.get("sampler"))
    model_hash = data.get("model_hash")
    params = {"Steps": image.get("steps"), "Sampler": sampler, "Schedule type": schedule,
              "CFG scale": image.get("cfg_scale"), "Seed": image.get("seed"),
              "Size": _size(image.get("width"), image.get("height")),
              "Model hash": model_hash[:10] if isinstance(model_hash, str) else None,
              "Model": data.get("model_weights"), "Denoising strength": image.get("strength"),
              "Version": f"InvokeAI {data['app_version']}" if data.get("app_version") else None}
    return Parsed("InvokeAI", positive, negative, params, source="sd-metadata")


def parse_invokeai_metadata(data: dict[str, Any]) -> Parsed:
    """InvokeAI 3.x+ ``invokeai_metadata`` JSON (``CoreMetadataInvocation`` fields)."""
    if "positive_prompt" not in data and "seed" not in data:
        raise KeyError("positive_prompt")
    model: dict[str, Any] = data["model"] if isinstance(data.get("model"), dict) else {}
    sampler, schedule = names.sampler(data.get("scheduler"))
    loras = []
    for lora in data.get("loras") or []:
        if not isinstance(lora, dict):
            continue
        ref = lora.get("model") or lora.get("lora") or {}
        loras.append((ref.get("name") or ref.get("model_name"), lora.get("weight", 1)))
    clip = data.get("clip_skip")
    vae: dict[str, Any] = data["vae"] if isinstance(data.get("vae"), dict) else {}
    params = {"Steps": data.get("steps"), "Sampler": sampler, "Schedule type": schedule,
              "CFG scale": data.get("cfg_scale"), "Seed": data.get("seed"),
              "Size": _size(data.get("width"), data.get("height")),
              "Model": model.get("name") or model.get("model_name"),
              "VAE": vae.get("name") or vae.get("model_name"),
              "Denoising strength": data.get("hrf_strength") if data.get("hrf_enabled") else data.get("strength"),
              "Clip skip": clip + 1 if isinstance(clip, int) and clip > 0 else None,
              "CFG rescale": data.get("cfg_rescale_multiplier") or None,
              "RNG": "CPU" if data.get("rand_device") == "cpu" else None,
              "Hires fix": data.get("hrf_method") if data.get("hrf_enabled") else None,
              "Version": f"InvokeAI {data['app_version']}" if data.get("app_version") else None}
    prompt = f"{data.get('positive_prompt', '')} {_lora_tags(loras)}".strip()
    return Parsed("InvokeAI", prompt, str(data.get("negative_prompt") or ""), params, source="invokeai_metadata")


def parse_fooocus(data: dict[str, Any]) -> Parsed:
    """Fooocus ``parameters`` JSON (scheme ``fooocus``)."""
    if "prompt" not in data or not ({"guidance_scale", "base_model", "sampler"} & data.keys()):
        raise KeyError("not Fooocus JSON")
    resolution = re.fullmatch(r"\s*[(\[]?\s*(\d{1,6})\s*[,x]\s*(\d{1,6})\s*[)\]]?\s*", str(data.get("resolution"))[:64])
    width, height = resolution.groups() if resolution else (None, None)
    sampler, schedule = names.sampler(data.get("sampler"), data.get("scheduler"))
    loras = [(str(entry[0]), entry[1]) for entry in data.get("loras") or []
             if isinstance(entry, (list, tuple)) and len(entry) >= 2]
    hashes = [f"{entry[0]}: {entry[2]}" for entry in data.get("loras") or []
              if isinstance(entry, (list, tuple)) and len(entry) >= 3 and entry[2]]
    params = {"Steps": data.get("steps"), "Sampler": sampler, "Schedule type": schedule,
              "CFG scale": data.get("guidance_scale"), "Seed": _num(data.get("seed")), "Size": _size(width, height),
              "Model hash": data.get("base_model_hash"), "Model": names.model_name(data.get("base_model")),
              "Clip skip": data.get("clip_skip") if data.get("clip_skip") not in (None, 1) else None,
              "Sharpness": data.get("sharpness"), "Performance": data.get("performance"),
              "Styles": data.get("styles"), "Lora hashes": ", ".join(hashes) or None,
              "Refiner": names.model_name(data.get("refiner_model")) if data.get("refiner_model") not in
              (None, "", "None") else None, "Version": data.get("version")}
    prompt = f"{data.get('prompt', '')} {_lora_tags(loras)}".strip()
    return Parsed("Fooocus", prompt, str(data.get("negative_prompt") or ""), params, source="parameters")


def is_ruined_fooocus(data: dict[str, Any]) -> bool:
    return data.get("software") == "RuinedFooocus" or ("Prompt" in data and "base_model_name" in data)


def _ruined_loras(value: Any) -> list[tuple[str, Any, str | None]]:
    """(name, weight, hash) of Ruined Fooocus's ``loras``: ``[[hash, "weight - name"], ...]``, ``[{name, weight,
    hash}]``, or the older ``"Loras:<name:weight>,..."`` text."""
    out: list[tuple[str, Any, str | None]] = []
    if isinstance(value, str):
        return [(name, _num(w), None) for name, w in re.findall(r"<([^<>:]+):([-+0-9.eE]+)>", value[:10_000])]
    for entry in value if isinstance(value, list) else []:
        if isinstance(entry, dict) and entry.get("name"):
            out.append((str(entry["name"]), entry.get("weight", 1), entry.get("hash")))
        elif isinstance(entry, (list, tuple)) and len(entry) >= 2:
            weight, _, name = str(entry[1]).partition(" - ")
            if name:
                out.append((name, _num(weight), str(entry[0]) if entry[0] else None))
    return out


def parse_ruined_fooocus(data: dict[str, Any], source: str) -> Parsed:
    """Ruined Fooocus: flat JSON in ``parameters`` (``Prompt``, ``Negative``, ``cfg``, ``sampler_name``,
    ``base_model_name``... and ``"software": "RuinedFooocus"``)."""
    sampler, schedule = names.sampler(data.get("sampler_name"), data.get("scheduler"))
    loras = [(names.model_name(n) or n, w, h) for n, w, h in _ruined_loras(data.get("loras"))]
    model_hash = data.get("base_model_hash")
    clip = _num(data.get("clip_skip"))
    denoise = _num(data.get("denoise"))
    params = {"Steps": _num(data.get("steps")), "Sampler": sampler, "Schedule type": schedule,
              "CFG scale": _num(data.get("cfg")), "Seed": _num(data.get("seed")),
              "Size": _size(data.get("width"), data.get("height")),
              "Model hash": model_hash[:10] if isinstance(model_hash, str) and model_hash else None,
              "Model": names.model_name(data.get("base_model_name")),
              "Denoising strength": denoise if isinstance(denoise, (int, float)) and denoise < 1 else None,
              "Clip skip": abs(clip) if isinstance(clip, int) and abs(clip) > 1 else None,
              "Refiner": names.model_name(data.get("refiner_model_name")) if data.get("refiner_model_name") not in
              (None, "", "None") else None,
              "Lora hashes": ", ".join(f"{n}: {h}" for n, _, h in loras if h) or None,
              "Version": "RuinedFooocus"}
    prompt = f"{data.get('Prompt') or ''} {_lora_tags([(n, w) for n, w, _ in loras])}".strip()
    return Parsed("Ruined Fooocus", prompt, str(data.get("Negative") or ""), params, source=source)


def parse_swarmui(data: dict[str, Any], source: str) -> Parsed:
    """SwarmUI ``sui_image_params`` (ComfyUI sampler names; ``model`` is a folder path without extension)."""
    p = data["sui_image_params"]
    if not isinstance(p, dict):
        raise TypeError("sui_image_params is not an object")
    sampler, schedule = names.sampler(p.get("sampler"), p.get("scheduler"))
    clip = _num(p.get("clipstopatlayer"))
    loras = p.get("loras") or []
    weights = p.get("loraweights") or []
    loras = loras.split(",") if isinstance(loras, str) else loras
    weights = weights.split(",") if isinstance(weights, str) else weights
    pairs = [(names.model_name(str(n).strip()), weights[i] if i < len(weights) else 1) for i, n in enumerate(loras)]
    params = {"Steps": _num(p.get("steps")), "Sampler": sampler, "Schedule type": schedule,
              "CFG scale": _num(p.get("cfgscale")), "Seed": _num(p.get("seed")),
              "Size": _size(p.get("width"), p.get("height")), "Model": names.model_name(p.get("model")),
              "VAE": names.model_name(p.get("vae")) if p.get("vae") not in (None, "", "None") else None,
              "Denoising strength": _num(p.get("initimagecreativity")),
              "Clip skip": abs(clip) if isinstance(clip, int) and clip < -1 else None,
              "Refiner": names.model_name(p.get("refinermodel")),
              "Hires upscale": _num(p.get("refinerupscale")), "Hires steps": _num(p.get("refinersteps")),
              "Version": f"SwarmUI {p['swarm_version']}" if p.get("swarm_version") else None}
    prompt = f"{p.get('prompt') or ''} {_lora_tags(pairs)}".strip()
    return Parsed("SwarmUI", prompt, str(p.get("negativeprompt") or ""), params, source=source)


_ED_KEYS = (("prompt", "Prompt"), ("negative_prompt", "Negative Prompt"), ("num_inference_steps", "Steps"),
            ("sampler_name", "Sampler"), ("guidance_scale", "Guidance Scale"), ("seed", "Seed"),
            ("width", "Width"), ("height", "Height"), ("use_stable_diffusion_model", "Stable Diffusion model"),
            ("clip_skip", "Clip Skip"), ("prompt_strength", "Prompt Strength"), ("use_vae_model", "VAE model"),
            ("use_lora_model", "LoRA model"), ("lora_alpha", "LoRA Strength"))


def is_easy_diffusion(items: dict[str, Any]) -> bool:
    return ("use_stable_diffusion_model" in items or "Stable Diffusion model" in items) and \
        ("num_inference_steps" in items or "Steps" in items)


def parse_easy_diffusion(items: dict[str, Any]) -> Parsed:
    """Easy Diffusion: one text item per setting (snake_case names, or the older Title Case ones)."""
    v = {snake: items.get(snake, items.get(title)) for snake, title in _ED_KEYS}
    sampler, schedule = names.sampler(v["sampler_name"])
    clip = v["clip_skip"]
    loras = [(names.model_name(v["use_lora_model"]), v["lora_alpha"] or 1)] if v["use_lora_model"] else []
    params = {"Steps": _num(v["num_inference_steps"]), "Sampler": sampler, "Schedule type": schedule,
              "CFG scale": _num(v["guidance_scale"]), "Seed": _num(v["seed"]), "Size": _size(v["width"], v["height"]),
              "Model": names.model_name(v["use_stable_diffusion_model"]),
              "VAE": names.model_name(v["use_vae_model"]),
              "Denoising strength": _num(v["prompt_strength"]) if items.get("use_init_image") else None,
              "Clip skip": 2 if str(clip).lower() in ("true", "2") else None}
    prompt = f"{v['prompt'] or ''} {_lora_tags(loras)}".strip()
    return Parsed("Easy Diffusion", prompt, str(v["negative_prompt"] or ""), params, source="prompt")


def parse_draw_things(data: dict[str, Any], source: str) -> Parsed:
    """Draw Things: the JSON in its XMP ``exif:UserComment`` (``c`` prompt, ``uc`` negative, ``scale``...)."""
    if "c" not in data:
        raise KeyError("c")
    sampler, schedule = names.sampler(data.get("sampler"))
    size = str(data.get("size", ""))
    width, _, height = size.partition("x")
    loras = [(names.model_name(entry.get("file")), entry.get("weight", 1)) for entry in data.get("lora") or []
             if isinstance(entry, dict)]
    params = {"Steps": _num(data.get("steps")), "Sampler": sampler, "Schedule type": schedule,
              "CFG scale": _num(data.get("scale")), "Seed": _num(data.get("seed")), "Size": _size(width, height),
              "Model": names.model_name(data.get("model")),
              "Denoising strength": _num(data.get("strength")) if _num(data.get("strength")) != 1 else None}
    prompt = f"{data.get('c') or ''} {_lora_tags(loras)}".strip()
    return Parsed("Draw Things", prompt, str(data.get("uc") or ""), params, source=source)

"""Other tools' sampler and scheduler names mapped onto A1111's labels (reference-webuis.md section 7.1).

A name with no A1111 equivalent is kept as written, so the user still sees it.
"""

from __future__ import annotations

import os
from types import MappingProxyType

# ComfyUI / Fooocus / SwarmUI ``sampler_name`` (``_gpu`` variants and the old ``sample_`` prefix are stripped first)
COMFY_SAMPLERS = MappingProxyType({
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2", "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS", "dpm_fast": "DPM fast", "dpm_adaptive": "DPM adaptive", "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun", "dpmpp_3m_sde": "DPM++ 3M SDE", "ddim": "DDIM", "uni_pc": "UniPC",
    "uni_pc_bh2": "UniPC", "lcm": "LCM", "restart": "Restart", "plms": "PLMS",
})
COMFY_SCHEDULERS = MappingProxyType({
    "normal": "Normal", "karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform",
    "simple": "Simple", "ddim_uniform": "DDIM", "beta": "Beta", "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps", "polyexponential": "Polyexponential", "uniform": "Uniform",
    "automatic": "Automatic",
})
# InvokeAI (2.x ``k_`` names and 3.x+ scheduler names; ``_k`` = Karras sigmas), NovelAI, Easy Diffusion
_OTHER_SAMPLERS = MappingProxyType({
    "k_euler_a": "Euler a", "k_euler_ancestral": "Euler a", "euler_a": "Euler a", "k_euler": "Euler",
    "k_lms": "LMS", "k_heun": "Heun", "k_dpm_2": "DPM2", "kdpm_2": "DPM2", "dpm2": "DPM2", "k_dpm_2_a": "DPM2 a",
    "k_dpm_2_ancestral": "DPM2 a", "kdpm_2_a": "DPM2 a", "dpm2_a": "DPM2 a", "k_dpmpp_2s_ancestral": "DPM++ 2S a",
    "k_dpmpp_2s_a": "DPM++ 2S a", "dpmpp_2s": "DPM++ 2S a", "dpmpp_2s_a": "DPM++ 2S a", "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_sde": "DPM++ SDE", "k_dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_3m": "DPM++ 3M SDE",
    "k_dpm_fast": "DPM fast", "k_dpm_adaptive": "DPM adaptive", "pndm": "PLMS", "unipc": "UniPC",
    "unipc_snr": "UniPC", "unipc_tu": "UniPC", "unipc_snr_2": "UniPC", "unipc_tu_2": "UniPC", "unipc_tq": "UniPC",
    "ddim_v3": "DDIM", "k_lcm": "LCM",
})
_A1111_SAMPLERS = ("Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
                   "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart",
                   "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM")
_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")


def sampler(name: object, scheduler: object = None) -> tuple[str | None, str | None]:
    """(A1111 sampler label, schedule label) for another tool's names; unknown names come back as written."""
    if not isinstance(name, str) or not name.strip():
        return None, schedule(scheduler)
    raw = name.strip()
    for label in _A1111_SAMPLERS:
        if raw == label:
            return label, schedule(scheduler)
        if raw.startswith(label + " ") and schedule(raw[len(label) + 1:]) in COMFY_SCHEDULERS.values():
            return label, schedule(scheduler) or schedule(raw[len(label) + 1:])  # "DPM++ 2M Karras"
    key = raw.lower()
    karras = False
    if key.endswith("_k") and key[:-2] in _OTHER_SAMPLERS.keys() | COMFY_SAMPLERS.keys() | {"lms", "heun", "euler"}:
        key, karras = key[:-2], True
    for prefix in ("sample_",):
        key = key[len(prefix):] if key.startswith(prefix) else key
    base = key[:-4] if key.endswith("_gpu") else key
    found = COMFY_SAMPLERS.get(base) or _OTHER_SAMPLERS.get(base)
    sched = schedule(scheduler) or ("Karras" if karras else None)
    return (found or raw), sched


def schedule(name: object) -> str | None:
    """A1111's schedule label for ``karras``, ``sgm_uniform``, ``normal``...; other names as written."""
    if not isinstance(name, str) or not name.strip():
        return None
    raw = name.strip()
    if raw in COMFY_SCHEDULERS.values():
        return raw
    return COMFY_SCHEDULERS.get(raw.lower().replace(" ", "_"), raw)


def model_name(path: object) -> str | None:
    """A checkpoint reference as A1111 writes ``Model``: the file name without folders and weight extension."""
    if isinstance(path, dict):
        path = path.get("content") or path.get("name") or path.get("model_name")
    if not isinstance(path, str) or not path.strip():
        return None
    name = os.path.basename(path.strip().replace("\\", "/"))
    for suffix in _MODEL_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name

"""The X/Y/Z plot's axes, in A1111's order for each tab (API clients send an axis by its index in that list), each
with how its values are read, checked, shown in the legend and applied to a generation request.

Axes for features this product does not have stay in the list, so that the indices match A1111's, and are refused
by the script's check with the reason.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modules import samplers
from modules.errors import ValidationError
from modules.requests import LATENT_UPSCALE_MODES, NO_REFINER, RANDN_SOURCES, GenerationRequest, Limits
from modules.scripts.base import BOTH, IMG2IMG, TXT2IMG
from modules.scripts.xyz_values import label_value

Value = Any
Apply = Callable[[GenerationRequest, Value, Sequence[Value], "Catalog"], GenerationRequest]
Confirm = Callable[[Sequence[Value], "Catalog", GenerationRequest], None]
Choices = Callable[["Catalog"], list[str]]


class Catalog:
    """The names axis values are checked against and resolved with, from the application when there is one
    (without one, names are taken as given and checked when the cells run)."""

    def __init__(self, app: Any = None) -> None:
        self.app = app

    @property
    def known(self) -> bool:
        return self.app is not None

    def limits(self) -> Limits:
        limits: Limits = self.app.limits() if self.app is not None else Limits()
        return limits

    def _current(self) -> Any:
        current = self.app.models.current if self.app is not None else None
        return current.info if current is not None else None

    def checkpoints(self) -> list[str]:
        """The checkpoints' titles, the loaded one too when it is not in the model folders (``--ckpt``)."""
        if self.app is None:
            return []
        titles = {info.title for info in self.app.registry.list()}
        current = self._current()
        return sorted(titles | ({current.title} if current is not None else set()), key=str.casefold)

    def find_checkpoint(self, name: str) -> str | None:
        """The title of the checkpoint ``name`` stands for (a title, name or hash), as A1111 matches it."""
        if self.app is None:
            return name
        info = self.app.registry.find(name)
        current = self._current()
        if info is None and current is not None and name.strip() in current.aliases():
            info = current
        return None if info is None else str(info.title)

    def vaes(self) -> list[str]:
        if self.app is None:
            return []
        from modules.models.vae import list_vaes

        return [v.name for v in list_vaes(self.app.paths.vae_dir)]

    def styles(self) -> list[str]:
        return list(self.app.styles.names()) if self.app is not None else []

    def apply_styles(self, names: Sequence[str], prompt: str, negative: str) -> tuple[str, str]:
        if self.app is None:
            return prompt, negative
        result: tuple[str, str] = self.app.styles.apply(tuple(names), prompt, negative)
        return result

    def upscalers(self) -> list[str]:
        names = list(self.app.upscalers.names()) if self.app is not None else list(self.limits().upscalers)
        return [*LATENT_UPSCALE_MODES, *names]


@dataclass(frozen=True)
class Axis:
    """One axis: ``type`` is int, float, str or permutations (every order of the values); ``legend`` how a value
    is labelled (label: ``Steps: 20``; plain; join: a permutation joined by commas; path: a file's base name;
    nothing); ``cost`` puts slow switches (models) in the outer loop; ``missing`` says why this product cannot plot
    it."""

    label: str
    type: str
    apply: Apply
    legend: str = "label"
    confirm: Confirm | None = None
    cost: float = 0.0
    choices: Choices | None = None
    tabs: frozenset[str] = BOTH
    missing: str | None = None

    def format(self, value: Value) -> str:
        if self.legend == "nothing":
            return ""
        if self.legend == "join":
            return ", ".join(value)
        if self.legend == "path":
            return os.path.basename(str(value))
        shown = label_value(value)
        return f"{self.label}: {shown}" if self.legend == "label" else str(shown)


# -- apply ---------------------------------------------------------------------------------------------------------
def _field(name: str, convert: Callable[[Value], Value] = lambda v: v) -> Apply:
    """Set the request field ``name`` (a field the request's kind lacks is left alone, as A1111 does)."""
    def apply(req: GenerationRequest, value: Value, values: Sequence[Value], cat: Catalog) -> GenerationRequest:
        if not any(f.name == name for f in dataclasses.fields(req)):
            return req
        return req.replace(**{name: convert(value)})

    return apply


def _nothing(req: GenerationRequest, value: Value, values: Sequence[Value], cat: Catalog) -> GenerationRequest:
    return req


def _prompt_sr(req: GenerationRequest, value: Value, values: Sequence[Value], cat: Catalog) -> GenerationRequest:
    search = values[0]
    if search not in req.prompt and search not in req.negative_prompt:
        raise ValidationError(f"Prompt S/R did not find {search} in prompt or negative prompt", field="script_args")
    return req.replace(prompt=req.prompt.replace(search, value), negative_prompt=req.negative_prompt.replace(search,
                                                                                                              value))


def _prompt_order(req: GenerationRequest, value: Value, values: Sequence[Value], cat: Catalog) -> GenerationRequest:
    """The prompt with the tokens ``value`` in that order, each in the place where one of them was."""
    prompt = req.prompt
    found = sorted((prompt.find(token), token) for token in value)
    pieces = []
    for _, token in found:
        at = prompt.find(token)
        pieces.append(prompt[:at])
        prompt = prompt[at + len(token):]
    text = "".join(piece + value[i] for i, piece in enumerate(pieces))
    return req.replace(prompt=text + prompt)


def _checkpoint(req: GenerationRequest, value: Value, values: Sequence[Value], cat: Catalog) -> GenerationRequest:
    return req.replace(checkpoint=cat.find_checkpoint(value) or value)


def _refiner(req: GenerationRequest, value: Value, values: Sequence[Value], cat: Catalog) -> GenerationRequest:
    if value in NO_REFINER:
        return req.replace(refiner_checkpoint=None)
    return req.replace(refiner_checkpoint=cat.find_checkpoint(value) or value)


def vae_choice(name: str, known: Sequence[str]) -> str | None:
    """A1111's VAE lookup: Automatic, None, or a VAE file name (any case); None when unknown."""
    wanted = name.strip().lower()
    if wanted in ("auto", "automatic"):
        return "Automatic"
    if wanted == "none":
        return "None"
    return next((k for k in known if k.lower() == wanted), None)


def _vae(req: GenerationRequest, value: Value, values: Sequence[Value], cat: Catalog) -> GenerationRequest:
    choice = vae_choice(value, cat.vaes()) if cat.known else value
    return req.replace(vae=None if choice in (None, "Automatic") else choice)


def _styles(req: GenerationRequest, value: Value, values: Sequence[Value], cat: Catalog) -> GenerationRequest:
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    prompt, negative = cat.apply_styles(names, req.prompt, req.negative_prompt)
    return req.replace(prompt=prompt, negative_prompt=negative, styles=(*req.styles, *names))


def _face_restore(req: GenerationRequest, value: Value, values: Sequence[Value], cat: Catalog) -> GenerationRequest:
    option = str(value).lower()
    if option == "codeformer":
        return req.replace(restore_faces=True, face_restoration_model="CodeFormer")
    if option == "gfpgan":
        return req.replace(restore_faces=True, face_restoration_model="GFPGAN")
    return req.replace(restore_faces=option in ("true", "yes", "y", "1"))


def _size(req: GenerationRequest, value: Value, values: Sequence[Value], cat: Catalog) -> GenerationRequest:
    width, height = parse_size(value)
    return req.replace(width=width, height=height)


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = str(text).partition("x")
    try:
        return int(width.strip()), int(height.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a size such as 512x768") from None


def _canonical(value: Value, names: Sequence[str]) -> Value:
    """``value`` spelled as in ``names`` (any case matches)."""
    return next((name for name in names if name.lower() == str(value).lower()), value)


def _true(value: Value) -> bool:
    return str(value).lower() == "true"


# -- confirm -------------------------------------------------------------------------------------------------------
def _in(values: Sequence[Value], known: Sequence[str], what: str) -> None:
    lowered = {k.lower() for k in known}
    for value in values:
        if str(value).lower() not in lowered:
            raise ValueError(f"unknown {what} {value!r}; valid {what}s: {', '.join(known) or 'none installed'}")


def _samplers(values: Sequence[Value], cat: Catalog, req: GenerationRequest) -> None:
    for value in values:
        try:
            samplers.find(str(value))
        except KeyError:
            raise ValueError(f"unknown sampler {value!r}; valid samplers: {', '.join(samplers.sampler_names())}"
                             ) from None


def _schedules(values: Sequence[Value], cat: Catalog, req: GenerationRequest) -> None:
    _in(values, samplers.schedule_labels(), "schedule type")


def _checkpoints(values: Sequence[Value], cat: Catalog, req: GenerationRequest) -> None:
    for value in values:
        if cat.known and value not in NO_REFINER and cat.find_checkpoint(str(value)) is None:
            raise ValueError(f"unknown checkpoint {value!r}; valid checkpoints: "
                             f"{', '.join(cat.checkpoints()) or 'none installed'}")


def _main_checkpoints(values: Sequence[Value], cat: Catalog, req: GenerationRequest) -> None:
    if any(value in NO_REFINER for value in values):
        raise ValueError(f"a checkpoint name is needed; valid checkpoints: {', '.join(cat.checkpoints())}")
    _checkpoints(values, cat, req)


def _vaes(values: Sequence[Value], cat: Catalog, req: GenerationRequest) -> None:
    if cat.known:
        for value in values:
            if vae_choice(str(value), cat.vaes()) is None:
                raise ValueError(f"unknown VAE {value!r}; valid VAEs: {', '.join(['Automatic', 'None', *cat.vaes()])}")


def _style_names(values: Sequence[Value], cat: Catalog, req: GenerationRequest) -> None:
    if cat.known:
        names = [n.strip() for v in values for n in str(v).split(",") if n.strip()]
        _in(names, cat.styles(), "style")


def _upscalers(values: Sequence[Value], cat: Catalog, req: GenerationRequest) -> None:
    if cat.known:
        _in(values, cat.upscalers(), "upscaler")


def _prompt_terms(values: Sequence[Value], cat: Catalog, req: GenerationRequest) -> None:
    if values and values[0] not in req.prompt and values[0] not in req.negative_prompt:
        raise ValueError(f"Prompt S/R did not find {values[0]} in prompt or negative prompt")


def _prompt_tokens(values: Sequence[Value], cat: Catalog, req: GenerationRequest) -> None:
    for token in values[0] if values else ():
        if token not in req.prompt:
            raise ValueError(f"Prompt order did not find {token} in the prompt")


def _sizes(values: Sequence[Value], cat: Catalog, req: GenerationRequest) -> None:
    for value in values:
        parse_size(value)


def _choice(*names: str) -> Choices:
    return lambda cat: list(names)


def _unsupported(label: str, why: str, type_: str = "float", tabs: frozenset[str] = BOTH) -> Axis:
    return Axis(label, type_, _nothing, tabs=tabs, missing=why)


_NO_SETTING = "this product has no such setting"
_FALSE_TRUE = _choice("False", "True")

AXES: tuple[Axis, ...] = (
    Axis("Nothing", "str", _nothing, legend="nothing"),
    Axis("Seed", "int", _field("seed")),
    Axis("Var. seed", "int", _field("subseed")),
    Axis("Var. strength", "float", _field("subseed_strength")),
    Axis("Steps", "int", _field("steps")),
    Axis("Hires steps", "int", _field("hr_second_pass_steps"), tabs=frozenset({TXT2IMG})),
    Axis("CFG Scale", "float", _field("cfg_scale")),
    Axis("Image CFG Scale", "float", _field("image_cfg_scale"), tabs=frozenset({IMG2IMG})),
    Axis("Prompt S/R", "str", _prompt_sr, legend="plain", confirm=_prompt_terms),
    Axis("Prompt order", "permutations", _prompt_order, legend="join", confirm=_prompt_tokens),
    Axis("Sampler", "str", _field("sampler_name"), legend="plain", confirm=_samplers,
         choices=lambda cat: samplers.sampler_names(), tabs=frozenset({TXT2IMG})),
    Axis("Hires sampler", "str", _field("hr_sampler_name"), confirm=_samplers,
         choices=lambda cat: samplers.sampler_names(), tabs=frozenset({TXT2IMG})),
    Axis("Sampler", "str", _field("sampler_name"), legend="plain", confirm=_samplers,
         choices=lambda cat: samplers.sampler_names(), tabs=frozenset({IMG2IMG})),
    Axis("Checkpoint name", "str", _checkpoint, legend="path", confirm=_main_checkpoints, cost=1.0,
         choices=lambda cat: cat.checkpoints()),
    Axis("Negative Guidance minimum sigma", "float", _field("s_min_uncond")),
    Axis("Sigma Churn", "float", _field("s_churn")),
    Axis("Sigma min", "float", _field("s_tmin")),
    Axis("Sigma max", "float", _field("s_tmax")),
    Axis("Sigma noise", "float", _field("s_noise")),
    Axis("Schedule type", "str", _field("scheduler"), confirm=_schedules,
         choices=lambda cat: samplers.schedule_labels()),
    Axis("Schedule min sigma", "float", _field("sigma_min")),
    Axis("Schedule max sigma", "float", _field("sigma_max")),
    Axis("Schedule rho", "float", _field("rho")),
    Axis("Beta schedule alpha", "float", _field("beta_dist_alpha")),
    Axis("Beta schedule beta", "float", _field("beta_dist_beta")),
    Axis("Eta", "float", _field("eta")),
    Axis("Clip skip", "int", _field("clip_skip")),
    Axis("Denoising", "float", _field("denoising_strength")),
    Axis("Initial noise multiplier", "float", _field("initial_noise_multiplier")),
    _unsupported("Extra noise", f"img2img extra noise: {_NO_SETTING}"),
    Axis("Hires upscaler", "str", _field("hr_upscaler"), confirm=_upscalers, choices=lambda cat: cat.upscalers(),
         tabs=frozenset({TXT2IMG})),
    Axis("Cond. Image Mask Weight", "float", _field("inpainting_mask_weight"), tabs=frozenset({IMG2IMG})),
    Axis("VAE", "str", _vae, confirm=_vaes, cost=0.7, choices=lambda cat: ["Automatic", "None", *cat.vaes()]),
    Axis("Styles", "str", _styles, confirm=_style_names, choices=lambda cat: cat.styles()),
    _unsupported("UniPC Order", f"the UniPC order: {_NO_SETTING}", "int"),
    Axis("Face restore", "str", _face_restore, legend="plain"),
    Axis("Token merging ratio", "float", _field("token_merging_ratio")),
    Axis("Token merging ratio high-res", "float", _field("token_merging_ratio_hr")),
    Axis("Always discard next-to-last sigma", "str", _field("always_discard_next_to_last_sigma", _true),
         choices=_FALSE_TRUE),
    Axis("SGM noise multiplier", "str", _field("sgm_noise_multiplier", _true), choices=_FALSE_TRUE),
    Axis("Refiner checkpoint", "str", _refiner, legend="path", confirm=_checkpoints, cost=1.0,
         choices=lambda cat: ["None", *cat.checkpoints()]),
    Axis("Refiner switch at", "float", _field("refiner_switch_at")),
    Axis("RNG source", "str", _field("randn_source", lambda v: _canonical(v, RANDN_SOURCES)),
         confirm=lambda v, c, r: _in(v, RANDN_SOURCES, "RNG source"), choices=_choice(*RANDN_SOURCES)),
    _unsupported("FP8 mode", "FP8 weight storage (the fp8_storage setting) reloads the model: set it in Settings, "
                 "not per grid cell", "str"),
    Axis("Size", "str", _size, confirm=_sizes),
)


def axes_for(kind: str) -> list[Axis]:
    """The axes of a tab, in A1111's order."""
    return [axis for axis in AXES if kind in axis.tabs]

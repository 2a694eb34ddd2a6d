"""Each generation parameter described once: request field and type, A1111 API names, infotext key and how it is
written and read, the setting that supplies it, UI label, X/Y/Z axis, CompVis flag.

Infotext writing and reading (:mod:`modules.param_io`), API bodies (``webui/api``), UI forms and the CLI all derive
from :data:`PARAMS`. A new parameter is one row here plus its field on the request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from modules import samplers
from modules.generation.image_prep import MASKED_CONTENT, RESIZE_MODES
from modules.infotext import SettingFloat
from modules.requests import NO_REFINER, RANDN_SOURCES, SAME_CHECKPOINT, SAME_SAMPLER, GenerationRequest, Img2ImgRequest

BOTH: Final = frozenset({"txt2img", "img2img"})
TXT2IMG: Final = frozenset({"txt2img"})
IMG2IMG: Final = frozenset({"img2img"})
MASK_MODES: Final = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS: Final = ("Whole picture", "Only masked")


@dataclass(frozen=True)
class InfotextContext:
    """What an image's infotext records beside its request: its own seeds and the model that made it."""

    seed: int
    subseed: int
    model_hash: str | None = None
    model_name: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None
    inpainting: bool = False  # made by an inpainting (9-channel) model


class Keys(dict[str, object]):
    """A writer's value that sets several infotext keys at once (``Model hash`` and ``Model``)."""


Writer = Callable[[GenerationRequest, InfotextContext], object]
# (parsed infotext, keys the text really has) -> request field values
Reader = Callable[[Mapping[str, object], frozenset[str]], dict[str, object]]


class _RequestDefault:
    def __repr__(self) -> str:
        return "<request default>"


REQUEST_DEFAULT: Final = _RequestDefault()


@dataclass(frozen=True)
class Param:
    """One generation parameter.

    ``key`` is its infotext key (``pair`` names the second field of a ``WxH`` key such as ``Size``). ``write`` gives
    the value written for a request (``None``: the key is left out; default: the field's value). ``read`` turns a
    parsed infotext into field values (default: the key's value, or the pair's two values). ``api`` lists the A1111
    request body names that set it, first non-null wins (``None``: the field's own name; ``()``: not in the body);
    ``api_default`` is what A1111's API uses when the body leaves it out. ``setting`` names the option that supplies
    the value when a request does not (A1111 keeps clip skip, RNG, ENSD, VAE and the model in the settings).
    ``label`` is the UI's label, ``axis`` A1111's X/Y/Z axis name (its values are of ``type``, one of ``choices``
    when given), ``cli`` the CompVis command line's flag, and ``scope`` the kinds of request that have it.
    """

    field: str
    type: type
    key: str | None = None
    pair: str | None = None
    write: Writer | None = None
    read: Reader | None = None
    api: tuple[str, ...] | None = None
    api_default: object = REQUEST_DEFAULT
    from_api: Callable[[object], object] | None = None
    setting: str | None = None
    label: str | None = None
    axis: str | None = None
    choices: Callable[[], Sequence[str]] | None = None
    nullable: bool = False
    scope: frozenset[str] = BOTH
    cli: str | None = None

    @property
    def api_names(self) -> tuple[str, ...]:
        return (self.field,) if self.api is None else self.api

    def applies_to(self, kind: str) -> bool:
        return kind in self.scope


# -- writers ---------------------------------------------------------------------------------------------------
def _i2i(req: GenerationRequest) -> Img2ImgRequest:
    assert isinstance(req, Img2ImgRequest), "an img2img parameter on a txt2img request"
    return req


def _same(value: str | None) -> bool:
    return value in (None, "", SAME_SAMPLER, "Use same scheduler")


def _schedule_label(sampler: str, schedule: str | None) -> str:
    """What A1111 records: the chosen type, and for "Automatic" the sampler's own default when it has one."""
    spec, label = samplers.resolve_sampler(sampler, schedule)
    if label == "Automatic" and spec.scheduler is not None:
        return spec.default_schedule
    return label


def _hires_sampler(req: GenerationRequest) -> str:
    return req.sampler_name if _same(req.hr_sampler_name) else str(req.hr_sampler_name)


def _w_sampler(req: GenerationRequest, _: InfotextContext) -> object:
    return samplers.resolve_sampler(req.sampler_name, req.scheduler)[0].name


def _w_schedule(req: GenerationRequest, _: InfotextContext) -> object:
    return _schedule_label(req.sampler_name, req.scheduler)


def _spec(req: GenerationRequest) -> samplers.SamplerSpec:
    return samplers.resolve_sampler(req.sampler_name, req.scheduler)[0]


def _eta(req: GenerationRequest) -> float | None:
    """The eta the sampler really uses (None: it takes none)."""
    spec = _spec(req)
    if not spec.takes_eta:
        return None
    if req.eta is not None:
        return req.eta
    return req.eta_ancestral if spec.kind == samplers.K_DIFFUSION else req.eta_ddim


def _w_eta(req: GenerationRequest, _: InfotextContext) -> object:
    spec, eta = _spec(req), _eta(req)
    return Keys({spec.eta_key: eta}) if eta is not None and eta != spec.eta_default else None


def _r_eta(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
    for key in ("Eta", "Eta DDIM"):
        if key in written and key in p:
            return {"eta": p[key]}
    return {}


def _w_ensd(req: GenerationRequest, _: InfotextContext) -> object:
    uses = _spec(req).uses_ensd and _eta(req) != 0
    return req.eta_noise_seed_delta if req.eta_noise_seed_delta != 0 and uses else None


_SIGMA_DEFAULTS: Final = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0}


def _w_sigma(name: str) -> Writer:
    """``Sigma churn`` and its kin: written for the samplers that take them, when not the default."""
    def writer(req: GenerationRequest, _: InfotextContext) -> object:
        value = getattr(req, name) or 0.0
        return value if name in _spec(req).extra and value != _SIGMA_DEFAULTS[name] else None

    return writer


def _k_schedule(req: GenerationRequest) -> str | None:
    """The schedule type a k-diffusion sampler really runs (None for the timestep samplers)."""
    spec = _spec(req)
    if spec.kind != samplers.K_DIFFUSION:
        return None
    return samplers.effective_schedule(spec, _schedule_label(req.sampler_name, req.scheduler))


def _setting_float(value: float) -> SettingFloat:
    """A float from A1111's settings, written as A1111 writes it (``2.0``, not ``2``)."""
    return SettingFloat(value)


def _w_schedule_override(name: str) -> Writer:
    def writer(req: GenerationRequest, _: InfotextContext) -> object:
        value = getattr(req, name)
        return _setting_float(value) if value != 0 and _k_schedule(req) not in (None, "Uniform") else None

    return writer


def _w_beta(name: str) -> Writer:
    return lambda req, _ctx: _setting_float(getattr(req, name)) if _k_schedule(req) == "Beta" else None


def _w_discard(req: GenerationRequest, _: InfotextContext) -> object:
    spec = _spec(req)
    keep = req.always_discard_next_to_last_sigma and spec.kind == samplers.K_DIFFUSION
    return True if keep and not spec.discard_penultimate else None


def _refiner(req: GenerationRequest) -> str | None:
    return None if req.refiner_checkpoint in NO_REFINER else req.refiner_checkpoint


def _w_denoising(req: GenerationRequest, _: InfotextContext) -> object:
    return req.denoising_strength if req.enable_hr or isinstance(req, Img2ImgRequest) else None


def _hires(write: Callable[[GenerationRequest], object]) -> Writer:
    """A hires key: written for txt2img with hires fix on."""
    return lambda req, _ctx: write(req) if req.enable_hr and not isinstance(req, Img2ImgRequest) else None


def _by_scale(req: GenerationRequest) -> bool:
    return req.hr_resize_x == 0 and req.hr_resize_y == 0


def _inpaint(write: Callable[[Img2ImgRequest], object]) -> Writer:
    """An inpainting key: written for img2img with a mask."""
    def writer(req: GenerationRequest, _ctx: InfotextContext) -> object:
        return write(req) if isinstance(req, Img2ImgRequest) and req.mask is not None else None

    return writer


def _mask_blur(req: Img2ImgRequest) -> object:
    if req.mask_blur_x <= 0 and req.mask_blur_y <= 0:
        return None
    if req.mask_blur_x == req.mask_blur_y:
        return req.mask_blur_x
    return Keys({"Mask blur x": req.mask_blur_x, "Mask blur y": req.mask_blur_y})


def _when(cond: Callable[[GenerationRequest], bool]) -> Callable[[str], Writer]:
    def make(field: str) -> Writer:
        return lambda req, _ctx: getattr(req, field) if cond(req) else None

    return make


def _w_tome(req: GenerationRequest, _: InfotextContext) -> object:
    """A1111 writes the first pass's ratio: img2img's own when it has one."""
    ratio = (req.token_merging_ratio_img2img or req.token_merging_ratio) if isinstance(req, Img2ImgRequest) \
        else req.token_merging_ratio
    return ratio or None


def _w_tome_hr(req: GenerationRequest, _: InfotextContext) -> object:
    ratio = req.token_merging_ratio_hr or req.token_merging_ratio
    return ratio if req.enable_hr and ratio else None


# -- readers ---------------------------------------------------------------------------------------------------
def _r_key(key: str, field: str, convert: Callable[[object], object] = lambda v: v) -> Reader:
    def reader(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
        return {field: convert(p[key])} if key in written and key in p else {}

    return reader


_INPAINT_KEYS: Final = frozenset({"Mask blur", "Mask blur x", "Mask blur y", "Mask mode", "Masked content",
                                   "Inpaint area", "Masked area padding"})


def _r_inpaint(key: str, field: str, convert: Callable[[object], object], missing: object) -> Reader:
    """An inpainting key A1111 leaves out at its default: absent from an inpainting infotext means ``missing``."""
    def reader(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
        if key in written and key in p:
            return {field: convert(p[key])}
        return {field: missing} if _INPAINT_KEYS & written else {}

    return reader


def _r_hires_choice(key: str, field: str, same: str) -> Reader:
    def reader(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
        if key not in written:
            return {}
        value = p.get(key)
        return {field: None if value in (None, "", same) else value}

    return reader


def _r_enable_hr(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
    return {"enable_hr": True} if {"Hires upscale", "Hires resize-1"} & written else {}


def _r_schedule(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
    # the parser splits a legacy "DPM++ 2M Karras" into Sampler and Schedule type: keep the split part too
    return {"scheduler": p["Schedule type"]} if "Sampler" in written and "Schedule type" in p else {}


def _r_mask_blur(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
    if "Mask blur" in written:
        return {"mask_blur_x": p["Mask blur"], "mask_blur_y": p["Mask blur"]}
    out: dict[str, object] = {}
    for key, field in (("Mask blur x", "mask_blur_x"), ("Mask blur y", "mask_blur_y")):
        if key in written:
            out[field] = p[key]
    return out


def _label_index(labels: Sequence[str]) -> Callable[[object], object]:
    def convert(value: object) -> object:
        return labels.index(str(value)) if str(value) in labels else value

    return convert


def _r_tome(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
    """A pasted ratio is the image's: in img2img it wins over the img2img setting, as an override does in A1111."""
    if "Token merging ratio" in written and "Token merging ratio" in p:
        return {"token_merging_ratio": p["Token merging ratio"], "token_merging_ratio_img2img": 0.0}
    return {}


def _r_or(key: str, field: str, missing: object) -> Reader:
    """A key whose absence from a parameters line means A1111's old default (``RNG`` missing: GPU noise)."""
    def reader(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
        if key in written and key in p:
            return {field: p[key]}
        return {field: missing} if "Steps" in written else {}

    return reader


def _r_restore_faces(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
    """"Face restoration: CodeFormer" turns restoration on with that model (A1111 writes it only when on)."""
    if "Face restoration" not in written or not p.get("Face restoration"):
        return {}
    return {"restore_faces": True, "face_restoration_model": str(p["Face restoration"])}


def _r_checkpoint(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
    """The model an infotext names: its hash when there is one (A1111 looks hashes up first), else its name."""
    value = p.get("Model hash") if "Model hash" in written else None
    value = value or (p.get("Model") if "Model" in written else None)
    return {"checkpoint": str(value)} if value else {}


def _r_vae(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
    return {"vae": str(p["VAE"])} if "VAE" in written and p.get("VAE") else {}


def _r_resize_mode(p: Mapping[str, object], written: frozenset[str]) -> dict[str, object]:
    value = p.get("Resize mode") if "Resize mode" in written else None
    return {"resize_mode": RESIZE_MODES.index(str(value))} if str(value) in RESIZE_MODES else {}


def _seed_resize(value: object) -> object:
    return max(0, value) if isinstance(value, int) else value


def _schedule_labels() -> Sequence[str]:
    return samplers.schedule_labels()


_hires_steps = _when(lambda r: bool(r.enable_hr and r.hr_second_pass_steps))
_variation = _when(lambda r: r.subseed_strength > 0)

PARAMS: tuple[Param, ...] = (
    Param("prompt", str, "Prompt", api=("prompt",), api_default="", label="Prompt", cli="--prompt"),
    Param("negative_prompt", str, "Negative prompt", api_default="", label="Negative prompt"),
    Param("styles", tuple, label="Styles", axis="Styles"),
    Param("steps", int, "Steps", api_default=50, label="Sampling steps", axis="Steps", cli="--ddim_steps"),
    Param("sampler_name", str, "Sampler", write=_w_sampler, api=("sampler_name", "sampler_index"),
          api_default="Euler", label="Sampling method", axis="Sampler", choices=samplers.sampler_names),
    Param("scheduler", str, "Schedule type", write=_w_schedule, read=_r_schedule, api_default="Automatic",
          label="Schedule type", axis="Schedule type", choices=_schedule_labels),
    Param("cfg_scale", float, "CFG scale", api_default=7.0, label="CFG Scale", axis="CFG Scale", cli="--scale"),
    Param("seed", int, "Seed", write=lambda r, c: c.seed, api_default=-1, label="Seed", axis="Seed", cli="--seed"),
    Param("width", int, "Size", pair="height", write=lambda r, c: f"{r.width}x{r.height}", api_default=512,
          label="Width", cli="--W"),
    Param("height", int, api_default=512, label="Height", cli="--H"),
    Param("checkpoint", str, "Model hash", write=lambda r, c: Keys({"Model hash": c.model_hash, "Model": c.model_name}),
          read=_r_checkpoint, api=(), setting="sd_model_checkpoint", label="Stable Diffusion checkpoint",
          axis="Checkpoint name", nullable=True),
    Param("vae", str, "VAE", write=lambda r, c: Keys({"VAE hash": c.vae_hash, "VAE": c.vae_name}), read=_r_vae,
          api=(), setting="sd_vae", label="SD VAE", axis="VAE", nullable=True),
    Param("subseed", int, "Variation seed", write=lambda r, c: c.subseed if r.subseed_strength > 0 else None,
          api_default=-1, label="Variation seed", axis="Var. seed"),
    Param("subseed_strength", float, "Variation seed strength", write=_variation("subseed_strength"),
          api_default=0.0, label="Variation strength", axis="Var. strength"),
    Param("seed_resize_from_w", int, "Seed resize from", pair="seed_resize_from_h",
          write=lambda r, c: f"{r.seed_resize_from_w}x{r.seed_resize_from_h}"
          if r.seed_resize_from_w > 0 and r.seed_resize_from_h > 0 else None,
          api_default=0, from_api=_seed_resize, label="Resize seed from width"),
    Param("seed_resize_from_h", int, api_default=0, from_api=_seed_resize, label="Resize seed from height"),
    Param("denoising_strength", float, "Denoising strength", write=_w_denoising, label="Denoising strength",
          axis="Denoising"),
    Param("clip_skip", int, "Clip skip", write=_when(lambda r: r.clip_skip > 1)("clip_skip"),
          read=_r_or("Clip skip", "clip_skip", 1), api=(),
          setting="CLIP_stop_at_last_layers", label="Clip skip", axis="Clip skip"),
    Param("eta_noise_seed_delta", int, "ENSD", write=_w_ensd, api=(), setting="eta_noise_seed_delta",
          label="Eta noise seed delta"),
    Param("randn_source", str, "RNG", write=_when(lambda r: r.randn_source != "GPU")("randn_source"),
          read=_r_or("RNG", "randn_source", "GPU"), api=(),
          setting="randn_source", label="Random number generator source", axis="RNG source",
          choices=lambda: RANDN_SOURCES),
    Param("refiner_checkpoint", str, "Refiner", write=lambda r, c: _refiner(r), label="Refiner",
          axis="Refiner checkpoint", nullable=True),
    Param("refiner_switch_at", float, "Refiner switch at",
          write=lambda r, c: r.refiner_switch_at if _refiner(r) else None, label="Switch at",
          axis="Refiner switch at", nullable=True),
    Param("hires_fix_refiner_pass", str, "Hires refiner",
          write=lambda r, c: r.hires_fix_refiner_pass if _refiner(r) and r.enable_hr
          and r.hires_fix_refiner_pass != "second pass" else None,
          api=(), setting="hires_fix_refiner_pass", label="Hires fix: which pass to enable refiner for",
          scope=TXT2IMG),
    Param("tiling", bool, "Tiling", write=_when(lambda r: r.tiling)("tiling"), api_default=False, label="Tiling"),
    Param("eta", float, "Eta", write=_w_eta, read=_r_eta, label="Eta", axis="Eta", nullable=True, cli="--ddim_eta"),
    Param("eta_ancestral", float, api=(), setting="eta_ancestral", label="Eta for k-diffusion samplers"),
    Param("eta_ddim", float, api=(), setting="eta_ddim", label="Eta for DDIM"),
    Param("s_min_uncond", float, "NGMS",
          write=lambda r, c: _setting_float(r.s_min_uncond) if r.s_min_uncond > 0 else None, api_default=0.0,
          setting="s_min_uncond", label="Negative Guidance minimum sigma"),
    Param("sigma_min", float, "Schedule min sigma", write=_w_schedule_override("sigma_min"), api=(),
          setting="sigma_min", label="sigma min", axis="Schedule min sigma"),
    Param("sigma_max", float, "Schedule max sigma", write=_w_schedule_override("sigma_max"), api=(),
          setting="sigma_max", label="sigma max", axis="Schedule max sigma"),
    Param("rho", float, "Schedule rho", write=_w_schedule_override("rho"), api=(), setting="rho", label="rho",
          axis="Schedule rho"),
    Param("beta_dist_alpha", float, "Beta schedule alpha", write=_w_beta("beta_dist_alpha"), api=(),
          setting="beta_dist_alpha", label="Beta scheduler - alpha"),
    Param("beta_dist_beta", float, "Beta schedule beta", write=_w_beta("beta_dist_beta"), api=(),
          setting="beta_dist_beta", label="Beta scheduler - beta"),
    Param("use_old_karras_scheduler_sigmas", bool, api=(), setting="use_old_karras_scheduler_sigmas",
          label="Use old karras scheduler sigmas (0.1 to 10)"),
    Param("always_discard_next_to_last_sigma", bool, "Discard penultimate sigma", write=_w_discard, api=(),
          setting="always_discard_next_to_last_sigma", label="Always discard next-to-last sigma"),
    Param("vae_tiling", str, api=(), setting="vae_tiling", label="VAE tiling"),
    Param("token_merging_ratio", float, "Token merging ratio", write=_w_tome, read=_r_tome, api=(),
          setting="token_merging_ratio", label="Token merging ratio", axis="Token merging ratio"),
    Param("token_merging_ratio_hr", float, "Token merging ratio hr", write=_w_tome_hr, api=(),
          setting="token_merging_ratio_hr", label="Token merging ratio for high-res pass",
          axis="Token merging ratio high-res", scope=TXT2IMG),
    Param("token_merging_ratio_img2img", float, api=(), setting="token_merging_ratio_img2img",
          label="Token merging ratio for img2img", scope=IMG2IMG),
    Param("sgm_noise_multiplier", bool, "SGM noise multiplier",
          write=_when(lambda r: r.sgm_noise_multiplier)("sgm_noise_multiplier"), api=(),
          setting="sgm_noise_multiplier", label="SGM noise multiplier"),
    # hires fix (txt2img)
    Param("enable_hr", bool, read=_r_enable_hr, api_default=False, label="Hires. fix", scope=TXT2IMG),
    Param("hr_scale", float, "Hires upscale", write=_hires(lambda r: r.hr_scale if _by_scale(r) else None),
          api_default=2.0, label="Upscale by", scope=TXT2IMG),
    Param("hr_resize_x", int, "Hires resize", pair="hr_resize_y",
          write=_hires(lambda r: None if _by_scale(r) else f"{r.hr_resize_x}x{r.hr_resize_y}"), api_default=0,
          label="Resize width to", scope=TXT2IMG),
    Param("hr_resize_y", int, api_default=0, label="Resize height to", scope=TXT2IMG),
    Param("hr_second_pass_steps", int, "Hires steps", write=_hires_steps("hr_second_pass_steps"), api_default=0,
          label="Hires steps", axis="Hires steps", scope=TXT2IMG),
    Param("hr_upscaler", str, "Hires upscaler", write=_hires(lambda r: r.hr_upscaler), api_default="Latent",
          label="Upscaler", axis="Hires upscaler", scope=TXT2IMG),
    Param("hr_sampler_name", str, "Hires sampler",
          write=_hires(lambda r: None if _same(r.hr_sampler_name)
                       else samplers.resolve_sampler(r.hr_sampler_name, None)[0].name),
          read=_r_hires_choice("Hires sampler", "hr_sampler_name", SAME_SAMPLER), label="Hires sampling method",
          axis="Hires sampler", nullable=True, scope=TXT2IMG),
    Param("hr_scheduler", str, "Hires schedule type",
          write=_hires(lambda r: None if _same(r.hr_scheduler) else _schedule_label(
              _hires_sampler(r), r.hr_scheduler if not _same(r.hr_scheduler) else r.scheduler)),
          read=_r_hires_choice("Hires schedule type", "hr_scheduler", SAME_SAMPLER), label="Hires schedule type",
          nullable=True, scope=TXT2IMG),
    Param("hr_prompt", str, "Hires prompt",
          write=_hires(lambda r: r.hr_prompt if r.hr_prompt and r.hr_prompt != r.prompt else None), api_default="",
          label="Hires prompt", scope=TXT2IMG),
    Param("hr_negative_prompt", str, "Hires negative prompt",
          write=_hires(lambda r: r.hr_negative_prompt
                       if r.hr_negative_prompt and r.hr_negative_prompt != r.negative_prompt else None),
          api_default="", label="Hires negative prompt", scope=TXT2IMG),
    Param("hr_checkpoint_name", str, "Hires checkpoint",
          write=_hires(lambda r: None if r.hr_checkpoint_name in (None, "", SAME_CHECKPOINT) else r.hr_checkpoint_name),
          read=_r_hires_choice("Hires checkpoint", "hr_checkpoint_name", SAME_CHECKPOINT),
          label="Hires checkpoint", nullable=True, scope=TXT2IMG),
    # img2img and inpainting
    Param("mask_blur_x", int, "Mask blur", write=_inpaint(_mask_blur), read=_r_mask_blur,
          api=("mask_blur", "mask_blur_x"), api_default=4, label="Mask blur", scope=IMG2IMG),
    Param("mask_blur_y", int, api=("mask_blur", "mask_blur_y"), api_default=4, scope=IMG2IMG),
    Param("inpainting_mask_invert", bool, "Mask mode",
          write=_inpaint(lambda r: MASK_MODES[1] if r.inpainting_mask_invert else None),
          read=_r_key("Mask mode", "inpainting_mask_invert", lambda v: v == MASK_MODES[1]), api_default=False,
          label="Mask mode", scope=IMG2IMG),
    Param("inpaint_full_res", bool, "Inpaint area",
          write=_inpaint(lambda r: INPAINT_AREAS[1] if r.inpaint_full_res else None),
          read=_r_inpaint("Inpaint area", "inpaint_full_res", lambda v: v == INPAINT_AREAS[1], False),
          api_default=True,
          label="Inpaint area", scope=IMG2IMG),
    Param("inpaint_full_res_padding", int, "Masked area padding",
          write=_inpaint(lambda r: r.inpaint_full_res_padding if r.inpaint_full_res else None), api_default=0,
          label="Only masked padding, pixels", scope=IMG2IMG),
    Param("inpainting_fill", int, "Masked content",
          write=_inpaint(lambda r: MASKED_CONTENT[r.inpainting_fill] if r.inpainting_fill != 1 else None),
          read=_r_inpaint("Masked content", "inpainting_fill", _label_index(MASKED_CONTENT), 1), api_default=0,
          label="Masked content", scope=IMG2IMG),
    Param("inpainting_mask_weight", float, "Conditional mask weight",
          write=lambda r, c: _setting_float(_i2i(r).inpainting_mask_weight) if c.inpainting else None, api=(),
          setting="inpainting_mask_weight", label="Inpainting conditioning mask strength", scope=IMG2IMG),
    Param("initial_noise_multiplier", float, "Noise multiplier",
          write=lambda r, c: _i2i(r).initial_noise_multiplier if _i2i(r).initial_noise_multiplier != 1.0 else None,
          label="Noise multiplier", axis="Initial noise multiplier", scope=IMG2IMG),
    Param("resize_mode", int, "Resize mode", write=lambda r, c: RESIZE_MODES[3] if _i2i(r).resize_mode == 3 else None,
          read=_r_resize_mode, api_default=0, label="Resize mode", scope=IMG2IMG),
    Param("image_cfg_scale", float, "Image CFG scale", write=lambda r, c: None, label="Image CFG Scale",
          axis="Image CFG Scale", nullable=True, scope=IMG2IMG),
    Param("mask_round", bool, api_default=True, scope=IMG2IMG),
    # sampler parameters (A1111 keeps their defaults in the settings; sent through the API)
    Param("batch_size", int, api_default=1, label="Batch size", cli="--n_samples"),
    Param("n_iter", int, api_default=1, label="Batch count"),
    Param("restore_faces", bool, read=_r_restore_faces, setting="face_restoration", label="Restore faces",
          axis="Face restore"),
    Param("face_restoration_model", str, "Face restoration",
          write=lambda r, c: r.face_restoration_model if r.restore_faces else None, read=lambda p, w: {}, api=(),
          setting="face_restoration_model", label="Face restoration model"),
    Param("code_former_weight", float, api=(), setting="code_former_weight", label="CodeFormer weight"),
    Param("s_churn", float, "Sigma churn", write=_w_sigma("s_churn"), api_default=0.0, label="Sigma churn",
          axis="Sigma Churn"),
    Param("s_tmin", float, "Sigma tmin", write=_w_sigma("s_tmin"), api_default=0.0, label="Sigma tmin",
          axis="Sigma min"),
    Param("s_tmax", float, "Sigma tmax", write=_w_sigma("s_tmax"), label="Sigma tmax", axis="Sigma max",
          nullable=True),
    Param("s_noise", float, "Sigma noise", write=_w_sigma("s_noise"), api_default=1.0, label="Sigma noise",
          axis="Sigma noise"),
)

# request fields that are not parameters: the images of an img2img request and a bound set by the server
NOT_PARAMS: Final = frozenset({"init_images", "mask", "latent_mask", "max_image_pixels"})


def params_for(kind: str) -> tuple[Param, ...]:
    """The parameters of ``kind`` ("txt2img" or "img2img"), in table order."""
    return tuple(p for p in PARAMS if p.applies_to(kind))


def by_field(name: str) -> Param:
    for p in PARAMS:
        if p.field == name:
            return p
    raise KeyError(name)


def by_axis(name: str) -> Param | None:
    """The parameter an X/Y/Z axis (A1111's name) sets."""
    for p in PARAMS:
        if p.axis is not None and p.axis.lower() == name.strip().lower():
            return p
    return None


def label(name: str) -> str:
    """The UI label of the parameter ``name`` (A1111's)."""
    text = by_field(name).label
    if text is None:
        raise KeyError(f"{name} has no UI label")
    return text

"""A1111's sampler and schedule-type names mapped onto diffusers schedulers (no sampler maths of our own).

A1111 1.9+ names a sampler ("DPM++ 2M") and a schedule type ("Karras") separately; older combined names such as
"DPM++ 2M Karras" are split. Each sampler has the default schedule A1111 gives it, used for "Automatic".
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modules.errors import ValidationError

if TYPE_CHECKING:
    from diffusers import SchedulerMixin


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    cls_name: str
    aliases: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    default_schedule: str = "Uniform"
    spacing: str = "linspace"  # timestep spacing A1111's implementation of this sampler uses for "Uniform"
    seeded_tree: bool = False  # Brownian-tree noise, seeded through the scheduler config

    @property
    def scheduler_cls(self) -> type[SchedulerMixin]:
        import diffusers

        cls = getattr(diffusers, self.cls_name)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise TypeError(f"diffusers.{self.cls_name} is not a scheduler")
        return cls


_DPM = "DPMSolverMultistepScheduler"
SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", _DPM, ("k_dpmpp_2m",), {"algorithm_type": "dpmsolver++", "solver_order": 2}, "Karras"),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", ("k_dpmpp_sde",), {}, "Karras", seeded_tree=True),
    SamplerSpec("DPM++ 2M SDE", _DPM, ("k_dpmpp_2m_sde",),
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, "Exponential"),
    SamplerSpec("DPM++ 2M SDE Heun", _DPM, ("k_dpmpp_2m_sde_heun",),
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"}, "Exponential"),
    SamplerSpec("DPM++ 2S a", "DPMSolverSinglestepScheduler", ("k_dpmpp_2s_a",),
                {"algorithm_type": "dpmsolver++", "solver_order": 2}, "Karras"),
    SamplerSpec("DPM++ 3M SDE", _DPM, ("k_dpmpp_3m_sde",),
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "Exponential"),
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", ("k_euler_a", "k_euler_ancestral")),
    SamplerSpec("Euler", "EulerDiscreteScheduler", ("k_euler",)),
    SamplerSpec("LMS", "LMSDiscreteScheduler", ("k_lms",)),
    SamplerSpec("Heun", "HeunDiscreteScheduler", ("k_heun",)),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", ("k_dpm_2",), {}, "Karras"),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", ("k_dpm_2_a",), {}, "Karras"),
    SamplerSpec("DDIM", "DDIMScheduler", ("ddim",), {}, "Uniform", spacing="leading"),
    SamplerSpec("PLMS", "PNDMScheduler", ("plms",), {"skip_prk_steps": True}, "Uniform", spacing="leading"),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", ("unipc",)),
    SamplerSpec("LCM", "LCMScheduler", ("k_lcm", "lcm"), {}, "Uniform", spacing="leading"),
)


@dataclass(frozen=True)
class ScheduleSpec:
    label: str
    name: str
    aliases: tuple[str, ...] = ()
    flag: str | None = None  # the diffusers constructor flag that selects these sigmas
    spacing: str | None = None  # or the timestep spacing that gives this schedule


SCHEDULES: tuple[ScheduleSpec, ...] = (
    ScheduleSpec("Automatic", "automatic"),
    ScheduleSpec("Uniform", "uniform"),
    ScheduleSpec("Karras", "karras", flag="use_karras_sigmas"),
    ScheduleSpec("Exponential", "exponential", flag="use_exponential_sigmas"),
    ScheduleSpec("SGM Uniform", "sgm_uniform", ("SGMUniform",), spacing="trailing"),
    ScheduleSpec("Beta", "beta", flag="use_beta_sigmas"),
    ScheduleSpec("DDIM", "ddim", spacing="leading"),
)


@functools.cache
def _params(fn: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


def _init_params(cls: type[Any]) -> frozenset[str]:
    return _params(cls.__init__)


def step_params(cls: type[Any]) -> frozenset[str]:
    """The keyword arguments ``cls.step`` accepts."""
    return _params(cls.step)


def _key(text: str) -> str:
    return text.strip().lower()


def _index() -> dict[str, SamplerSpec]:
    out: dict[str, SamplerSpec] = {}
    for spec in SAMPLERS:
        for n in (spec.name, *spec.aliases):
            out[_key(n)] = spec
    return out


def _schedule_index() -> dict[str, ScheduleSpec]:
    out: dict[str, ScheduleSpec] = {}
    for spec in SCHEDULES:
        for n in (spec.label, spec.name, *spec.aliases):
            out[_key(n)] = spec
    return out


_SAMPLER_INDEX = _index()
_SCHEDULE_INDEX = _schedule_index()


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def schedule_labels() -> list[str]:
    return [s.label for s in SCHEDULES]


def split_legacy_name(name: str) -> tuple[str, str | None]:
    """"DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); names that are already plain come back unchanged."""
    if _key(name) in _SAMPLER_INDEX:
        return name, None
    for spec in SCHEDULES:
        for label in (spec.label, *spec.aliases):
            suffix = " " + label.lower()
            if name.lower().endswith(suffix) and _key(name[: -len(suffix)]) in _SAMPLER_INDEX:
                return name[: -len(suffix)].strip(), spec.label
    return name, None


def resolve_sampler(name: str | None, schedule: str | None = None, field_name: str = "sampler_name"
                    ) -> tuple[SamplerSpec, str]:
    """(sampler spec, schedule label) for user input; raises ValidationError listing the valid names."""
    sampler_text, legacy_schedule = split_legacy_name(name or "Euler a")
    spec = _SAMPLER_INDEX.get(_key(sampler_text))
    if spec is None:
        raise ValidationError(
            f"{field_name}: unknown sampler {name!r}; valid samplers: {', '.join(sampler_names())}",
            field=field_name)
    wanted = schedule if schedule not in (None, "") else (legacy_schedule or "Automatic")
    if legacy_schedule and _key(wanted) == "automatic":
        wanted = legacy_schedule
    sched = _SCHEDULE_INDEX.get(_key(wanted))
    if sched is None:
        field_sched = "hr_scheduler" if field_name.startswith("hr_") else "scheduler"
        raise ValidationError(
            f"{field_sched}: unknown schedule type {wanted!r}; valid schedule types: "
            f"{', '.join(schedule_labels())}", field=field_sched)
    return spec, sched.label


def supported_schedules(spec: SamplerSpec) -> list[str]:
    params = _init_params(spec.scheduler_cls)
    out = ["Automatic"]
    for sched in SCHEDULES[1:]:
        if sched.flag and sched.flag in params:
            out.append(sched.label)
        elif sched.flag is None and ("timestep_spacing" in params or sched.label == "Uniform"):
            out.append(sched.label)
    return out


def effective_schedule(spec: SamplerSpec, schedule: str) -> str:
    """The schedule that will really run: "Automatic" becomes the sampler's default; an unsupported one, Uniform."""
    label = spec.default_schedule if schedule == "Automatic" else schedule
    return label if label in supported_schedules(spec) else "Uniform"


def build_scheduler(spec: SamplerSpec, schedule: str, base_config: Mapping[str, Any], prediction_type: str,
                    seed: int | None = None) -> Any:
    """A diffusers scheduler for ``spec`` with ``schedule`` applied, from the model's scheduler config."""
    cls = spec.scheduler_cls
    params = _init_params(cls)
    label = effective_schedule(spec, schedule)
    sched = _SCHEDULE_INDEX[_key(label)]
    overrides: dict[str, Any] = dict(spec.options)
    overrides["prediction_type"] = prediction_type
    for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        if flag in params:
            overrides[flag] = flag == sched.flag
    if "timestep_spacing" in params:
        overrides["timestep_spacing"] = sched.spacing or spec.spacing
    if spec.seeded_tree and seed is not None and "noise_sampler_seed" in params:
        overrides["noise_sampler_seed"] = int(seed)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    config.update(overrides)
    return cls.from_config(config)


def step_kwargs(scheduler: Any, eta: float | None, churn: Mapping[str, float]) -> dict[str, Any]:
    """Keyword arguments of ``scheduler.step`` for eta and Euler/Heun churn, where the sampler has them."""
    params = step_params(type(scheduler))
    out: dict[str, Any] = {}
    if eta is not None and "eta" in params:
        out["eta"] = float(eta)
    for key, value in churn.items():
        if key in params:
            out[key] = float(value)
    return out


def samplers_api_list() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers`` entries as A1111 returns them."""
    return [{"name": s.name, "aliases": list(s.aliases), "options": {"scheduler": s.default_schedule.lower()}
             if s.default_schedule != "Uniform" else {}} for s in SAMPLERS]


def schedulers_api_list() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/schedulers`` entries as A1111 returns them."""
    return [{"name": s.name, "label": s.label, "aliases": list(s.aliases) or None, "default_rho": -1,
             "need_inner_model": False} for s in SCHEDULES]

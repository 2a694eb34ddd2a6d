"""A1111's sampler list: names, aliases, and the options A1111 gives each sampler (default schedule type, dropped
next-to-last sigma, Brownian noise, ENSD, which of eta / churn / s_noise it takes).

A1111 1.9+ names a sampler ("DPM++ 2M") and a schedule type ("Karras") separately; older combined names such as
"DPM++ 2M Karras" are split. The maths lives in :mod:`modules.sampling`; this module only describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from modules.errors import ValidationError
from modules.sampling import schedules

K_DIFFUSION: Final = "k-diffusion"
TIMESTEPS: Final = "timesteps"
LCM: Final = "lcm"

_CHURN: Final = frozenset({"s_churn", "s_tmin", "s_tmax", "s_noise"})
_NOISE: Final = frozenset({"s_noise"})


@dataclass(frozen=True)
class SamplerSpec:
    """One of A1111's samplers.

    ``kind`` says how it runs (sigma-space k-diffusion sampler, timestep sampler, LCM); ``function`` names the
    implementation; ``scheduler`` is the schedule type "Automatic" means for it (None: the model's own table,
    stepped uniformly); ``extra`` the churn / noise options A1111 passes to it; ``takes_eta`` whether it has eta.
    """

    name: str
    function: str
    aliases: tuple[str, ...] = ()
    kind: str = K_DIFFUSION
    scheduler: str | None = None
    discard_penultimate: bool = False
    brownian_noise: bool = False
    uses_ensd: bool = False
    second_order: bool = False
    solver_type: str | None = None
    extra: frozenset[str] = frozenset()
    takes_eta: bool = False

    @property
    def default_schedule(self) -> str:
        """The label of the schedule type "Automatic" gives this sampler."""
        if self.scheduler is None:
            return "Uniform"
        return schedules.find_schedule(self.scheduler).label

    @property
    def eta_setting(self) -> str:
        """The option that supplies eta when a request leaves it out (and the infotext key when it differs)."""
        return "eta_ancestral" if self.kind == K_DIFFUSION else "eta_ddim"

    @property
    def eta_default(self) -> float:
        return 1.0 if self.kind == K_DIFFUSION else 0.0

    @property
    def eta_key(self) -> str:
        return "Eta" if self.kind == K_DIFFUSION else "Eta DDIM"

    def model_calls_per_step(self) -> int:
        return 2 if self.second_order else 1


SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", "dpmpp_2m", ("k_dpmpp_2m",), scheduler="karras"),
    SamplerSpec("DPM++ SDE", "dpmpp_sde", ("k_dpmpp_sde",), scheduler="karras", second_order=True,
                brownian_noise=True, extra=_NOISE, takes_eta=True),
    SamplerSpec("DPM++ 2M SDE", "dpmpp_2m_sde", ("k_dpmpp_2m_sde",), scheduler="exponential", brownian_noise=True,
                extra=_NOISE, takes_eta=True),
    SamplerSpec("DPM++ 2M SDE Heun", "dpmpp_2m_sde", ("k_dpmpp_2m_sde_heun",), scheduler="exponential",
                brownian_noise=True, solver_type="heun", extra=_NOISE, takes_eta=True),
    SamplerSpec("DPM++ 2S a", "dpmpp_2s_ancestral", ("k_dpmpp_2s_a",), scheduler="karras", uses_ensd=True,
                second_order=True, extra=_NOISE, takes_eta=True),
    SamplerSpec("DPM++ 3M SDE", "dpmpp_3m_sde", ("k_dpmpp_3m_sde",), scheduler="exponential",
                discard_penultimate=True, brownian_noise=True, extra=_NOISE, takes_eta=True),
    SamplerSpec("Euler a", "euler_ancestral", ("k_euler_a", "k_euler_ancestral"), uses_ensd=True, takes_eta=True),
    SamplerSpec("Euler", "euler", ("k_euler",), extra=_CHURN),
    SamplerSpec("LMS", "lms", ("k_lms",)),
    SamplerSpec("Heun", "heun", ("k_heun",), second_order=True, extra=_CHURN),
    SamplerSpec("DPM2", "dpm_2", ("k_dpm_2",), scheduler="karras", discard_penultimate=True, second_order=True,
                extra=_CHURN),
    SamplerSpec("DPM2 a", "dpm_2_ancestral", ("k_dpm_2_a",), scheduler="karras", discard_penultimate=True,
                uses_ensd=True, second_order=True, extra=_NOISE, takes_eta=True),
    SamplerSpec("DPM fast", "dpm_fast", ("k_dpm_fast",), uses_ensd=True, extra=_NOISE, takes_eta=True),
    SamplerSpec("DPM adaptive", "dpm_adaptive", ("k_dpm_ad",), uses_ensd=True, takes_eta=True),
    SamplerSpec("Restart", "restart", ("restart",), scheduler="karras", second_order=True),
    SamplerSpec("DDIM", "ddim", ("ddim",), kind=TIMESTEPS, takes_eta=True),
    SamplerSpec("DDIM CFG++", "ddim_cfgpp", ("ddim_cfgpp",), kind=TIMESTEPS, takes_eta=True),
    SamplerSpec("PLMS", "plms", ("plms",), kind=TIMESTEPS),
    SamplerSpec("UniPC", "unipc", ("unipc",), kind=TIMESTEPS),
    SamplerSpec("LCM", "lcm", ("k_lcm",), kind=LCM),
)


def _key(text: str) -> str:
    return text.strip().lower()


_SAMPLER_INDEX: Final = {_key(n): s for s in SAMPLERS for n in (s.name, *s.aliases)}
_SCHEDULE_INDEX: Final = {_key(n): t.label for t in schedules.SCHEDULE_TYPES for n in (t.name, t.label, *t.aliases)}
_SCHEDULE_INDEX["automatic"] = schedules.AUTOMATIC


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def schedule_labels() -> list[str]:
    return schedules.schedule_labels()


def find(name: str) -> SamplerSpec:
    """The sampler called ``name`` (A1111's label or alias); KeyError for an unknown one."""
    return _SAMPLER_INDEX[_key(name)]


def split_legacy_name(name: str) -> tuple[str, str | None]:
    """"DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); names that are already plain come back unchanged."""
    if _key(name) in _SAMPLER_INDEX:
        return name, None
    for schedule in schedules.SCHEDULE_TYPES:
        for label in (schedule.label, *schedule.aliases):
            suffix = " " + label.lower()
            if name.lower().endswith(suffix) and _key(name[: -len(suffix)]) in _SAMPLER_INDEX:
                return name[: -len(suffix)].strip(), schedule.label
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
    wanted = schedule if schedule not in (None, "") else (legacy_schedule or schedules.AUTOMATIC)
    if legacy_schedule and _key(wanted) == "automatic":
        wanted = legacy_schedule
    label = _SCHEDULE_INDEX.get(_key(wanted))
    if label is None:
        field_sched = "hr_scheduler" if field_name.startswith("hr_") else "scheduler"
        raise ValidationError(
            f"{field_sched}: unknown schedule type {wanted!r}; valid schedule types: "
            f"{', '.join(schedule_labels())}", field=field_sched)
    return spec, label


def effective_schedule(spec: SamplerSpec, schedule: str) -> str:
    """The schedule type that really runs: "Automatic" becomes the sampler's default. Timestep samplers and LCM
    step through their own timesteps whatever the schedule type."""
    return spec.default_schedule if schedule == schedules.AUTOMATIC else schedule


def schedule_name(spec: SamplerSpec, schedule: str) -> str:
    """The internal name of the schedule type that runs (``uniform`` for the model's own table)."""
    return schedules.find_schedule(effective_schedule(spec, schedule)).name


def samplers_api_list() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers`` entries as A1111 returns them (its options, values as strings)."""
    out = []
    for s in SAMPLERS:
        options: dict[str, Any] = {}
        if s.scheduler:
            options["scheduler"] = s.scheduler
        for flag, value in (("second_order", s.second_order), ("brownian_noise", s.brownian_noise),
                            ("uses_ensd", s.uses_ensd), ("discard_next_to_last_sigma", s.discard_penultimate)):
            if value:
                options[flag] = "True"
        if s.solver_type:
            options["solver_type"] = s.solver_type
        out.append({"name": s.name, "aliases": list(s.aliases), "options": options})
    return out


def schedulers_api_list() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/schedulers`` entries as A1111 returns them, "Automatic" first."""
    out: list[dict[str, Any]] = [{"name": "automatic", "label": schedules.AUTOMATIC, "aliases": None,
                                  "default_rho": -1.0, "need_inner_model": False}]
    for s in schedules.SCHEDULE_TYPES:
        out.append({"name": s.name, "label": s.label, "aliases": list(s.aliases) or None,
                    "default_rho": float(s.default_rho) if s.default_rho is not None else -1.0,
                    "need_inner_model": s.needs_table})
    return out

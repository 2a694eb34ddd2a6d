"""The merger for the application: A1111's form fields resolved against the model folders, run as a queued job.

Shared by the Checkpoint Merger tab and ``POST /sdapi/v1/merge-checkpoints``. Everything that can be checked without
reading tensor data (names, families, shapes, regex, output name) is checked before the job is queued.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.errors import ValidationError
from modules.merge.merger import CONFIG_SOURCES, Merge, MergeOptions, MergeResult, ModelRef, parse_metadata_json
from modules.merge.plan import method_id
from modules.models.vae import list_vaes

if TYPE_CHECKING:
    from modules.app import App
    from modules.generation.control import JobControl
    from modules.job_types import MergeResultSummary
    from modules.jobs import Job

log = logging.getLogger(__name__)
NO_VAE = "None"


@dataclass(frozen=True)
class MergeRequest:
    """The form's fields, with A1111's names (``modules/extras.py::run_modelmerger``)."""

    primary_model_name: str = ""
    secondary_model_name: str = ""
    tertiary_model_name: str = ""
    interp_method: str = "Weighted sum"
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: int | str = 0
    bake_in_vae: str = NO_VAE
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = "{}"
    overwrite: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MergeRequest:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def config_source_index(value: int | str | None) -> int:
    """0-3 from an index or a label: "A, B or C", "B", "C", "Don't" (also "any", "none")."""
    if value is None or value == "":
        return 0
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if 0 <= index < len(CONFIG_SOURCES):
            return index
    else:
        text = value.strip().lower()
        aliases = {"any": 0, "a": 0, "none": 3, "don't": 3, "dont": 3}
        for i, label in enumerate(CONFIG_SOURCES):
            if text == label.lower():
                return i
        if text in aliases:
            return aliases[text]
    raise ValidationError(f"config_source must be one of {', '.join(CONFIG_SOURCES)} (or 0-3), not {value!r}",
                          field="config_source")


def resolve_model(app: App, name: str | None, field: str, role: str) -> ModelRef | None:
    if not name or not str(name).strip():
        return None
    info = app.registry.find(str(name))
    if info is None:
        app.registry.refresh()
        info = app.registry.find(str(name))
    if info is None:
        raise ValidationError(f"model {role}: checkpoint not found: {name!r}", field=field)
    return ModelRef(info.path, info.name, info.model_name, hash_fn=lambda: app.registry.ensure_hash(info))


def resolve_vae(app: App, name: str | None) -> Path | None:
    if not name or name in (NO_VAE, "Automatic"):
        return None
    for vae in list_vaes(app.paths.vae_dir):
        if name in (vae.name, vae.path.stem, Path(vae.name).stem):
            return vae.path
    raise ValidationError(f"VAE not found in {app.paths.vae_dir}: {name!r}", field="bake_in_vae")


def open_merge(app: App, req: MergeRequest) -> Merge:
    """The prepared merge for ``req`` (inputs opened and checked); close it after use."""
    method = method_id(req.interp_method)
    if not req.primary_model_name:
        raise ValidationError("Merging requires a primary model.", field="primary_model_name")
    try:
        multiplier = float(req.multiplier)
    except (TypeError, ValueError):
        raise ValidationError("multiplier must be a number between 0 and 1", field="multiplier") from None
    a = resolve_model(app, req.primary_model_name, "primary_model_name", "A")
    b = resolve_model(app, req.secondary_model_name, "secondary_model_name", "B") if method != "none" else None
    c = resolve_model(app, req.tertiary_model_name, "tertiary_model_name", "C") \
        if method == "add_difference" else None
    vae = resolve_vae(app, req.bake_in_vae)
    if req.save_metadata:
        parse_metadata_json(req.metadata_json)
    fmt = str(req.checkpoint_format or "safetensors").lower().lstrip(".")
    options = MergeOptions(
        method=method, multiplier=multiplier, save_as_half=bool(req.save_as_half), checkpoint_format=fmt,
        custom_name=req.custom_name or "", config_source=config_source_index(req.config_source), vae=vae,
        vae_name=req.bake_in_vae if vae is not None else NO_VAE, discard_weights=req.discard_weights or "",
        save_metadata=bool(req.save_metadata), add_merge_recipe=bool(req.add_merge_recipe),
        copy_metadata_fields=bool(req.copy_metadata_fields), metadata_json=req.metadata_json or "{}",
        overwrite=bool(req.overwrite))
    assert a is not None
    return Merge(a, b, c, options, output_dir=app.paths.ckpt_dirs[0])


def validate(app: App, req: MergeRequest) -> Path:
    """Check ``req`` as far as possible without reading weights; the output path it would write."""
    with open_merge(app, req) as merge:
        return merge.output


def summary(app: App, result: MergeResult) -> MergeResultSummary:
    """What the doors report: the new checkpoint's path, name, title and hashes (the list is refreshed)."""
    from modules.job_types import MergeResultSummary

    app.registry.refresh()
    info = app.registry.from_path(result.path)
    sha = app.registry.ensure_hash(info)  # cached, so the new title carries its short hash at once
    if sha != result.sha256:
        log.warning("hash of %s changed after writing (%s != %s)", result.path, sha, result.sha256)
    return MergeResultSummary(
        path=str(result.path), name=info.name, title=info.title, sha256=result.sha256, hash=result.sha256[:10],
        config=str(result.config) if result.config else None, seconds=round(result.seconds, 2),
        message=f"Checkpoint saved to {result.path}")


def run_merge(app: App, req: MergeRequest, control: JobControl) -> MergeResultSummary:
    """The job body: merge with progress on ``control`` and interrupt support; the summary."""
    control.update(job_no=0, job_count=1, sampling_step=0, sampling_steps=1, phase="opening models")

    def progress(done: int, total: int, text: str) -> None:
        control.update(sampling_step=done, sampling_steps=max(total, 1), phase=text)

    with open_merge(app, req) as merge:
        result = merge.run(progress, lambda: control.interrupted)
    return summary(app, result)


def submit(app: App, req: MergeRequest, owner: str | None = None) -> Job:
    """Validate ``req`` (raising before anything is queued) and queue the merge."""
    from modules.job_types import MergeJob

    return app.submit(MergeJob(req), owner=owner)

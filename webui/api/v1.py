"""``/sdapi/v1``: A1111 v1.10.1's routes and response shapes."""

from __future__ import annotations

import base64
import io
import logging
import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from modules import samplers
from modules.app import App
from modules.errors import WebUIError
from modules.job_types import ImagesResult, JobSpec, ReloadModelJob, UnloadModelJob
from modules.jobs import Job, JobState
from modules.models.registry import CheckpointInfo
from modules.requests import LATENT_UPSCALE_MODES
from webui.api.convert import Prepared, prepare, response_body
from webui.api.schemas import Img2ImgBody, OptionsBody, Txt2ImgBody
from webui.api.waiting import failure_response, wait_for
from webui.launch_options import redacted_flags

log = logging.getLogger(__name__)


def _owner(request: Request) -> str | None:
    return getattr(request.state, "user", None)


def build_router(app: App) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"])

    @r.post("/txt2img")
    async def txt2img(body: Txt2ImgBody, request: Request) -> Any:
        return await _generate(app, await run_in_threadpool(prepare, app, body, "txt2img"), _owner(request))

    @r.post("/img2img")
    async def img2img(body: Img2ImgBody, request: Request) -> Any:
        prepared = await run_in_threadpool(prepare, app, body, "img2img")  # decoding images takes a while
        return await _generate(app, prepared, _owner(request))

    @r.get("/options")
    def get_options() -> dict[str, Any]:
        return app.settings.snapshot()

    @r.post("/options")
    async def set_options(body: OptionsBody, request: Request) -> Any:
        before = app.settings["sd_model_checkpoint"]
        change = app.update_settings(dict(body.model_extra or {}), user=_owner(request))
        for job in change.jobs:
            await wait_for(job)
            if job.state is JobState.FAILED:
                _restore_checkpoint(app, before, change.changed)
                return failure_response(job)
        return None

    @r.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        return redacted_flags(app)

    @r.get("/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        return [model_entry(app, i) for i in app.registry.list()]

    @r.get("/samplers")
    def list_samplers() -> list[dict[str, Any]]:
        return samplers.samplers_api_list()

    @r.get("/schedulers")
    def list_schedulers() -> list[dict[str, Any]]:
        return samplers.schedulers_api_list()

    @r.get("/upscalers")
    def upscalers() -> list[dict[str, Any]]:
        app.upscalers.refresh()  # a file added since is listed (A1111 lists what its folders hold)
        return [u.api() for u in app.upscalers.entries()]

    @r.get("/latent-upscale-modes")
    def latent_modes() -> list[dict[str, str]]:
        return [{"name": n} for n in LATENT_UPSCALE_MODES]

    @r.get("/sd-vae")
    def sd_vae() -> list[dict[str, str]]:
        from modules.models.vae import list_vaes

        return [{"model_name": v.name, "filename": str(v.path)} for v in list_vaes(app.paths.vae_dir)]

    @r.get("/loras")
    def loras() -> list[dict[str, Any]]:
        return [info.api() for info in app.networks.loras.registry.files]

    @r.post("/refresh-loras")
    def refresh_loras() -> None:
        app.networks.loras.registry.refresh()

    @r.get("/embeddings")
    def embeddings() -> dict[str, Any]:
        app.networks.embeddings.refresh()
        return app.networks.embeddings.api(app.models.current)

    @r.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        app.networks.embeddings.refresh()

    @r.get("/prompt-styles")
    def prompt_styles() -> list[dict[str, str]]:
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in app.styles.styles.values()]

    @r.get("/face-restorers")
    def face_restorers() -> list[dict[str, Any]]:
        return app.faces.api()

    @r.get("/realesrgan-models")
    def realesrgan_models() -> list[dict[str, Any]]:
        app.upscalers.refresh()
        return [{"name": u.name, "path": str(u.path), "scale": u.nominal_scale}
                for u in app.upscalers.entries() if u.folder == "RealESRGAN"]

    @r.get("/hypernetworks")
    def hypernetworks() -> list[dict[str, Any]]:
        registry = app.networks.hypernetworks.registry
        registry.refresh()  # A1111 has no refresh route for them: a scan here is how a new file shows up
        return [info.api() for info in registry.files]

    @r.get("/scripts")
    def scripts() -> dict[str, list[str]]:
        return app.scripts.api_list()

    @r.get("/script-info")
    def script_info() -> list[dict[str, Any]]:
        return app.scripts.api_info()

    @r.get("/memory")
    def memory() -> dict[str, Any]:
        return memory_report()

    @r.get("/progress")
    def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
        return progress_report(app, skip_current_image, _owner(request))

    @r.post("/interrupt")
    def interrupt(request: Request) -> dict[str, Any]:
        app.queue.interrupt(_owner(request))  # under auth: the caller's running job only
        return {}

    @r.post("/skip")
    def skip(request: Request) -> dict[str, Any]:
        app.queue.skip(_owner(request))
        return {}

    @r.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        app.registry.refresh()

    @r.post("/refresh-vae")
    def refresh_vae() -> None:
        return None

    @r.post("/unload-checkpoint")
    async def unload_checkpoint(request: Request) -> Any:
        return await _run_in_queue(app, UnloadModelJob(), _owner(request))

    @r.post("/reload-checkpoint")
    async def reload_checkpoint(request: Request) -> Any:
        return await _run_in_queue(app, ReloadModelJob(), _owner(request))

    return r


def model_entry(app: App, info: CheckpointInfo) -> dict[str, Any]:
    """A1111's ``/sd-models`` entry; a checkpoint that cannot be loaded has an ``error`` key besides."""
    out: dict[str, Any] = {"title": info.title, "model_name": info.model_name, "hash": info.shorthash,
                           "sha256": info.sha256, "filename": str(info.path), "config": None}
    error = app.registry.error_of(info)
    if error is not None:
        out["error"] = error
    return out


async def _generate(app: App, prepared: Prepared, owner: str | None) -> Any:
    job = app.submit(prepared.spec, owner, prepared.rendering)
    await wait_for(job)
    if job.state is JobState.FAILED or not isinstance(job.result, ImagesResult):
        return failure_response(job)
    return response_body(job.result, prepared.rendering, {"job_id": job.id})


def _restore_checkpoint(app: App, before: str, changed: list[str]) -> None:
    """A checkpoint that failed to load does not stay the setting (as A1111, which puts the old value back)."""
    if "sd_model_checkpoint" in changed and app.settings["sd_model_checkpoint"] != before:
        try:
            app.settings.update({"sd_model_checkpoint": before})
        except WebUIError:
            log.warning("could not restore sd_model_checkpoint to %r", before, exc_info=True)


async def _run_in_queue(app: App, spec: JobSpec, owner: str | None) -> Any:
    """Model housekeeping goes through the queue, so it never pulls a model from under a running job."""
    job: Job = app.submit(spec, owner)
    await wait_for(job)
    if job.state is JobState.FAILED:
        return failure_response(job)
    return {}  # A1111 answers these with an empty object


def progress_report(app: App, skip_current_image: bool = False, owner: str | None = None) -> dict[str, Any]:
    """A1111's ``/progress``: the running job, if any. Under auth, the caller's own: another user's job reads as
    idle, and ``job_count`` counts the caller's jobs only."""
    job = app.queue.current_of(owner)
    waiting = app.queue.pending(owner)
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None,
                "current_task": None,
                "state": {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
                          "job_count": waiting, "job_timestamp": "0", "job_no": 0, "sampling_step": 0,
                          "sampling_steps": 0}}
    p = job.control.progress
    image = None
    if not skip_current_image and p.preview is not None:
        buf = io.BytesIO()
        p.preview.save(buf, format="PNG")
        image = base64.b64encode(buf.getvalue()).decode("ascii")
    return {
        "progress": round(p.fraction, 4),
        "eta_relative": round(p.eta() or 0.0, 2),
        "current_image": image,
        "textinfo": p.textinfo or p.phase or None,
        "current_task": job.id,
        "state": {"skipped": job.control.skipped, "interrupted": job.control.interrupted,
                  "stopping_generation": False, "job": f"{job.kind}-{job.id}", "job_count": max(waiting, 1),
                  "job_timestamp": str(int(job.created)), "job_no": p.job_no, "sampling_step": p.sampling_step,
                  "sampling_steps": p.sampling_steps},
    }


def process_rss() -> int:
    """The resident memory of this process, in bytes."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def memory_report() -> dict[str, Any]:
    """A1111's ``/memory``: ``ram.used`` is this process's resident memory, ``free`` the rest of the machine's."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    used = process_rss()
    out: dict[str, Any] = {"ram": {"free": total - used, "used": used, "total": total}}
    try:
        import torch

        if torch.cuda.is_available():
            free_c, total_c = torch.cuda.mem_get_info()
            stats = torch.cuda.memory_stats()
            out["cuda"] = {
                "system": {"free": free_c, "used": total_c - free_c, "total": total_c},
                "active": {"current": stats.get("active_bytes.all.current", 0),
                           "peak": stats.get("active_bytes.all.peak", 0)},
                "allocated": {"current": stats.get("allocated_bytes.all.current", 0),
                              "peak": stats.get("allocated_bytes.all.peak", 0)},
                "reserved": {"current": stats.get("reserved_bytes.all.current", 0),
                             "peak": stats.get("reserved_bytes.all.peak", 0)},
                "inactive": {"current": stats.get("inactive_split_bytes.all.current", 0),
                             "peak": stats.get("inactive_split_bytes.all.peak", 0)},
                "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
            }
        else:
            out["cuda"] = {"error": "unavailable"}
    except Exception as exc:  # a broken CUDA setup must not break the memory report
        out["cuda"] = {"error": str(exc)[:200]}
    return out


def error_json(status: int, error: str, detail: str, field: str | None = None) -> JSONResponse:
    body = {"error": error, "detail": detail}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)

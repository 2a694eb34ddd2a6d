"""``/sdapi/v2``: the asynchronous jobs API. Submit, get an id at once, poll your own job, cancel it.

Every kind of job is listed and can be cancelled: generations, img2img batches, model loads, merges, Extras,
interrogations and trainings. A job's summary says which worker ran it (``worker``: the worker's id with
``--workers``; ``null`` when jobs run in the server's own process) and how many times it was started again after
its worker stopped (``attempts``).

``GET /sdapi/v2/workers``: the generation workers and their state (id, state, message, node, node_id, pid, device,
model, checkpoints, job, jobs_done, busy_seconds, restarts); without ``--workers``, the server's own process as the
one worker, ``local``. Any authenticated user may read it.

``POST /sdapi/v2/txt2img?worker=ID`` (and ``/img2img``): the job runs on that worker only (an id from
``/sdapi/v2/workers``; ``local`` is the server's own process), for instance to use the checkpoint one worker has
loaded; empty or absent: whichever worker is free. An unknown id answers 422 (``field``: ``worker``) and queues
nothing.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from modules.app import App
from modules.extras import ExtrasResult
from modules.job_types import (
    BatchResult,
    ExtrasJob,
    ImagesResult,
    InterrogateResult,
    MergeResultSummary,
    ModelResult,
)
from modules.jobs import INTERRUPTED_BY_STOP, Job, JobState
from modules.training.specs import TrainEmbeddingJob, TrainResult
from webui.api.convert import Rendering, interruption, prepare, response_body
from webui.api.extras import (
    ExtrasBatchBody,
    ExtrasSingleBody,
    InterrogateBody,
    extras_request_batch,
    extras_request_single,
    interrogate_job,
)
from webui.api.schemas import Img2ImgBody, Txt2ImgBody
from webui.api.training import (
    CreateEmbeddingBody,
    TrainEmbeddingBody,
    TrainLoraBody,
    create_spec,
    result_info,
)
from webui.api.waiting import error_field


def _user(request: Request) -> str | None:
    return getattr(request.state, "user", None)


def _own(app: App, job: Job | None, request: Request, cancel: bool = False) -> Job:
    """``job`` when the caller may see it (their own, or one without an owner such as the start-up model load)
    or, with ``cancel``, stop it (their own; one without an owner only for an administrator)."""
    if job is None:
        raise HTTPException(status_code=404, detail="no such job")
    user = _user(request)
    if user is None or job.owner == user:
        return job
    if job.owner is not None:
        raise HTTPException(status_code=403, detail="this job belongs to another user")
    if cancel and not app.is_admin(user):
        raise HTTPException(status_code=403, detail="only an administrator may cancel this job")
    return job


def job_summary(app: App, job: Job) -> dict[str, Any]:
    return {"id": job.id, "kind": job.kind, "state": job.state.value, "position": app.queue.position(job),
            "created": job.created, "started": job.started, "finished": job.finished, "worker": job.worker,
            "attempts": job.attempts}


def result_body(job: Job) -> dict[str, Any] | None:
    """A finished job's result: generations in the v1 response shape, the others as their plain fields."""
    result = job.result
    if isinstance(result, ImagesResult):
        rendering = job.tag if isinstance(job.tag, Rendering) else Rendering()
        return response_body(result, rendering, {"job_id": job.id})
    if isinstance(result, BatchResult):
        return {"saved": [str(p) for p in result.saved], "skipped": [list(s) for s in result.skipped],
                "output_dir": str(result.output_dir) if result.output_dir else None,
                "interrupted": result.interrupted}
    if isinstance(result, ModelResult):
        return {"model": result.title}
    if isinstance(result, MergeResultSummary):
        return result.as_dict()
    if isinstance(result, InterrogateResult):
        return {"caption": result.caption}
    if isinstance(result, TrainResult):
        return result_info(result)
    if isinstance(result, ExtrasResult):
        return {"html_info": result.html_info, "interrupted": result.interrupted,
                "images": [base64.b64encode(i.png).decode("ascii") for i in result.images]}
    return None


def job_detail(app: App, job: Job, with_preview: bool = True) -> dict[str, Any]:
    p = job.control.progress
    out = job_summary(app, job)
    running = job.state is JobState.RUNNING
    out["progress"] = {
        "fraction": 1.0 if job.state is JobState.SUCCEEDED else round(p.fraction, 4) if running else 0.0,
        "step": p.sampling_step, "steps": p.sampling_steps, "job_no": p.job_no, "job_count": p.job_count,
        "phase": p.phase if running else job.state.value, "textinfo": p.textinfo if running else "",
    }
    if job.control.losses:  # a training: its latest loss
        out["progress"]["loss"] = job.control.losses[-1][1]
    eta = p.eta() if running else None
    out["eta"] = round(eta, 2) if eta is not None else None
    out["preview"] = None
    if with_preview and running and p.preview is not None:
        buf = io.BytesIO()
        p.preview.save(buf, format="PNG")
        out["preview"] = base64.b64encode(buf.getvalue()).decode("ascii")
    out["error"] = job.error
    out["error_kind"] = job.error_kind.value if job.error_kind is not None else None
    out["error_field"] = error_field(job)
    out["interrupted"] = _interrupted(job)
    out["warnings"] = _warnings(job)
    out["result"] = result_body(job) if job.state.finished else None
    return out


def _interrupted(job: Job) -> bool:
    """Whether an interrupt, a cancel or the server's stop cut the job short (its result holds what was made until
    then; a job the server stopped, or that was running when it died, failed with INTERRUPTED_BY_STOP)."""
    result = job.result
    return (bool(getattr(result, "interrupted", False)) or (job.state is JobState.CANCELLED and job.started is not None)
            or job.error == INTERRUPTED_BY_STOP)


def _warnings(job: Job) -> list[str]:
    rendering = job.tag if isinstance(job.tag, Rendering) else Rendering()
    notes = [*rendering.warnings, *job.control.warnings]
    if isinstance(job.result, ImagesResult):
        notes += interruption(job.result)
    elif isinstance(job.result, BatchResult) and job.result.interrupted:
        notes.append(f"interrupted: {len(job.result.saved)} image(s) written")
    return list(dict.fromkeys(notes))


def _accepted(app: App, job: Job) -> JSONResponse:
    return JSONResponse(job_summary(app, job), status_code=202, headers={"Location": f"/sdapi/v2/jobs/{job.id}"})


# the ``worker`` query parameter of the generation routes
WORKER_QUERY = Query(None, description="the id of the worker the job must run on (see /sdapi/v2/workers); "
                                       "empty or absent: any worker")


def build_router(app: App) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v2", tags=["jobs API"])

    @r.post("/txt2img", status_code=202)
    async def submit_txt2img(body: Txt2ImgBody, request: Request, worker: str | None = WORKER_QUERY) -> JSONResponse:
        prepared = await run_in_threadpool(prepare, app, body, "txt2img")
        return _accepted(app, app.submit(prepared.spec, _user(request), prepared.rendering, durable=True,
                                         pin=worker or None))

    @r.post("/img2img", status_code=202)
    async def submit_img2img(body: Img2ImgBody, request: Request, worker: str | None = WORKER_QUERY) -> JSONResponse:
        prepared = await run_in_threadpool(prepare, app, body, "img2img")
        return _accepted(app, app.submit(prepared.spec, _user(request), prepared.rendering, durable=True,
                                         pin=worker or None))

    @r.post("/extra-single-image", status_code=202)
    async def submit_extra_single(body: ExtrasSingleBody, request: Request) -> JSONResponse:
        req = await run_in_threadpool(extras_request_single, body)
        return _accepted(app, await run_in_threadpool(app.submit, ExtrasJob(req), _user(request), None, True))

    @r.post("/interrogate", status_code=202)
    async def submit_interrogate(body: InterrogateBody, request: Request) -> JSONResponse:
        spec = await run_in_threadpool(interrogate_job, app, body)
        return _accepted(app, await run_in_threadpool(app.submit, spec, _user(request), None, True))

    @r.post("/extra-batch-images", status_code=202)
    async def submit_extra_batch(body: ExtrasBatchBody, request: Request) -> JSONResponse:
        req = await run_in_threadpool(extras_request_batch, body)
        return _accepted(app, await run_in_threadpool(app.submit, ExtrasJob(req), _user(request), None, True))

    @r.post("/create/embedding", status_code=202)
    async def submit_create_embedding(body: CreateEmbeddingBody, request: Request) -> JSONResponse:
        return _accepted(app, await run_in_threadpool(app.submit, create_spec(body), _user(request), None, True))

    @r.post("/train/embedding", status_code=202)
    async def submit_train_embedding(body: TrainEmbeddingBody, request: Request) -> JSONResponse:
        spec = TrainEmbeddingJob(body.embedding_name, body.options(app))
        return _accepted(app, await run_in_threadpool(app.submit, spec, _user(request), None, True))

    @r.post("/train/lora", status_code=202)
    async def submit_train_lora(body: TrainLoraBody, request: Request) -> JSONResponse:
        return _accepted(app, await run_in_threadpool(app.submit, body.spec(app), _user(request), None, True))

    @r.get("/workers")
    def list_workers() -> list[dict[str, Any]]:
        """The generation workers and their state (a worker pool is asked: run in a thread)."""
        return app.workers_status()

    @r.get("/jobs")
    def list_jobs(request: Request) -> list[dict[str, Any]]:
        user = _user(request)
        return [job_summary(app, j) for j in app.queue.jobs() if user is None or j.owner in (None, user)]

    @r.get("/jobs/{job_id}")
    def get_job(job_id: str, request: Request, preview: bool = True) -> dict[str, Any]:
        return job_detail(app, _own(app, app.queue.get(job_id), request), preview)

    @r.delete("/jobs/{job_id}")
    def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
        job = _own(app, app.queue.get(job_id), request, cancel=True)
        app.queue.cancel(job.id)
        return job_summary(app, job)

    return r

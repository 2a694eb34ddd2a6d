"""Awaiting a queued job from an async route without holding a thread, and reporting its failure."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from modules.errors import ErrorKind
from modules.job_types import JobSpec
from modules.jobs import Job, JobState

if TYPE_CHECKING:
    from modules.app import App

T = TypeVar("T")

# the HTTP status of a failed job, by why it failed: the client's input (4xx), the machine (507), our bug (500)
STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 422, ErrorKind.MODEL: 422, ErrorKind.NANS: 422, ErrorKind.FAILED: 400,
    ErrorKind.OUT_OF_MEMORY: 507, ErrorKind.INTERNAL: 500,
}
_ERROR_NAMES: dict[ErrorKind, str] = {
    ErrorKind.INVALID: "ValidationError", ErrorKind.MODEL: "ModelLoadError", ErrorKind.NANS: "GenerationError",
    ErrorKind.FAILED: "JobFailed", ErrorKind.OUT_OF_MEMORY: "OutOfMemory", ErrorKind.INTERNAL: "JobFailed",
}


async def wait_for(job: Job) -> None:
    """Return once ``job`` has finished; the event loop stays free meanwhile."""
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()

    def on_done(_job: Job) -> None:
        loop.call_soon_threadsafe(finished.set)

    job.add_done_callback(on_done)
    await finished.wait()


def error_field(job: Job) -> str | None:
    """The request field or setting a failed job's client should change, when there is one."""
    message = (job.error or "").lower()
    if job.error_kind is ErrorKind.MODEL:
        return "sd_vae" if "vae" in message.split(":")[0] else "sd_model_checkpoint"
    if job.error_kind is ErrorKind.NANS:
        return "sd_vae" if "vae" in message else "precision"
    return job.error_field if job.error_kind is ErrorKind.INVALID else None


def _advice(job: Job) -> str:
    if job.error_kind is ErrorKind.NANS:
        field = error_field(job)
        if field == "precision":
            return "; or set the 'precision' option to fp32 (POST /sdapi/v1/options)"
        return "; or choose another VAE with the 'sd_vae' option"
    return ""


def failure_body(job: Job) -> dict[str, Any]:
    """What a failed job reports: its kind, short message (no traceback), the field to change and its id."""
    kind = job.error_kind or ErrorKind.INTERNAL
    body: dict[str, Any] = {"error": _ERROR_NAMES[kind], "kind": kind.value,
                            "detail": (job.error or "the job failed") + _advice(job), "job_id": job.id}
    field = error_field(job)
    if field:
        body["field"] = field
    return body


def failure_response(job: Job) -> JSONResponse:
    """A failed job: 4xx when the client's input caused it, 507 when memory ran out, 500 for our own bugs."""
    kind = job.error_kind or ErrorKind.INTERNAL
    return JSONResponse(failure_body(job), status_code=STATUS[kind])


async def finished_result(app: App, spec: JobSpec, request: Request, kind: type[T]) -> T | JSONResponse:
    """Queue ``spec`` for the caller and wait: its result, or the failure (or cancellation) as the response."""
    job = await run_in_threadpool(app.submit, spec, getattr(request.state, "user", None))
    await wait_for(job)
    if job.state is JobState.FAILED:
        return failure_response(job)
    if not isinstance(job.result, kind):
        return JSONResponse({"error": "Interrupted", "detail": "the job was cancelled", "job_id": job.id},
                            status_code=409)
    return job.result

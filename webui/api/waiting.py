"""Awaiting a queued job from an async route without holding a thread, and reporting its failure."""

from __future__ import annotations

import asyncio

from fastapi.responses import JSONResponse

from modules.jobs import Job


async def wait_for(job: Job) -> None:
    """Return once ``job`` has finished; the event loop stays free meanwhile."""
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()

    def on_done(_job: Job) -> None:
        loop.call_soon_threadsafe(finished.set)

    job.add_done_callback(on_done)
    await finished.wait()


def failure_response(job: Job) -> JSONResponse:
    """A failed job: 500 with its short message (no traceback), and its id for the jobs API."""
    return JSONResponse({"error": "JobFailed", "detail": job.error or "the job failed", "job_id": job.id},
                        status_code=500)

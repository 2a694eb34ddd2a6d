"""``POST /sdapi/v1/merge-checkpoints``: the Checkpoint Merger's form as an API route, run as a queued job.

Bad input (unknown model, families that differ, mismatched shapes, an invalid regex, an existing output...) is
answered with 422 before anything is queued; the merge itself runs in the job worker and the answer carries the new
checkpoint's path, title and hash.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from modules.app import App
from modules.job_types import MergeResultSummary
from modules.jobs import JobState
from modules.merge import service
from webui.api.waiting import failure_response, wait_for


class MergeBody(BaseModel):
    """A1111's ``run_modelmerger`` arguments; ``overwrite`` is ours (an existing file is never replaced otherwise)."""

    model_config = ConfigDict(extra="ignore")

    primary_model_name: str = Field(..., description="model A: a checkpoint title, name or hash")
    secondary_model_name: str | None = Field(None, description="model B (Weighted sum, Add difference)")
    tertiary_model_name: str | None = Field(None, description="model C (Add difference)")
    interp_method: str = Field("Weighted sum", description="No interpolation, Weighted sum or Add difference")
    multiplier: float = Field(0.3, ge=0.0, le=1.0)
    save_as_half: bool = False
    custom_name: str | None = ""
    checkpoint_format: str = Field("safetensors", pattern="^(safetensors|ckpt)$")
    config_source: int | str | None = Field(0, description="0-3 or A, B or C / B / C / Don't")
    bake_in_vae: str | None = Field("None", description="a VAE from models/VAE, or None")
    discard_weights: str | None = Field("", description="regex: matching keys are left out")
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str | None = "{}"
    overwrite: bool = False


def build_router(app: App) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1", tags=["Checkpoint Merger"])

    @r.post("/merge-checkpoints")
    async def merge_checkpoints(body: MergeBody, request: Request) -> Any:
        req = service.MergeRequest.from_dict(body.model_dump())
        job = await run_in_threadpool(service.submit, app, req, getattr(request.state, "user", None))
        await wait_for(job)
        if job.state is JobState.FAILED:
            return failure_response(job)
        if job.state is JobState.CANCELLED:
            return JSONResponse({"error": "Interrupted", "detail": "the merge was interrupted; nothing was written",
                                 "job_id": job.id}, status_code=409)
        if not isinstance(job.result, MergeResultSummary):
            return failure_response(job)
        return {**job.result.as_dict(), "job_id": job.id}

    return r

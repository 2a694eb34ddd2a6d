"""``POST /sdapi/v1/extra-single-image``, ``/extra-batch-images`` and ``/interrogate``: A1111's Extras (upscaling,
face restoration) and interrogation as queued jobs.

Bad input (an unknown upscaler, a corrupt image, sizes out of range, face restoration asked for) is a 422 naming
the field, before anything is queued. As in A1111's API nothing is saved; the images come back as base64 PNGs with
their text chunks (the source's generation parameters and the ``postprocessing`` entry).
"""

from __future__ import annotations

import base64
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from modules.app import App
from modules.extras import ExtrasRequest, ExtrasResult
from modules.job_types import ExtrasJob, InterrogateJob, InterrogateResult
from webui.api.images import decode_image, decode_images
from webui.api.waiting import finished_result

T = TypeVar("T")


class ExtrasBody(BaseModel):
    """A1111's ``ExtrasBaseRequest``."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: int = Field(0, ge=0, le=1, description="0: scale by upscaling_resize; 1: scale to width x height")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0.0, ge=0, le=1)
    codeformer_visibility: float = Field(0.0, ge=0, le=1)
    codeformer_weight: float = Field(0.0, ge=0, le=1)
    upscaling_resize: float = Field(2.0, ge=1, le=8)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0.0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleBody(ExtrasBody):
    image: str = Field("", description="base64 image")


class InterrogateBody(BaseModel):
    """A1111's ``InterrogateRequest``."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field("", description="base64 image")
    model: str = Field("clip", description="clip or deepdanbooru")


def interrogate_job(app: App, body: InterrogateBody) -> InterrogateJob:
    """The job of an interrogate request (the image decoded; ValidationError when it cannot be)."""
    return app.interrogate_job(decode_image(body.image, "image"), body.model)


class FileData(BaseModel):
    data: str = Field(..., description="base64 image")
    name: str = ""


class ExtrasBatchBody(ExtrasBody):
    imageList: list[FileData] = Field(default_factory=list)  # noqa: N815 - A1111's field name


def _request(body: ExtrasBody, images: list[tuple[str, Any]]) -> ExtrasRequest:
    fields = body.model_dump(exclude={"image", "imageList", "show_extras_results"})
    return ExtrasRequest(images=tuple(images), **fields)


def extras_request_single(body: ExtrasSingleBody) -> ExtrasRequest:
    """The request of ``extra-single-image`` (the image decoded; ValidationError when it cannot be)."""
    return _request(body, [("", decode_image(body.image, "image"))])


def extras_request_batch(body: ExtrasBatchBody) -> ExtrasRequest:
    named = [(f"imageList[{i}]", f.data) for i, f in enumerate(body.imageList)]
    images = decode_images(named)
    return _request(body, [(f.name, im) for f, im in zip(body.imageList, images, strict=True)])



async def _run(app: App, req: ExtrasRequest, request: Request) -> ExtrasResult | JSONResponse:
    return await finished_result(app, ExtrasJob(req), request, ExtrasResult)


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def build_router(app: App) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1", tags=["Extras"])

    @r.post("/extra-single-image")
    async def extra_single_image(body: ExtrasSingleBody, request: Request) -> Any:
        result = await _run(app, await run_in_threadpool(extras_request_single, body), request)
        if isinstance(result, JSONResponse):
            return result
        return {"html_info": result.html_info, "image": _b64(result.images[0].png) if result.images else ""}

    @r.post("/extra-batch-images")
    async def extra_batch_images(body: ExtrasBatchBody, request: Request) -> Any:
        result = await _run(app, await run_in_threadpool(extras_request_batch, body), request)
        if isinstance(result, JSONResponse):
            return result
        return {"html_info": result.html_info, "images": [_b64(i.png) for i in result.images]}

    @r.post("/interrogate")
    async def interrogate(body: InterrogateBody, request: Request) -> Any:
        spec = await run_in_threadpool(interrogate_job, app, body)
        result = await finished_result(app, spec, request, InterrogateResult)
        return result if isinstance(result, JSONResponse) else {"caption": result.caption}

    return r

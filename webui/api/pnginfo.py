"""``POST /sdapi/v1/png-info``: the generation metadata of an image, whichever tool wrote it (A1111's shape)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from modules.app import App
from modules.errors import ValidationError
from modules.metadata import read_metadata

MAX_IMAGE_BYTES = 50 * 1024 * 1024  # decoded image size accepted (the UI's upload limit is the same)
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.I)


class PngInfoBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image: str | None = ""


def decode_image_field(text: str | None, limit: int) -> bytes:
    """The bytes of a data URL or raw base64 string; ValidationError for anything else."""
    text = (text or "").strip()
    if not text:
        raise ValidationError("image: no image given", field="image")
    if re.match(r"^https?://", text, re.I):
        raise ValidationError("image: URLs are not fetched; send the image itself as base64 or a data URL",
                              field="image")
    text = _DATA_URL.sub("", text, count=1)
    text = re.sub(r"\s+", "", text)
    if len(text) > (limit + 2) // 3 * 4 + 4:
        raise _TooLarge(len(text) * 3 // 4, limit)
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        data = b""
        if re.fullmatch(r"[A-Za-z0-9_-]+=*", text):
            try:
                data = base64.urlsafe_b64decode(text)
            except (binascii.Error, ValueError):
                data = b""
        if not data:
            raise ValidationError("image: not valid base64 (send a data URL or a base64 string)",
                                  field="image") from None
    if len(data) > limit:
        raise _TooLarge(len(data), limit)
    return data


class _TooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"image: {size} bytes is more than the {limit} bytes accepted")


def png_info(data: bytes) -> dict[str, Any]:
    """A1111's response: ``info`` (the generation text, A1111 format), ``items`` (the other text items, as A1111),
    ``parameters`` (the parsed, A1111-named values), plus ``raw_items`` (every raw text item as written, the one
    ``info`` came from included, so the original text can always be copied), ``tool``, ``errors``, ``warnings``."""
    md = read_metadata(data)
    return {"info": md.infotext, "items": md.other_items(), "raw_items": md.items, "parameters": md.parameters,
            "tool": md.tool,
            "format": md.format, "errors": md.errors, "warnings": md.warnings}


def build_router(app: App) -> APIRouter:
    del app  # reading metadata needs no model, queue or settings
    r = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"])

    @r.post("/png-info")
    def pnginfo(body: PngInfoBody) -> Any:
        try:
            data = decode_image_field(body.image, MAX_IMAGE_BYTES)
        except _TooLarge as exc:
            return JSONResponse({"error": "PayloadTooLarge", "detail": str(exc), "field": "image"}, status_code=413)
        return png_info(data)

    return r

"""The HTTP server: FastAPI with the A1111 API, the jobs API, the Gradio UI, auth and error mapping."""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware

from modules.app import App
from modules.errors import ModelLoadError, ValidationError, WebUIError
from modules.jobs import QueueFull
from modules.version import __version__
from webui.launch_options import ServerConfig

log = logging.getLogger(__name__)
API_PREFIXES = ("/sdapi/", "/docs", "/redoc", "/openapi.json", "/internal/")


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class ApiGuard(BaseHTTPMiddleware):
    """HTTP Basic auth (when configured) and a same-origin check for every non-UI route."""

    def __init__(self, app: Any, config: ServerConfig) -> None:
        super().__init__(app)
        self.config = config

    async def dispatch(self, request: Request, call_next):
        path = request.url.path
        if not path.startswith(API_PREFIXES) and not self.config.nowebui:
            return await call_next(request)  # the Gradio UI enforces its own login
        origin = request.headers.get("origin")
        if origin is not None and request.method not in ("GET", "HEAD", "OPTIONS"):
            host = request.headers.get("host", "")
            if origin == "null" or origin.split("://", 1)[-1] != host:
                return JSONResponse({"error": "Forbidden", "detail": "cross-origin request refused"},
                                    status_code=403)
        if self.config.auth_enabled:
            creds = _basic_credentials(request)
            if creds is None or not self.config.check_api(*creds):
                return JSONResponse({"error": "Unauthorized", "detail": "authentication required"},
                                    status_code=401, headers={"WWW-Authenticate": 'Basic realm="sdwebui"'})
            request.state.user = creds[0]
        return await call_next(request)


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(ValidationError)
    async def on_validation(_: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse({"error": "ValidationError", "detail": str(exc), "field": exc.field}, status_code=422)

    @api.exception_handler(RequestValidationError)
    async def on_request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        detail = f"{field}: {first.get('msg', 'invalid value')}"
        safe = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
                for e in errors]
        return JSONResponse({"error": "ValidationError", "detail": detail, "field": field, "errors": safe},
                            status_code=422)

    @api.exception_handler(QueueFull)
    async def on_queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse({"error": "QueueFull", "detail": str(exc)}, status_code=503,
                            headers={"Retry-After": "5"})

    @api.exception_handler(ModelLoadError)
    async def on_model(_: Request, exc: ModelLoadError) -> JSONResponse:
        return JSONResponse({"error": "ModelLoadError", "detail": str(exc)}, status_code=422)

    @api.exception_handler(WebUIError)
    async def on_error(_: Request, exc: WebUIError) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=400)

    @api.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "InternalError", "detail": type(exc).__name__}, status_code=500)


def create_server(app: App, config: ServerConfig, on_started: Callable[[], None] | None = None) -> FastAPI:
    """The ASGI app; the application's worker starts with the server and stops with it."""
    from webui.api import merge, pnginfo, v1, v2

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        app.start()
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            app.stop()

    api = FastAPI(title="sdwebui", version=__version__, docs_url="/docs", redoc_url="/redoc", lifespan=lifespan,
                  description="A1111-compatible API (/sdapi/v1) and an asynchronous jobs API (/sdapi/v2).")
    install_error_handlers(api)
    api.add_middleware(ApiGuard, config=config)
    api.include_router(v1.build_router(app))
    api.include_router(v2.build_router(app))
    api.include_router(pnginfo.build_router(app))
    api.include_router(merge.build_router(app))

    @api.get("/internal/ping", include_in_schema=False)
    def ping() -> dict[str, Any]:
        return {"status": "ok", "model": app.model_status.state}

    if not config.nowebui:
        import gradio as gr

        from webui.ui import build_ui

        blocks = build_ui(app)
        auth = (lambda user, password: config.check_ui(user, password)) if config.auth_enabled else None
        gr.mount_gradio_app(
            api, blocks, path="", auth=auth, auth_message="Log in to sdwebui",
            allowed_paths=[str(app.paths.outputs_dir)],
            blocked_paths=[str(app.paths.config_file), str(app.paths.data_dir / "cache")],
            max_file_size="50mb", show_error=False, footer_links=["api"], ssr_mode=False,
            css=getattr(blocks, "webui_css", None),
        )
    return api

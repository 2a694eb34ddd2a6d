"""The HTTP server: FastAPI with the A1111 API, the jobs API, the Gradio UI, auth and error mapping."""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from modules.app import ADMIN_ONLY, App, Forbidden
from modules.errors import ModelLoadError, ValidationError, WebUIError
from modules.jobs import QueueFull
from modules.version import __version__
from webui.launch_options import ServerConfig, is_loopback, parse_authority

log = logging.getLogger(__name__)
API_PREFIXES = ("/sdapi/", "/docs", "/redoc", "/openapi.json", "/internal/")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
# routes that change settings or models: only for administrators (--admin-users) when auth is on
ADMIN_ROUTES = frozenset(("/sdapi/v1/options", "/sdapi/v1/refresh-checkpoints", "/sdapi/v1/unload-checkpoint",
                          "/sdapi/v1/reload-checkpoint", "/sdapi/v1/merge-checkpoints",
                          # trainings write model files and hold the device for a long time
                          "/sdapi/v1/create/embedding", "/sdapi/v1/train/embedding", "/sdapi/v1/train/lora",
                          "/sdapi/v2/create/embedding", "/sdapi/v2/train/embedding", "/sdapi/v2/train/lora"))
GRACEFUL_SHUTDOWN_S = 5  # open connections (event streams included) get this long once the server is stopping


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


def _scheme(scope: Scope) -> str:
    scheme = str(scope.get("scheme", "http"))
    return {"ws": "http", "wss": "https"}.get(scheme, scheme)


def _bare_address(address: str | None) -> str:
    """The connection's local address as a Host would name it (``::ffff:10.0.0.2`` -> ``10.0.0.2``)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return (address or "").lower()
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def same_origin(origin: str, scheme: str, host: str) -> bool:
    """Whether a browser's ``Origin`` names this very server: scheme, host and port compared exactly."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme != scheme or parts.path or parts.query or parts.fragment:
        return False
    mine = parse_authority(host, scheme)
    return mine is not None and parse_authority(parts.netloc, parts.scheme) == mine


def own_host_names(config: ServerConfig) -> frozenset[str]:
    """Names besides loopback ones that reach the server: ``--server-name``, or this machine's name when
    listening on every interface."""
    if config.host.lower() not in WILDCARD_HOSTS:
        return frozenset({config.host.lower().strip("[]")})
    name = socket.gethostname().lower()
    return frozenset({name, f"{name}.local"})


class HostOriginGuard:
    """On every route (API, UI, Gradio's own routes, files): a Host the server was not started for is refused
    (DNS rebinding), and so is any request whose Origin is not this server's own, whatever its method."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.own_names = own_host_names(config)
        self.any_host = "*" in config.allowed_hosts
        self.extra = [parse_authority(h, "") for h in config.allowed_hosts if h != "*"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        origin = headers.get("origin")
        if not self.host_allowed(host, scope):
            status, detail = 400, "Host header not allowed (see --allowed-hosts)"
        elif origin is not None and not same_origin(origin, _scheme(scope), host):
            status, detail = 403, "cross-origin request refused"
        else:
            await self.app(scope, receive, send)
            return
        log.warning("refused a request for Host %r from Origin %r: %s", host[:100], (origin or "")[:100], detail)
        if scope["type"] == "websocket":
            await WebSocketClose(code=1008, reason=detail)(scope, receive, send)
            return
        error = "Forbidden" if status == 403 else "BadRequest"
        await JSONResponse({"error": error, "detail": detail}, status_code=status)(scope, receive, send)

    def host_allowed(self, host: str, scope: Scope) -> bool:
        parsed = parse_authority(host, _scheme(scope))
        if parsed is None:
            return False
        name, port = parsed
        if self.any_host or any(e is not None and e[0] == name and e[1] in (None, port) for e in self.extra):
            return True
        local_address, server_port = scope.get("server") or (None, self.config.port)
        if port != server_port:
            return False
        return is_loopback(name) or name in self.own_names or name == _bare_address(local_address)


def forbidden(method: str, path: str, user: str | None, app: App) -> bool:
    """Whether ``user`` is refused this route: writes to the settings and models are for administrators."""
    return method not in ("GET", "HEAD", "OPTIONS") and path.rstrip("/") in ADMIN_ROUTES and not app.is_admin(user)


class ApiGuard(BaseHTTPMiddleware):
    """HTTP Basic auth (when configured) for every non-UI route (every route with --nowebui); the routes that change
    settings or models only for administrators."""

    def __init__(self, app: Any, config: ServerConfig, application: App) -> None:
        super().__init__(app)
        self.config = config
        self.application = application

    async def dispatch(self, request: Request, call_next):
        path = request.url.path
        if not path.startswith(API_PREFIXES) and not self.config.nowebui:
            return await call_next(request)  # the Gradio UI enforces its own login
        if self.config.auth_enabled:
            creds = _basic_credentials(request)
            if creds is None or not self.config.check_api(*creds):
                return JSONResponse({"error": "Unauthorized", "detail": "authentication required"},
                                    status_code=401, headers={"WWW-Authenticate": 'Basic realm="sdwebui"'})
            request.state.user = creds[0]
            if forbidden(request.method, path, creds[0], self.application):
                return JSONResponse({"error": "Forbidden", "detail": ADMIN_ONLY}, status_code=403)
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

    @api.exception_handler(Forbidden)
    async def on_forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return JSONResponse({"error": "Forbidden", "detail": str(exc)}, status_code=403)

    @api.exception_handler(WebUIError)
    async def on_error(_: Request, exc: WebUIError) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=400)

    @api.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "InternalError", "detail": type(exc).__name__}, status_code=500)


def create_server(app: App, config: ServerConfig, on_started: Callable[[], None] | None = None) -> FastAPI:
    """The ASGI app; the application's worker starts with the server and stops with it."""
    from webui.api import extensions, extras, merge, pnginfo, training, v1, v2

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
    api.add_middleware(ApiGuard, config=config, application=app)
    api.add_middleware(HostOriginGuard, config=config)  # added last: runs first, for every route
    api.include_router(v1.build_router(app))
    api.include_router(v2.build_router(app))
    api.include_router(pnginfo.build_router(app))
    api.include_router(merge.build_router(app))
    api.include_router(extras.build_router(app))
    api.include_router(training.build_router(app))
    extensions.include_routes(api, app)  # after the others: an extension's prefix may not meet their routes

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
        # Gradio checks that file paths in requests were uploaded (or are allowed) only once its Blocks count as
        # launched, which launch() sets and mounting does not: without it any file on disk could be copied.
        blocks.has_launched = True
    return api


def stop_jobs(app: App) -> None:
    """Interrupt the running job and cancel the waiting ones; the worker takes no new job."""
    app.queue.stop(timeout=0)
    for job in app.queue.jobs():
        if not job.state.finished:
            app.queue.cancel(job.id)


class StoppingServer(uvicorn.Server):
    """uvicorn, but a stop signal first interrupts the jobs, so that requests waiting on them return at once."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:  # a thread: the signal may arrive while the main thread holds the queue's lock
            threading.Thread(target=self.on_exit, name="stop-jobs", daemon=True).start()
        super().handle_exit(sig, frame)


def serve(app: App, config: ServerConfig, asgi: FastAPI, timeout_keep_alive: int) -> None:
    """Serve until SIGINT or SIGTERM; then running and waiting jobs stop and the process exits within seconds."""
    settings = uvicorn.Config(asgi, host=config.host, port=config.port, log_level="warning",
                              timeout_keep_alive=timeout_keep_alive, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    StoppingServer(settings, on_exit=lambda: stop_jobs(app)).run()

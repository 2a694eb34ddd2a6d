"""``/sdapi/v1/extensions`` (A1111's list), installing and enabling extensions, and the extensions' own routes
under ``/sdapi/v1/<name>``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.routing import Match

from modules.app import App
from modules.extensions import Extension, ExtensionAccessError, ExtensionNotFound
from modules.extensions.manifest import requirement_status

log = logging.getLogger(__name__)


class ExtensionItem(BaseModel):
    """A1111's entry of ``/sdapi/v1/extensions``."""

    name: str = Field(description="Extension name (its folder)")
    remote: str = Field(description="Extension Repository URL (empty when not a git folder)")
    branch: str = Field(description="Extension Repository Branch")
    commit_hash: str = Field(description="Extension Repository Commit Hash")
    version: str = Field(description="Extension Version: the commit's first 8 digits, else extension.toml's")
    commit_date: str = Field(description="Extension Repository Commit Date (seconds since the epoch)")
    enabled: bool = Field(description="Flag specifying whether this extension is enabled")


class EnableBody(BaseModel):
    name: str = Field(max_length=200, description="the extension's folder name")
    enabled: bool = Field(description="run it from the next start (true) or not (false)")


class InstallBody(BaseModel):
    source: str = Field(max_length=4096, description="a git URL (cloned), or a folder or .zip file on the server")
    branch: str | None = Field(default=None, max_length=200, description="git only: the branch to clone")
    name: str | None = Field(default=None, max_length=200, description="the folder name (default: its manifest's)")
    dry_run: bool = Field(default=False, description="only read the extension and answer what it declares")


def _user(request: Request) -> str | None:
    return getattr(request.state, "user", None)


def _refused(exc: Exception, status: int) -> JSONResponse:
    error = "Forbidden" if status == 403 else "NotFound"
    return JSONResponse({"error": error, "detail": str(exc)}, status_code=status)


def describe(app: App, ext: Extension) -> dict[str, Any]:
    """An extension's entry: its name, title, version, state and requirements."""
    manifest = ext.manifest
    return {"name": ext.name, "title": ext.title, "version": ext.version, "enabled": app.extensions.enabled(ext),
            "status": app.extensions.status(ext), "builtin": ext.builtin,
            "description": manifest.description if manifest else "",
            "requirements": list(manifest.requirements) if manifest else [], "restart_required": True}


def build_router(app: App) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1", tags=["Extensions"])

    @r.get("/extensions", response_model=list[ExtensionItem])
    def list_extensions() -> list[dict[str, Any]]:
        return app.extensions.a1111_list()

    @r.post("/extensions/enable")
    def enable(body: EnableBody, request: Request) -> Any:
        """Enable or disable an extension from the next start (refused with 403 while the server is exposed,
        unless started with --enable-insecure-extension-access)."""
        try:
            ext = app.extensions.set_enabled(body.name, body.enabled, _user(request))
        except ExtensionAccessError as exc:
            return _refused(exc, 403)
        except ExtensionNotFound as exc:
            return _refused(exc, 404)
        return describe(app, ext)

    @r.post("/extensions/install")
    def install(body: InstallBody, request: Request) -> Any:
        """Install from a git URL (``git clone``), a folder or a .zip on the server; nothing of it runs until the
        next start. ``dry_run`` answers what it declares (its requirements) without installing."""
        try:
            staged = app.extensions.stage(body.source, body.branch or None, _user(request))
        except ExtensionAccessError as exc:
            return _refused(exc, 403)
        try:
            if body.dry_run:
                m = staged.manifest
                return {"name": body.name or m.name, "title": m.title, "version": m.version,
                        "description": m.description,
                        "requirements": [requirement_status(x) for x in m.requirements], "installed": False}
            ext = app.extensions.install_staged(staged.token, body.name, _user(request))
        except ExtensionAccessError as exc:
            return _refused(exc, 403)
        finally:
            app.extensions.installer.discard(staged.token)
        return {**describe(app, ext), "installed": True}

    return r


def taken_path(api: FastAPI, paths: list[str]) -> str | None:
    """The first of ``paths`` that a route of ``api`` already answers (whatever the method)."""
    for path in paths:
        scope = {"type": "http", "path": path, "method": "GET", "root_path": "", "path_params": {},
                 "headers": [], "query_string": b""}
        if any(route.matches(scope)[0] != Match.NONE for route in api.router.routes):
            return path
    return None


def include_routes(api: FastAPI, app: App) -> None:
    """The extension routes, then each loaded extension's routers under ``/sdapi/v1/<name>`` (one whose prefix or
    routes meet a route already there is not mounted, and the extension lists that error)."""
    api.include_router(build_router(app))
    for name, router in app.extensions.routers():
        prefix = f"/sdapi/v1/{name}"
        if not isinstance(router, APIRouter):
            app.extensions.note_error(name, "its router is not a fastapi.APIRouter; its routes are not served")
            continue
        own = [prefix + str(getattr(route, "path", "")) for route in router.routes]
        clash = taken_path(api, [prefix, prefix + "/", *own])
        if clash is not None:
            app.extensions.note_error(name, f"its routes are not served: {clash} is taken")
            continue
        try:
            api.include_router(router, prefix=prefix, tags=[f"extension: {name}"])
        except Exception as exc:
            log.exception("the routes of extension %s cannot be served", name)
            app.extensions.note_error(name, f"its routes are not served: {type(exc).__name__}: {exc}")
            continue
        log.info("extension %s: %d route(s) under %s", name, len(own), prefix)

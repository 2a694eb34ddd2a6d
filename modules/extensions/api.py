"""What an extension's ``setup(api)`` is given: :class:`ExtensionAPI`, the one documented surface (see
``extensions/README.md``).

Everything an extension adds during ``setup`` takes effect together once ``setup`` returns; if ``setup`` raises,
nothing it added does. Hooks run for every txt2img and img2img generation as an always-on script of the extension's
own (``<name> hooks``) that every job carries.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.errors import WebUIError
from modules.extensions.manifest import Manifest
from modules.requests import GenerationRequest
from modules.scripts.base import Script
from modules.settings import Option

if TYPE_CHECKING:
    from modules.app import App
    from modules.engine import JobOutput

BeforeHook = Callable[[GenerationRequest], GenerationRequest]
AfterHook = Callable[[GenerationRequest, "JobOutput"], None]
TabBuilder = Callable[[], None]


@dataclass(frozen=True)
class ExtensionTab:
    """A tab an extension adds: ``build()`` creates its Gradio components inside the tab."""

    extension: str
    title: str
    build: TabBuilder
    elem_id: str


class ExtensionAPI:
    """Given to an extension's ``setup(api)``. Its methods may be called during ``setup`` only."""

    def __init__(self, app: App, name: str, path: Path, manifest: Manifest) -> None:
        self._app = app
        self.name = name  # the folder's name: the extension's identity and the prefix of its routes
        self.path = path  # the extension's folder
        self.manifest = manifest
        self.log = logging.getLogger(f"extensions.{name}")
        self.scripts: list[Script] = []
        self.options: list[Option] = []
        self.tabs: list[ExtensionTab] = []
        self.routers: list[Any] = []
        self.before_hooks: list[BeforeHook] = []
        self.after_hooks: list[AfterHook] = []
        self._open = True

    @property
    def app(self) -> App:
        """The application and its services (settings, scripts, queue, models). Full access; only the methods of
        this class are a stable API."""
        return self._app

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"extension {self.name}: the extension API can be used during setup() only")

    def add_script(self, script: Script) -> None:
        """A script for the "Script" menu and ``script_name`` (or an always-on one), as the built-in scripts are."""
        self._check_open()
        if not isinstance(script, Script):
            raise TypeError(f"add_script: expected a Script, got {type(script).__name__}")
        self.scripts.append(script)

    def add_tab(self, title: str, build: TabBuilder) -> None:
        """A tab of the web UI titled ``title``; ``build()`` is called inside it (a ``gr.Tab`` context) when the
        page is built, and creates the tab's Gradio components and events."""
        self._check_open()
        if not title.strip() or not callable(build):
            raise ValueError("add_tab: a title and a build() function are needed")
        elem_id = f"tab_ext_{self.name}_{len(self.tabs)}".replace(".", "_").replace("-", "_")
        self.tabs.append(ExtensionTab(self.name, title.strip(), build, elem_id))

    def add_option(self, option: Option) -> None:
        """A setting, shown in the extension's own section of the Settings tab (``option.section`` is replaced by
        the extension's title) and saved in ``config.json``. Prefix its key with the extension's name."""
        self._check_open()
        if not isinstance(option, Option):
            raise TypeError(f"add_option: expected an Option, got {type(option).__name__}")
        self.options.append(dataclasses.replace(option, section=self.manifest.title))

    def setting(self, key: str) -> Any:
        """The current value of a setting (this extension's own once setup is done, or any built-in one)."""
        return self._app.settings[key]

    def add_router(self, router: Any) -> None:
        """A ``fastapi.APIRouter`` whose routes are served under ``/sdapi/v1/<name>`` (with the API's auth)."""
        self._check_open()
        if not hasattr(router, "routes"):
            raise TypeError(f"add_router: expected a fastapi.APIRouter, got {type(router).__name__}")
        self.routers.append(router)

    def on_before_generation(self, hook: BeforeHook) -> None:
        """``hook(request) -> request`` runs before every txt2img and img2img job (after the job's own always-on
        scripts); what it returns is generated. Raising a ``WebUIError`` (e.g. ``ValidationError``) fails the job
        with that message; any other exception is logged and the request goes on unchanged."""
        self._check_open()
        self.before_hooks.append(hook)

    def on_after_generation(self, hook: AfterHook) -> None:
        """``hook(request, output)`` runs after each generation of every txt2img and img2img job, with the
        generated images, infotexts and seeds in ``output.result`` and the saved files in ``output.paths``."""
        self._check_open()
        self.after_hooks.append(hook)

    def close(self) -> None:
        self._open = False


class HookScript(Script):
    """The always-on script that runs an extension's hooks; every job carries it (see ``App.generation_job``)."""

    alwayson = True

    def __init__(self, extension: str, before: Sequence[BeforeHook], after: Sequence[AfterHook]) -> None:
        self.extension = extension
        self.before_hooks = tuple(before)
        self.after_hooks = tuple(after)
        self.log = logging.getLogger(f"extensions.{extension}")

    def before(self, req: GenerationRequest, args: Sequence[Any]) -> GenerationRequest:
        for hook in self.before_hooks:
            try:
                changed = hook(req)
            except WebUIError:
                raise
            except Exception:
                self.log.exception("extension %s: a before-generation hook failed", self.extension)
                continue
            if isinstance(changed, type(req)):
                req = changed
            else:
                self.log.error("extension %s: a before-generation hook returned %s, not the request",
                               self.extension, type(changed).__name__)
        return req

    def after(self, req: GenerationRequest, output: JobOutput, args: Sequence[Any]) -> None:
        for hook in self.after_hooks:
            try:
                hook(req, output)
            except WebUIError:
                raise
            except Exception:
                self.log.exception("extension %s: an after-generation hook failed", self.extension)


def hook_script(extension: str, before: Sequence[BeforeHook], after: Sequence[AfterHook]) -> HookScript:
    """The hooks of ``extension`` as an always-on script titled ``<extension> hooks``."""

    class Hooks(HookScript):
        title = f"{extension} hooks"

    return Hooks(extension, before, after)

"""The extensions of the application: found in their folders, loaded at start when enabled, listed, enabled or
disabled (saved in ``config.json`` as A1111 keeps it), installed.

Where they live: the data folder's ``extensions/`` (where installs go) and the program's own ``extensions/`` (which
ships ``example``, off until enabled). A folder name found in both is the data folder's. Enabling, disabling and
installing take effect at the next start. While the server is reachable from the network none of them is allowed
without ``--enable-insecure-extension-access``: an extension is code that runs with the server's rights.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from modules.errors import ValidationError, WebUIError
from modules.extensions.api import ExtensionAPI, ExtensionTab, hook_script
from modules.extensions.gitinfo import GitInfo, read_git_info
from modules.extensions.install import STAGE_PREFIX, Installer, Staged
from modules.extensions.manifest import Manifest, ManifestError, looks_like_a1111, read_manifest
from modules.paths import PROJECT_ROOT
from modules.scripts.registry import ScriptCall

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)
SHIPPED = frozenset({"example"})  # the extensions this program ships in its own folder (A1111's "built-in")
SHIPPED_DIR = PROJECT_ROOT / "extensions"
DISABLED_KEY, ENABLED_KEY, DISABLE_ALL_KEY = "disabled_extensions", "enabled_extensions", "disable_all_extensions"
DISABLE_ALL_CHOICES = ("none", "extra", "all")
MAX_ERROR_CHARS = 500
EXPOSED_REFUSAL = ("the server is reachable from the network: installing, enabling and disabling extensions is off; "
                   "start it with --enable-insecure-extension-access to allow it (an extension runs with the "
                   "server's rights)")


class ExtensionAccessError(WebUIError):
    """Extensions cannot be installed or toggled while the server is exposed (HTTP 403)."""


class ExtensionNotFound(WebUIError):
    """No installed extension has that name (HTTP 404)."""


@dataclass(frozen=True)
class Extension:
    """One folder of an extensions folder, as found (nothing of it has run)."""

    name: str
    path: Path
    builtin: bool  # shipped with the program
    kind: str  # "extension", "a1111" (not compatible) or "invalid"
    manifest: Manifest | None = None
    problem: str | None = None  # why it is invalid
    git: GitInfo | None = None

    @property
    def title(self) -> str:
        return self.manifest.title if self.manifest else self.name

    @property
    def version(self) -> str:
        """The git commit (8 digits, as A1111) for a git folder, else the manifest's version."""
        if self.git is not None and self.git.commit_hash:
            return self.git.commit_hash[:8]
        return self.manifest.version if self.manifest else ""


def scan_folder(path: Path, builtin: bool) -> Extension:
    git = read_git_info(path)
    if looks_like_a1111(path):
        return Extension(path.name, path, builtin, "a1111", git=git)
    try:
        return Extension(path.name, path, builtin, "extension", read_manifest(path), git=git)
    except ManifestError as exc:
        return Extension(path.name, path, builtin, "invalid", problem=str(exc), git=git)


def import_entry(module_name: str, folder: Path, entry: str) -> ModuleType:
    """Import ``folder/entry`` as the package ``module_name`` (its folder's other modules import relatively)."""
    spec = importlib.util.spec_from_file_location(module_name, folder / entry, submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {entry}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def forget_module(module_name: str) -> None:
    """Drop a package and its sub-modules from ``sys.modules`` (an extension that failed to load)."""
    for key in [k for k in sys.modules if k == module_name or k.startswith(module_name + ".")]:
        del sys.modules[key]


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 1] + "…"


@dataclass
class Loaded:
    api: ExtensionAPI
    hooks: str | None = None  # the name of its hooks script


class ExtensionManager:
    def __init__(self, app: App, roots: Sequence[Path] | None = None, shipped: Path = SHIPPED_DIR) -> None:
        self.app = app
        self.target = app.paths.data_dir / "extensions"
        self.roots = list(roots) if roots is not None else [self.target, shipped]
        self.shipped = shipped
        self.installer = Installer(self.target)
        self._lock = threading.RLock()
        self._loaded: dict[str, Loaded] = {}
        self._errors: dict[str, str] = {}  # name -> why it failed to load
        self._notes: dict[str, list[str]] = {}  # name -> what of it failed once loaded (its tab, its routes)

    # -- the folders
    def scan(self) -> list[Extension]:
        """Every extension folder, by name (a name in two folders: the first folder's)."""
        found: dict[str, Extension] = {}
        seen: set[Path] = set()
        shipped = self.shipped.resolve()
        for root in self.roots:
            try:
                folder = root.resolve()
                children = sorted(p for p in folder.iterdir() if p.is_dir()) if folder not in seen else []
            except OSError:
                continue
            seen.add(folder)
            builtin = folder == shipped
            for path in children:
                if path.name.startswith((".", "_")) or path.name.startswith(STAGE_PREFIX):
                    continue
                if path.name in found:
                    log.debug("extension %s in %s is hidden by the one in %s", path.name, root, found[path.name].path)
                    continue
                found[path.name] = scan_folder(path, builtin and path.name in SHIPPED)
        return list(found.values())

    def get(self, name: str) -> Extension:
        ext = next((e for e in self.scan() if e.name == name), None)
        if ext is None:
            raise ExtensionNotFound(f"no extension named {name!r} is installed")
        return ext

    # -- what the user chose
    def _names(self, key: str) -> list[str]:
        value = self.app.settings.stored(key, [])
        return [str(v) for v in value] if isinstance(value, list) else []

    def enabled(self, ext: Extension) -> bool:
        """The user's choice (A1111's ``disabled_extensions``; ``enabled_extensions`` for those off by default)."""
        if ext.name in self._names(DISABLED_KEY):
            return False
        return ext.manifest is None or ext.manifest.enabled_by_default or ext.name in self._names(ENABLED_KEY)

    def disable_all(self) -> str:
        """A1111's "Disable all extensions" setting: none, extra (all but the shipped ones) or all."""
        value = self.app.settings.stored(DISABLE_ALL_KEY, "none")
        return value if value in DISABLE_ALL_CHOICES else "none"

    def off_reason(self, ext: Extension) -> str | None:
        """Why ``ext`` does not run whatever its own choice (a flag, the "Disable all extensions" setting)."""
        options = self.app.options
        if options.disable_extensions == "all":
            return "--disable-all-extensions"
        if options.disable_extensions == "extra" and not ext.builtin:
            return "--disable-extra-extensions"
        mode = self.disable_all()
        if mode == "all" or (mode == "extra" and not ext.builtin):
            return f"Disable all extensions: {mode}"
        return None

    # -- permission
    def management_refusal(self) -> str | None:
        """Why extensions cannot be installed or toggled now, or None."""
        if self.app.options.exposed and not self.app.options.extension_access:
            return EXPOSED_REFUSAL
        return None

    def check_manage(self, user: str | None = None) -> None:
        """Refuse ``user`` (not an administrator: Forbidden) or anyone while the server is exposed."""
        self.app.require_admin(user)
        refusal = self.management_refusal()
        if refusal:
            raise ExtensionAccessError(refusal)

    def set_enabled(self, name: str, enabled: bool, user: str | None = None) -> Extension:
        """Enable or disable ``name`` from the next start, saved in ``config.json``."""
        self.check_manage(user)
        ext = self.get(name)
        if enabled and ext.kind != "extension":
            raise ValidationError(f"{name} cannot be enabled: {self.status(ext)}", field="name")
        with self._lock:
            disabled = [n for n in self._names(DISABLED_KEY) if n != name]
            wanted = [n for n in self._names(ENABLED_KEY) if n != name]
            if enabled and ext.manifest is not None and not ext.manifest.enabled_by_default:
                wanted.append(name)
            if not enabled:
                disabled.append(name)
            self.app.settings.store({DISABLED_KEY: disabled, ENABLED_KEY: wanted})
        return ext

    def set_disable_all(self, value: str, user: str | None = None) -> None:
        self.check_manage(user)
        if value not in DISABLE_ALL_CHOICES:
            raise ValidationError(f"disable_all_extensions: must be one of {', '.join(DISABLE_ALL_CHOICES)}",
                                  field="disable_all_extensions")
        self.app.settings.store({DISABLE_ALL_KEY: value})

    # -- loading (once, at start)
    def load(self) -> None:
        """Import and set up every enabled extension; one that fails is listed with its error, the rest load."""
        if self.app.options.disable_extensions != "none" or self.disable_all() != "none":
            log.info("extensions are turned off (%s)", self.app.options.disable_extensions if
                     self.app.options.disable_extensions != "none" else f"Disable all extensions: {self.disable_all()}")
        for ext in self.scan():
            if ext.kind == "a1111":
                log.info("extension %s is an A1111 extension: not compatible, not run", ext.name)
            elif ext.kind == "extension" and self.enabled(ext) and self.off_reason(ext) is None:
                self._load(ext)

    def _load(self, ext: Extension) -> None:
        assert ext.manifest is not None
        api = ExtensionAPI(self.app, ext.name, ext.path, ext.manifest)
        module_name = "sdwebui_extension_" + re.sub(r"\W", "_", ext.name)
        try:
            module = import_entry(module_name, ext.path, ext.manifest.entry)
            setup = getattr(module, "setup", None)
            if not callable(setup):
                raise TypeError(f"{ext.manifest.entry} has no setup(api) function")
            setup(api)
            api.close()
            self._commit(ext, api)
        except (Exception, SystemExit) as exc:
            log.exception("extension %s failed to load; the server runs on without it", ext.name)
            self._errors[ext.name] = short_error(exc)
            forget_module(module_name)
            return
        log.info("extension %s loaded", ext.name)

    def _commit(self, ext: Extension, api: ExtensionAPI) -> None:
        """What ``setup`` added, all or nothing."""
        added = []
        scripts = list(api.scripts)
        hooks = hook_script(ext.name, api.before_hooks, api.after_hooks) if (
            api.before_hooks or api.after_hooks) else None
        try:
            for script in [*scripts, *([hooks] if hooks else [])]:
                self.app.scripts.add(script)
                added.append(script)
            self.app.settings.add_options(api.options)
        except ValueError:
            for script in added:
                self.app.scripts.remove(script)
            raise
        with self._lock:
            self._loaded[ext.name] = Loaded(api, hooks.name if hooks else None)

    # -- what loaded extensions add
    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def with_hooks(self, alwayson: tuple[ScriptCall, ...]) -> tuple[ScriptCall, ...]:
        """A job's always-on scripts with every loaded extension's hooks script added (each once)."""
        with self._lock:
            names = [item.hooks for item in self._loaded.values() if item.hooks]
        given = {call.name for call in alwayson}
        return (*alwayson, *(ScriptCall(name) for name in names if name not in given))

    def tabs(self) -> list[ExtensionTab]:
        with self._lock:
            return [tab for item in self._loaded.values() for tab in item.api.tabs]

    def routers(self) -> list[tuple[str, Any]]:
        with self._lock:
            return [(name, router) for name, item in self._loaded.items() for router in item.api.routers]

    def note_error(self, name: str, message: str) -> None:
        """A part of a loaded extension failed later (its tab, its routes): listed with the extension."""
        with self._lock:
            self._notes.setdefault(name, []).append(message[:MAX_ERROR_CHARS])

    def error(self, name: str) -> str | None:
        """Why ``name`` failed to load, or what of it failed since."""
        with self._lock:
            return self._errors.get(name) or "; ".join(self._notes.get(name, [])) or None

    # -- the list
    def status(self, ext: Extension) -> str:
        """A short state for the list: loaded, failed, disabled, not compatible, ... (and what a restart does)."""
        loaded, error = ext.name in self.loaded(), self.error(ext.name)
        enabled = self.enabled(ext)
        if ext.kind == "a1111":
            return "A1111 extension (not compatible): never run"
        if ext.kind == "invalid":
            return f"invalid: {ext.problem}"
        if error and not loaded:
            return f"failed: {error}"
        if loaded:
            text = "loaded" if enabled else "loaded; disabled from the next start"
            return f"{text} (error: {error})" if error else text
        if not enabled:
            return "disabled"
        reason = self.off_reason(ext)
        return f"off ({reason})" if reason else "enabled; loads at the next start"

    def a1111_list(self) -> list[dict[str, Any]]:
        """``/sdapi/v1/extensions``: A1111's fields for every installed extension."""
        out = []
        for ext in self.scan():
            git = ext.git or GitInfo()
            out.append({"name": ext.name, "remote": git.remote, "branch": git.branch,
                        "commit_hash": git.commit_hash, "version": ext.version,
                        "commit_date": str(git.commit_date) if git.commit_date is not None else "",
                        "enabled": self.enabled(ext)})
        return out

    # -- installing
    def stage(self, source: str, branch: str | None = None, user: str | None = None) -> Staged:
        """Fetch and read ``source`` (nothing runs); :meth:`install_staged` installs it."""
        self.check_manage(user)
        return self.installer.stage(source, branch)

    def install_staged(self, token: str, name: str | None = None, user: str | None = None) -> Extension:
        self.check_manage(user)
        with self._lock:
            path = self.installer.commit(token, name, {e.name for e in self.scan()})
        log.info("extension %s installed in %s; it loads at the next start", path.name, path)
        return self.get(path.name)

    def install(self, source: str, branch: str | None = None, name: str | None = None,
                user: str | None = None) -> Extension:
        staged = self.stage(source, branch, user)
        try:
            return self.install_staged(staged.token, name, user)
        finally:
            self.installer.discard(staged.token)

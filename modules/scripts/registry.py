"""The scripts of the application: the built-ins and those extensions add, found by A1111's ``script_name``
(the title, case-insensitive), listed as A1111's ``/sdapi/v1/scripts`` and ``/script-info`` list them."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from modules.errors import ValidationError
from modules.scripts.base import IMG2IMG, TXT2IMG, Script


@dataclass(frozen=True)
class ScriptCall:
    """A script a job runs, with its arguments in its controls' order (A1111's ``script_args``)."""

    name: str
    args: tuple[Any, ...] = ()


class ScriptRegistry:
    def __init__(self, scripts: Iterable[Script] = ()) -> None:
        self._lock = threading.Lock()
        self._scripts: list[Script] = []
        for script in scripts:
            self.add(script)

    def add(self, script: Script) -> None:
        """Add a script; a title already taken (case-insensitive) is refused."""
        with self._lock:
            if any(s.name == script.name for s in self._scripts):
                raise ValueError(f"a script titled {script.title!r} already exists")
            self._scripts.append(script)

    def remove(self, script: Script) -> None:
        with self._lock:
            self._scripts = [s for s in self._scripts if s is not script]

    def for_tab(self, kind: str) -> list[Script]:
        with self._lock:
            return [s for s in self._scripts if kind in s.tabs]

    def selectable(self, kind: str) -> list[Script]:
        """The "Script" dropdown's entries for ``kind`` (after "None")."""
        return [s for s in self.for_tab(kind) if not s.alwayson]

    def alwayson(self, kind: str) -> list[Script]:
        return [s for s in self.for_tab(kind) if s.alwayson]

    def find(self, name: str, kind: str) -> Script | None:
        wanted = name.strip().lower()
        return next((s for s in self.for_tab(kind) if s.name == wanted), None)

    def api_list(self) -> dict[str, list[str]]:
        """A1111's ``/sdapi/v1/scripts``."""
        return {kind: [s.name for s in self.selectable(kind) + self.alwayson(kind)] for kind in (TXT2IMG, IMG2IMG)}

    def api_info(self) -> list[dict[str, Any]]:
        """A1111's ``/sdapi/v1/script-info``: every script of txt2img, then of img2img."""
        return [s.api_info(kind) for kind in (TXT2IMG, IMG2IMG) for s in self.selectable(kind) + self.alwayson(kind)]

    # --- requests -------------------------------------------------------------------------------------------------

    def selected(self, name: str | None, args: Sequence[Any] | None, kind: str) -> ScriptCall | None:
        """The selectable script ``script_name`` names (None for none), its arguments completed with the defaults;
        a ValidationError naming the field for an unknown or always-on name."""
        if name is None or not str(name).strip() or str(name).strip().lower() == "none":
            return None
        script = self.find(str(name), kind)
        if script is None or script.alwayson:
            names = ", ".join(s.name for s in self.selectable(kind))
            raise ValidationError(f"script_name: script {name!r} not found; the {kind} scripts are: {names}",
                                  field="script_name")
        return ScriptCall(script.name, tuple(script.args_with_defaults(args, kind)))

    def alwayson_calls(self, entries: dict[str, Any] | None, kind: str) -> tuple[ScriptCall, ...]:
        """A1111's ``alwayson_scripts``: ``{"name": {"args": [...]}}``."""
        calls = []
        for name, entry in (entries or {}).items():
            script = self.find(str(name), kind)
            if script is None:
                raise ValidationError(f"alwayson_scripts: always on script {name} not found",
                                      field="alwayson_scripts")
            if not script.alwayson:
                raise ValidationError("alwayson_scripts: cannot have a selectable script in the always on scripts "
                                      "params", field="alwayson_scripts")
            args = entry.get("args") if isinstance(entry, dict) else None
            if args is not None and not isinstance(args, list):
                raise ValidationError(f"alwayson_scripts.{name}.args: must be a list", field="alwayson_scripts")
            calls.append(ScriptCall(script.name, tuple(script.args_with_defaults(args, kind))))
        return tuple(calls)

    def script(self, call: ScriptCall, kind: str) -> Script:
        script = self.find(call.name, kind)
        if script is None:
            raise ValidationError(f"script {call.name!r} is no longer installed", field="script_name")
        return script

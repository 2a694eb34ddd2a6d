"""An extension folder's ``extension.toml``, and how a folder is told apart from an A1111 extension.

Reading a folder never runs any of its code: the manifest is parsed as TOML, and A1111's extensions are recognised
by the files A1111 runs (``install.py``, ``preload.py``, ``scripts/*.py``), never by importing them.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from modules.errors import WebUIError

MANIFEST = "extension.toml"
API_VERSION = 1  # the version of the extension API this program offers
MAX_MANIFEST_BYTES = 64 * 1024
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
A1111_FILES = ("install.py", "preload.py", "metadata.ini")
_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ManifestError(WebUIError):
    """A folder's ``extension.toml`` is missing, unreadable or invalid."""


@dataclass(frozen=True)
class Manifest:
    """What ``extension.toml`` declares. ``requirements`` are shown to the user, never installed."""

    name: str
    title: str
    version: str = ""
    description: str = ""
    entry: str = "main.py"
    requirements: tuple[str, ...] = ()
    enabled_by_default: bool = True
    api_version: int = API_VERSION


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an extension folder (and the ``/sdapi/v1/<name>/`` prefix of its routes)."""
    if not NAME_PATTERN.fullmatch(name):
        return "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None


def _toml_loads() -> Callable[[str], dict[str, Any]]:
    """``tomllib.loads`` (Python 3.11+), else ``tomli.loads`` when that package is installed."""
    for module in ("tomllib", "tomli"):
        try:
            loads: Callable[[str], dict[str, Any]] = importlib.import_module(module).loads
        except ModuleNotFoundError:
            continue
        return loads
    raise ManifestError(f"reading {MANIFEST} needs Python 3.11 or the tomli package")


def _text(data: dict[str, Any], key: str, default: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or "\0" in value:
        raise ManifestError(f"{MANIFEST}: {key} must be a string")
    return value.strip()


def _entry(value: str) -> str:
    path = PurePosixPath(value.replace("\\", "/"))
    if not value or path.is_absolute() or ".." in path.parts or path.suffix != ".py" or ":" in value:
        raise ManifestError(f"{MANIFEST}: entry must be a .py file inside the extension's folder (got {value!r})")
    return str(path)


def parse_manifest(text: str, folder_name: str) -> Manifest:
    """The manifest in ``text``; ``name`` defaults to ``folder_name``. Raises :class:`ManifestError`."""
    try:
        data = _toml_loads()(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise ManifestError(f"{MANIFEST} is not valid TOML: {exc}") from None
    name = _text(data, "name", folder_name)
    problem = name_problem(name)
    if problem:
        raise ManifestError(f"{MANIFEST}: name {name!r} {problem}")
    requirements = data.get("requirements", [])
    if not isinstance(requirements, list) or not all(isinstance(r, str) and r.strip() for r in requirements):
        raise ManifestError(f"{MANIFEST}: requirements must be a list of strings")
    enabled = data.get("enabled_by_default", True)
    api_version = data.get("api_version", API_VERSION)
    if not isinstance(enabled, bool):
        raise ManifestError(f"{MANIFEST}: enabled_by_default must be true or false")
    if not isinstance(api_version, int) or isinstance(api_version, bool) or api_version < 1:
        raise ManifestError(f"{MANIFEST}: api_version must be a positive integer")
    if api_version > API_VERSION:
        raise ManifestError(f"needs extension API version {api_version}; this program offers {API_VERSION}")
    version = data.get("version", "")
    return Manifest(name=name, title=_text(data, "title", name) or name,
                    version=str(version) if isinstance(version, (int, float)) else _text(data, "version"),
                    description=_text(data, "description"), entry=_entry(_text(data, "entry", "main.py")),
                    requirements=tuple(r.strip() for r in requirements), enabled_by_default=enabled,
                    api_version=api_version)


def read_manifest(folder: Path) -> Manifest:
    """``folder/extension.toml``, checked, with its entry module present. Raises :class:`ManifestError`."""
    path = folder / MANIFEST
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES // 1024} KiB")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{MANIFEST} cannot be read: {exc}") from None
    manifest = parse_manifest(text, folder.name)
    if not (folder / manifest.entry).is_file():
        raise ManifestError(f"the entry module {manifest.entry} named by {MANIFEST} is missing")
    return manifest


def looks_like_a1111(folder: Path) -> bool:
    """Whether ``folder`` (without an ``extension.toml``) holds an A1111 extension: the files A1111 runs."""
    if (folder / MANIFEST).exists():
        return False
    try:
        return any((folder / name).is_file() for name in A1111_FILES) or any((folder / "scripts").glob("*.py"))
    except OSError:
        return False


def requirement_status(requirement: str) -> str:
    """``requirement`` with whether a package of that name is installed here (its version), for display."""
    from importlib import metadata

    match = _REQUIREMENT_NAME.match(requirement.strip())
    if match is None:
        return f"{requirement} (not a package requirement)"
    try:
        return f"{requirement} (installed: {metadata.version(match.group(0))})"
    except metadata.PackageNotFoundError:
        return f"{requirement} (not installed)"
    except Exception:  # a broken distribution's metadata
        return f"{requirement} (unknown)"

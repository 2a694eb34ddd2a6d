"""Extensions: folders with an ``extension.toml`` and an entry module whose ``setup(api)`` adds scripts, tabs,
settings, API routes and generation hooks through :class:`ExtensionAPI` (documented in ``extensions/README.md``).

This module is the import surface for extensions: everything an extension needs is importable from here.
"""

from __future__ import annotations

from modules.engine import JobOutput
from modules.errors import ValidationError, WebUIError
from modules.extensions.api import AfterHook, BeforeHook, ExtensionAPI, ExtensionTab, TabBuilder
from modules.extensions.manager import Extension, ExtensionAccessError, ExtensionManager, ExtensionNotFound
from modules.extensions.manifest import API_VERSION, Manifest
from modules.requests import GenerationRequest, Img2ImgRequest
from modules.scripts.base import BOTH, IMG2IMG, TXT2IMG, Control, RunContext, Script, ScriptOutput
from modules.settings import Option

__all__ = [
    "API_VERSION", "BOTH", "IMG2IMG", "TXT2IMG", "AfterHook", "BeforeHook", "Control", "Extension",
    "ExtensionAPI", "ExtensionAccessError", "ExtensionManager", "ExtensionNotFound", "ExtensionTab",
    "GenerationRequest", "Img2ImgRequest", "JobOutput", "Manifest", "Option", "RunContext", "Script",
    "ScriptOutput", "TabBuilder", "ValidationError", "WebUIError",
]

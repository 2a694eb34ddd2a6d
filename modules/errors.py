"""User-facing error types. Each carries a short message meant to be shown as is; tracebacks go to the log."""

from __future__ import annotations


class WebUIError(Exception):
    """Base of every error whose message is safe and useful to show to a user."""


class ValidationError(WebUIError):
    """A request parameter is out of bounds or unknown. ``field`` names the offending parameter."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ModelLoadError(WebUIError):
    """A checkpoint cannot be found, read or understood."""


class UnsafeCheckpointError(ModelLoadError):
    """A pickle checkpoint asked to run code or load objects outside the allowed set."""


class GenerationError(WebUIError):
    """Generation failed (out of memory, NaNs, ...)."""


class Interrupted(WebUIError):
    """The job was interrupted by the user; partial results may be attached."""

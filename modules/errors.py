"""User-facing error types. Each carries a short message meant to be shown as is; tracebacks go to the log."""

from __future__ import annotations

import re
from enum import Enum


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


class ErrorKind(str, Enum):
    """Why a job failed, as the API reports it: whose fault it is decides the HTTP status."""

    INVALID = "invalid"  # a parameter is out of bounds or unknown
    MODEL = "model"  # a checkpoint or VAE is missing, unreadable or refused
    OUT_OF_MEMORY = "out_of_memory"
    NANS = "nans"  # the model produced NaNs with these settings
    FAILED = "failed"  # any other error with a user-facing message
    INTERNAL = "internal"  # an unexpected exception: a bug


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's and the host's out-of-memory errors, whatever library raised them."""
    name = type(exc).__name__
    return name == "OutOfMemoryError" or isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


class RemoteJobError(WebUIError):
    """A job's failure in a worker process, as that worker described it (its message, kind and field)."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.FAILED, field: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field


class WorkerLost(WebUIError):
    """The worker process running a job stopped (it died, or its machine left the cluster)."""


def error_kind(exc: BaseException) -> ErrorKind:
    """The kind of a job's failure."""
    if isinstance(exc, RemoteJobError):
        return exc.kind
    if isinstance(exc, ValidationError):
        return ErrorKind.INVALID
    if isinstance(exc, ModelLoadError):
        return ErrorKind.MODEL
    if is_out_of_memory(exc):
        return ErrorKind.OUT_OF_MEMORY
    if isinstance(exc, GenerationError) and re.search(r"\bnans?\b", str(exc), re.IGNORECASE):
        return ErrorKind.NANS
    if isinstance(exc, WebUIError):
        return ErrorKind.FAILED
    return ErrorKind.INTERNAL

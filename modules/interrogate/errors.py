"""The error every interrogator raises when it cannot run."""

from __future__ import annotations

from modules.errors import ModelLoadError


class InterrogateUnavailable(ModelLoadError, ValueError):
    """An interrogator's model is missing from the user's models folder, or cannot be read there. The message is
    meant to be shown as is: it names the folder and what to place in it."""

"""The NRI stub's error family."""

from __future__ import annotations

from ..errors import GpucrError

__all__ = ["PluginError", "RegistrationError"]


class PluginError(GpucrError):
    """A plugin is unusable as written (no handlers, a mask it cannot serve) or misused the stub API."""


class RegistrationError(PluginError):
    """The runtime did not accept or did not answer RegisterPlugin."""

"""Errors of the CRIU front: one family under :class:`~nri_plugin.errors.GpucrError`.

Kept in a module of its own with no imports beyond the root error, because the front's start-up path imports it.
"""

from __future__ import annotations

from ..errors import GpucrError

__all__ = ["FrontError", "HookError"]


class FrontError(GpucrError):
    """The front cannot do its job (configuration, the real criu, the runtime's socket or fds); the message says
    which step failed and how to fix it."""


class HookError(FrontError):
    """A hook refused or failed; its message is gpucr's explanation, put in front of CRIU's error for the runtime."""

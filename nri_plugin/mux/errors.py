"""The mux's error family."""

from __future__ import annotations

from ..errors import GpucrError

__all__ = ["MuxClosedError", "MuxFrameError"]


class MuxFrameError(GpucrError):
    """The trunk carried bytes that are not NRI mux frames (the peer's fault)."""


class MuxClosedError(GpucrError):
    """The mux is closed; carries the first error that closed it (EOF, transport failure, garbage)."""

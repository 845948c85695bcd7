"""The root of every error gpucr raises on purpose.

Each layer defines its own family below :class:`GpucrError` so callers (and the CLI, which turns them into
one clear line and an exit status) can tell a protocol fault from a policy refusal or an engine failure.
"""

__all__ = ["GpucrError"]


class GpucrError(Exception):
    """Base class: the message names the object (container, pid, path), the step and, where known, the fix."""

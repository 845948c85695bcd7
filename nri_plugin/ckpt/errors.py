"""The checkpoint engines' error, apart so that :mod:`.engine`, :mod:`.cuda_steps` and :mod:`.compat` share it
without importing each other."""

from __future__ import annotations

from ..errors import GpucrError

__all__ = ["CheckpointError"]


class CheckpointError(GpucrError):
    """A checkpoint or restore step failed; ``step`` and ``pid`` say where; the workload was rolled back."""

    def __init__(self, message: str, *, step: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.step, self.pid = step, pid
        #: what a rollback could not undo (empty: all undone); a lease with problems is left for the sweep to retry
        self.rollback_problems: list[str] = []

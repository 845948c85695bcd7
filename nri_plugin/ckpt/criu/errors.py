"""CriuError: every failure of a CRIU request (bad options, a failed dump or restore, a protocol fault, a missing or
too old binary).

Pure: the client reads CRIU's log and passes its tail in; this module never touches files.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import GpucrError

__all__ = ["CriuError"]


class CriuError(GpucrError):
    """A CRIU step failed.

    Attributes:
        errno: CRIU's ``cr_errno`` (an errno value; 0 or None when CRIU gave none).
        log_file: CRIU's log for this request (kept next to the images), or None when none was written.
        log_tail: the last lines of that log (already part of the message).
        result: for a failure raised *after* CRIU reported success (a notify callback failed at a stage CRIU cannot
            abort, e.g. ``post-resume``), the DumpResult/RestoreResult, so the caller can still reach the restored
            pid; None otherwise.
        criu_errmsg: CRIU's ``cr_errmsg`` as received (its first error line, not always the cause).
    """

    def __init__(self, message: str, errno: int | None = None, log_file: Path | None = None,
                 log_tail: str = "", result: object | None = None, criu_errmsg: str | None = None) -> None:
        full = message
        if log_tail:
            where = f" ({log_file})" if log_file else ""
            full = f"{message}\n--- criu log tail{where} ---\n{log_tail.rstrip()}"
        super().__init__(full)
        self.errno = errno
        self.log_file = log_file
        self.log_tail = log_tail
        self.result = result
        self.criu_errmsg = criu_errmsg

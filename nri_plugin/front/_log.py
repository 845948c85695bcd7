"""The front's own log: one line per event, appended to ``<log_dir>/criu-front.log``.

Not the logging module: it costs ~22 ms to import (``-X importtime``) and the front starts twice per runc operation.
Lines are journald-friendly (``gpucr-criu-front[PID]: LEVEL: text``, key=value details, one event per line) with a
UTC timestamp in front for the file. Under containerd criu's stderr is /dev/null, so this file is the only place a
failed relay explains itself; without a usable log dir lines go to stderr. Writes use O_APPEND, so concurrent fronts
never interleave within a line.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["FrontLog", "LOG_NAME"]

LOG_NAME = "criu-front.log"


class FrontLog:
    """Append-only line log; never raises (a broken log must not break a checkpoint)."""

    def __init__(self, log_dir: str | None) -> None:
        self.fd = -1
        self.path: str | None = None
        self.problem: str | None = None
        if log_dir:
            path = os.path.join(log_dir, LOG_NAME)
            try:
                os.makedirs(log_dir, mode=0o700, exist_ok=True)
                self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self.path = path
            except OSError as exc:
                self.problem = f"cannot open {path}: {exc}"
        self.tag = f"gpucr-criu-front[{os.getpid()}]"

    def _line(self, level: str, msg: str) -> None:
        t = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
        line = f"{stamp} {self.tag}: {level}: {msg}".replace("\n", "\\n") + "\n"
        try:
            if self.fd >= 0:
                os.write(self.fd, line.encode("utf-8", "replace"))
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def info(self, msg: str) -> None:
        self._line("INFO", msg)

    def warning(self, msg: str) -> None:
        self._line("WARNING", msg)

    def error(self, msg: str) -> None:
        self._line("ERROR", msg)

    def debug(self, msg: str) -> None:
        self._line("DEBUG", msg)

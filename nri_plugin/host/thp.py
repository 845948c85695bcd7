"""Huge pages for the CUDA driver's host buffers while it copies GPU memory (the node config's ``driver_thp``).

Why: the driver's GPU->host copy runs in the target process and is bound by first-touch page faults of its fresh host
buffers; with the node's THP mode ``always`` it runs 1.5-1.8x faster (on an H200: 1.7-1.9 -> 2.8-3.1 GiB/s,
restore 5.4-5.9 -> 6.6-7.0 GiB/s; ``docs/configuration.md``). Only the global knob turns huge pages on inside
another process (``PR_SET_THP_DISABLE`` can only turn them off), so gpucr sets it to ``always`` for the duration of
the driver calls and puts the node's mode back afterwards.

Several checkpoints may run at once: each holder leaves a file ``holder-<pid>-<start>-<token>`` in
``<state_dir>/thp/`` (under an flock of ``lock``), the first one records the node's mode in ``original``, and only
the last one out writes it back. A holder killed outright leaves its file behind: :func:`reconcile` (run by every
acquire and release, by the lease sweep and ``gpucr recover``) drops the files of dead holders and restores the
node's mode once no live holder is left. The lease of a checkpoint records the original mode too.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import GpucrError
from .proc import start_time

__all__ = ["KNOB", "MODES", "ThpError", "ThpStage", "read_mode"]

log = logging.getLogger(__name__)

KNOB = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MODES = ("always", "madvise", "never")
#: the mode the driver stage asks for
BOOST = "always"


class ThpError(GpucrError):
    """The THP knob or gpucr's holder directory cannot be read or written."""


def read_mode(knob: Path = KNOB) -> str | None:
    """The selected mode of a THP ``enabled`` file (``always [madvise] never`` -> ``madvise``); None if unreadable."""
    try:
        text = knob.read_text()
    except OSError:
        return None
    m = re.search(r"\[(\w+)\]", text)
    word = m.group(1) if m else text.strip()
    return word if word in MODES else None


@dataclass
class Held:
    """One holder's share of the boost: what ran, and what the node had before."""

    token: str
    original: str
    mode: str
    #: where the share lives (the node's state dir) and the knob it set, for a rollback by another process
    state_dir: str = ""
    knob: str = str(KNOB)

    def to_json(self) -> dict[str, str]:
        return {"state_dir": self.state_dir, "knob": self.knob, "token": self.token, "original": self.original,
                "mode": self.mode}

    @classmethod
    def from_json(cls, d: dict[str, str]) -> Held:
        return cls(str(d["token"]), str(d["original"]), str(d.get("mode", BOOST)), str(d["state_dir"]),
                   str(d.get("knob") or KNOB))


class ThpStage:
    """The refcounted THP boost of one node: ``state_dir`` holds the holders, ``knob`` is the sysfs file."""

    def __init__(self, state_dir: Path | str, knob: Path = KNOB) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "thp"
        self.knob = Path(knob)

    # -- the lock and the files ----------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ThpError(f"cannot use {self.dir}: {exc.strerror}; check the node config's state_dir") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _holders(self) -> list[Path]:
        return sorted(self.dir.glob("holder-*"))

    @staticmethod
    def _alive(holder: Path) -> bool:
        parts = holder.name.split("-")
        try:
            pid, start = int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            return False
        return start_time(pid) == start

    def _write_knob(self, mode: str) -> None:
        try:
            with open(self.knob, "w", encoding="ascii") as f:
                f.write(mode)
        except OSError as exc:
            raise ThpError(f"cannot set transparent hugepages to {mode!r} in {self.knob}: {exc.strerror}; run as root "
                           "with a writable /sys, or set driver_thp = \"keep\" in the node config") from exc

    def _original(self) -> str | None:
        try:
            mode = (self.dir / "original").read_text().strip()
        except OSError:
            return None
        return mode if mode in MODES else None

    def _settle(self, fallback: str | None = None) -> str | None:
        """Drop dead holders; with none alive, put the node's mode back. Caller holds the lock. Returns the mode
        restored, or None when nothing was restored (live holders, or nothing recorded)."""
        for h in self._holders():
            if not self._alive(h):
                log.warning("THP: dropping the hold of %s (its process is gone)", h.name)
                h.unlink(missing_ok=True)
        if self._holders():
            return None
        original = self._original() or fallback
        if original is None:
            return None
        if read_mode(self.knob) != original:
            self._write_knob(original)
        (self.dir / "original").unlink(missing_ok=True)
        return original

    # -- the public side -----------------------------------------------------------------------------------------
    def acquire(self) -> Held:
        """Take a share: the knob set to ``always`` (recording the node's mode if this is the first share)."""
        token = f"holder-{os.getpid()}-{start_time(os.getpid())}-{uuid.uuid4().hex[:8]}"
        with self._locked():
            self._settle()
            original = self._original()
            now = read_mode(self.knob)
            if now is None:
                raise ThpError(f"cannot read transparent hugepages' mode from {self.knob}; set driver_thp = \"keep\" in "
                               "the node config on this kernel")
            if original is None:
                original = now
                tmp = self.dir / ".original.tmp"
                tmp.write_text(original + "\n")
                os.replace(tmp, self.dir / "original")
            (self.dir / token).write_text(original + "\n")
            if now != BOOST:
                try:
                    self._write_knob(BOOST)
                except ThpError:
                    (self.dir / token).unlink(missing_ok=True)
                    self._settle(original)
                    raise
        log.info("THP: %s for the driver's copy (node's mode: %s)", BOOST, original)
        return Held(token, original, BOOST, str(self.state_dir), str(self.knob))

    def release(self, held: Held) -> str | None:
        """Give the share back; the last one out restores the node's mode (returned; None while others hold)."""
        with self._locked():
            (self.dir / held.token).unlink(missing_ok=True)
            restored = self._settle(held.original)
        if restored is not None:
            log.info("THP: the node's mode %s restored", restored)
        return restored

    def reconcile(self, fallback: str | None = None) -> str | None:
        """After a holder died: drop dead holders and restore the node's mode if nobody holds it (``fallback``:
        the original a lease recorded, used when the holder directory has none). Returns the mode restored."""
        if not self.dir.is_dir() and fallback is None:
            return None
        with self._locked():
            return self._settle(fallback)

    @contextmanager
    def boosted(self) -> Iterator[Held]:
        held = self.acquire()
        try:
            yield held
        finally:
            self.release(held)

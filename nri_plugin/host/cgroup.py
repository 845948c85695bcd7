"""A process's cgroups and their freezer: state, freeze/thaw, member pids, "was it frozen by a caller?".

Supports cgroup v1 (the ``freezer`` controller: ``freezer.state`` THAWED / FREEZING / FROZEN, plus
``freezer.self_freezing`` and ``freezer.parent_freezing``) and cgroup v2 (``cgroup.freeze`` 0/1 and the ``frozen``
key of ``cgroup.events``), on pure v1, hybrid (v1 controllers + a controller-less cgroup2 at
/sys/fs/cgroup/unified) and pure v2 hosts. Why it matters: CUDA's checkpoint calls block forever on a frozen process,
so the engine must know whether a caller (containerd's ``task.Pause``, runc's freezer) froze the container, thaw it
around the CUDA lock and put it back exactly as it found it. On a hybrid host runc freezes through v1, so v1 wins
when the process sits in a v1 freezer hierarchy.

Pure parts (``cgroup_mounts``, ``resolve``; ``/proc/PID/cgroup`` is parsed by :func:`.proc.parse_proc_cgroup`, mount
tables by :func:`.mounts.parse_mountinfo`) take file contents; the rest reads and writes
cgroupfs. Follows the kernel's cgroup-v1/freezer-subsystem.rst and cgroup-v2.rst.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ..errors import GpucrError
from .mounts import parse_mountinfo
from .proc import HostError, cgroup_procs, parse_proc_cgroup

__all__ = [
    "CgroupError", "CgroupMount", "Freezer", "FreezerState", "ProcessCgroups", "cgroup_mounts", "cgroups_of", "freezer_at", "freezer_of", "resolve", "thawed",
]

FREEZE_TIMEOUT_S = 10.0
UNIFIED_MOUNTPOINT = Path("/sys/fs/cgroup")
POLL_S = 0.002


class CgroupError(GpucrError):
    """A cgroup could not be found, read, frozen or thawed (the message names the pid or path and the fix)."""


class FreezerState(StrEnum):
    THAWED = "THAWED"
    FREEZING = "FREEZING"   # v1 only: some tasks are not frozen yet (a v2 freeze in progress reads the same)
    FROZEN = "FROZEN"


@dataclass(frozen=True)
class CgroupMount:
    """One mounted cgroup hierarchy: v1 (with its controllers) or v2. ``root`` is the hierarchy path mounted."""

    version: int
    mountpoint: Path
    root: str
    controllers: frozenset[str]


# --- pure ----------------------------------------------------------------------------------------------------------


def cgroup_mounts(text: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts of a ``/proc/PID/mountinfo`` text."""
    out: list[CgroupMount] = []
    for m in parse_mountinfo(text):
        if m.fstype == "cgroup2":
            out.append(CgroupMount(2, Path(m.mountpoint), m.root, frozenset()))
        elif m.fstype == "cgroup":
            ctrls = frozenset(o for o in m.super_options
                              if o not in ("rw", "ro") and "=" not in o or o.startswith("name="))
            out.append(CgroupMount(1, Path(m.mountpoint), m.root, ctrls))
    return out


def resolve(mount: CgroupMount, cgroup_path: str) -> Path | None:
    """The directory of ``cgroup_path`` (as /proc/PID/cgroup names it) under ``mount``; None when the mount does not
    show that part of the hierarchy (a container that only sees its own subtree)."""
    root = mount.root.rstrip("/") or ""
    if root and not (cgroup_path == root or cgroup_path.startswith(root + "/")):
        return None
    rel = cgroup_path[len(root):].lstrip("/")
    return mount.mountpoint / rel if rel else mount.mountpoint


# --- I/O -----------------------------------------------------------------------------------------------------------


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError as exc:
        raise CgroupError(f"{what}: {path} does not exist (the cgroup or process is gone)") from exc
    except OSError as exc:
        raise CgroupError(f"{what}: cannot read {path}: {exc.strerror}") from exc


def _write(path: Path, value: str, what: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(f"{what}: cannot write {value!r} to {path}: {exc.strerror} (run as root)") from exc


@dataclass(frozen=True)
class Freezer:
    """The freezer of one cgroup directory: v1 (``freezer.state``) or v2 (``cgroup.freeze``)."""

    path: Path
    version: int

    @property
    def is_root(self) -> bool:
        """A hierarchy's root cgroup: it has no freezer files and can never be frozen."""
        return self.path.is_dir() and not (self.path / self._control).exists()

    @property
    def _control(self) -> str:
        return "freezer.state" if self.version == 1 else "cgroup.freeze"

    def state(self) -> FreezerState:
        """THAWED, FREEZING or FROZEN, whoever froze it (this cgroup or an ancestor)."""
        if self.is_root:
            return FreezerState.THAWED
        if self.version == 1:
            return FreezerState(_read(self.path / "freezer.state", "freezer state").strip())
        events = dict(line.split(" ", 1) for line in _read(self.path / "cgroup.events", "freezer state").splitlines()
                      if " " in line)
        if events.get("frozen", "0").strip() == "1":
            return FreezerState.FROZEN
        # v2 freezes asynchronously (each task stops at its next signal check): frozen 0 while this cgroup or an
        # ancestor asks for a freeze means FREEZING
        return FreezerState.FREEZING if self.self_frozen() or self.parent_frozen() else FreezerState.THAWED

    def self_frozen(self) -> bool:
        """Frozen (or freezing) because of a write to *this* cgroup, as a caller's pause does."""
        if self.is_root:
            return False
        if self.version == 1:
            return _read(self.path / "freezer.self_freezing", "freezer state").strip() == "1"
        return _read(self.path / "cgroup.freeze", "freezer state").strip() == "1"

    def parent_frozen(self) -> bool:
        """Frozen because an ancestor cgroup is: thawing this one cannot help."""
        if self.is_root:
            return False
        if self.version == 1:
            return _read(self.path / "freezer.parent_freezing", "freezer state").strip() == "1"
        p = self.path.parent
        while (p / "cgroup.freeze").exists():
            if _read(p / "cgroup.freeze", "freezer state").strip() == "1":
                return True
            p = p.parent
        return False

    def frozen(self) -> bool:
        """True when a caller left it frozen or freezing (what the engine must undo before locking CUDA)."""
        return self.state() != FreezerState.THAWED

    def freeze(self, timeout_s: float = FREEZE_TIMEOUT_S) -> None:
        """Freeze and wait until every task is frozen (v1 FREEZING settles; v2 ``frozen 1``).

        Raises:
            CgroupError: the cgroup holds this very process (it would freeze us), or it did not settle in time.
        """
        if self.is_root:
            raise CgroupError(f"refusing to freeze {self.path}: a root cgroup cannot be frozen")
        if os.getpid() in self.pids():
            raise CgroupError(f"refusing to freeze {self.path}: it holds gpucr itself (pid {os.getpid()})")
        if self.version == 1:
            _write(self.path / "freezer.state", "FROZEN", "freeze")
        else:
            _write(self.path / "cgroup.freeze", "1", "freeze")
        self._wait(FreezerState.FROZEN, timeout_s, retry=self.version == 1)

    def thaw(self, timeout_s: float = FREEZE_TIMEOUT_S) -> None:
        """Thaw and wait until the cgroup reads THAWED.

        Raises:
            CgroupError: an ancestor keeps it frozen (thaw that one), or it did not thaw in time.
        """
        if self.is_root:
            return
        if self.version == 1:
            _write(self.path / "freezer.state", "THAWED", "thaw")
        else:
            _write(self.path / "cgroup.freeze", "0", "thaw")
        if self.parent_frozen():
            raise CgroupError(f"cannot thaw {self.path}: an ancestor cgroup is frozen; thaw the ancestor first")
        self._wait(FreezerState.THAWED, timeout_s, retry=False)

    def _wait(self, want: FreezerState, timeout_s: float, *, retry: bool) -> None:
        deadline = time.monotonic() + timeout_s
        while (now := self.state()) != want:
            if time.monotonic() > deadline:
                raise CgroupError(f"{self.path} is still {now} after {timeout_s:.1f} s (wanted {want}): a task "
                                  "in uninterruptible sleep (D) can hold a freeze up; check /proc/PID/stack")
            if retry and now == FreezerState.FREEZING:
                # v1: re-writing FROZEN retries tasks that were busy at the first attempt (kernel freezer docs)
                _write(self.path / "freezer.state", "FROZEN", "freeze")
            time.sleep(POLL_S)

    def pids(self) -> list[int]:
        """Every process in this cgroup and its descendants (sorted)."""
        return _pids_under(self.path)


def _pids_under(top: Path) -> list[int]:
    try:
        return cgroup_procs(str(top))
    except FileNotFoundError as exc:
        raise CgroupError(f"cgroup {top} does not exist") from exc


@dataclass(frozen=True)
class ProcessCgroups:
    """Where a pid sits: its v1 freezer directory and its v2 directory (either may be None)."""

    pid: int
    v1_freezer: Path | None
    unified: Path | None

    @property
    def freezer(self) -> Freezer:
        """The freezer runc uses: v1 when the pid is in a v1 freezer hierarchy, else v2.

        Raises:
            CgroupError: no freezer reachable for this pid.
        """
        if self.v1_freezer is not None:
            return Freezer(self.v1_freezer, 1)
        if self.unified is not None:
            return Freezer(self.unified, 2)
        raise CgroupError(f"pid {self.pid} has no reachable freezer (no v1 freezer mount, no cgroup2 mount)")

    def freezers(self) -> list[Freezer]:
        """Every freezer that can stop this pid (on a hybrid host: v1 and v2); a caller may have used either."""
        out = []
        if self.v1_freezer is not None:
            out.append(Freezer(self.v1_freezer, 1))
        if self.unified is not None:
            out.append(Freezer(self.unified, 2))
        return out


def _unified_mode(mounts: Iterable[CgroupMount]) -> bool:
    """cgroup2 mounted on /sys/fs/cgroup: a v2-only host for runc, whatever v1 hierarchies are mounted elsewhere."""
    return any(m.version == 2 and m.mountpoint == UNIFIED_MOUNTPOINT for m in mounts)


def _pick(mounts: Iterable[CgroupMount], version: int, path: str, controller: str | None) -> Path | None:
    for m in mounts:
        if m.version == version and (controller is None or controller in m.controllers):
            found = resolve(m, path)
            if found is not None:
                return found
    return None


def cgroups_of(pid: int, *, proc: Path = Path("/proc")) -> ProcessCgroups:
    """The cgroup directories of ``pid`` (mounts as seen by this process).

    Raises:
        CgroupError: the pid does not exist.
    """
    what = f"cgroups of pid {pid}"
    try:
        own = parse_proc_cgroup(_read(proc / str(pid) / "cgroup", what))
    except (CgroupError, HostError) as exc:
        raise CgroupError(f"{what}: no such process (is pid {pid} running?)") from exc
    mounts = cgroup_mounts(_read(proc / "self/mountinfo", what))
    v1 = _pick(mounts, 1, own["freezer"], "freezer") if "freezer" in own and not _unified_mode(mounts) else None
    v2 = _pick(mounts, 2, own[""], None) if "" in own else None
    return ProcessCgroups(pid, v1, v2)


def freezer_of(pid: int) -> Freezer | None:
    """The freezer the engine may thaw and re-freeze for ``pid``: None for a vanished pid or the root cgroup
    (never freeze the whole host)."""
    try:
        f = cgroups_of(pid).freezer
    except CgroupError:
        return None
    return None if f is None or f.is_root else f


def freezer_at(path: str | Path, version: int) -> Freezer | None:
    """The freezer of the cgroup directory ``path`` (v1 or v2), as a checkpoint recorded it; None when that
    directory is gone, is a hierarchy's root (never freeze the whole host) or the version is unknown."""
    f = Freezer(Path(path), version)
    return f if version in (1, 2) and f.path.is_dir() and not f.is_root else None


@contextmanager
def thawed(freezers: Iterable[Freezer], timeout_s: float = FREEZE_TIMEOUT_S) -> Iterator[list[Freezer]]:
    """Thaw every freezer a caller froze, and freeze exactly those again on exit (on errors too).

    This is the step that lets CUDA be locked in a container that containerd paused: the lock needs running
    processes, and the caller must find its cgroup frozen again afterwards. Yields the freezers that were thawed
    (empty when nothing was frozen).

    Raises:
        CgroupError: a cgroup is frozen through an ancestor (thawing it cannot help: says which), or a thaw or the
            re-freeze did not settle. Freezers thawed before a failure are frozen again before the error propagates.
    """
    done: list[Freezer] = []
    try:
        for f in freezers:
            if not f.frozen():
                continue
            if f.parent_frozen() and not f.self_frozen():
                raise CgroupError(f"{f.path} is frozen by an ancestor cgroup, not by itself: thaw the ancestor "
                                  "(or resume the parent pod) before checkpointing")
            f.thaw(timeout_s)
            done.append(f)
        yield list(done)
    finally:
        errors = []
        for f in reversed(done):
            try:
                f.freeze(timeout_s)
            except CgroupError as exc:
                errors.append(str(exc))
        if errors:
            raise CgroupError("could not freeze again what a caller had frozen: " + "; ".join(errors))

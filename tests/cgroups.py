"""The tests' view of cgroups, always through the product's own module (``nri_plugin.host.cgroup``): which freezer a
pid or a container's cgroup path sits in, its state, and fresh test cgroups on the hierarchy the product's freezer
uses on this host (the v1 ``freezer`` controller on a hybrid or v1 host, the unified hierarchy on a v2-only host such
as the rig's cgroup-v2 leg, ``tests/rig/cgroup_v2.sh``). No test names a cgroup version or a mount point itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from nri_plugin.host.cgroup import CgroupMount, Freezer, cgroup_mounts, cgroups_of, resolve

__all__ = ["Freezer", "at", "describe", "fresh", "frozen_task_state", "freezer_dir", "of_pid", "remove", "root", "state", "unique_name", "version"]


def _mounts() -> list[CgroupMount]:
    return cgroup_mounts(Path("/proc/self/mountinfo").read_text())


def _freezer_mount() -> CgroupMount:
    """The hierarchy the product freezes through here: v1 wins when mounted (as ``ProcessCgroups.freezer``)."""
    ms = [m for m in _mounts() if m.root == "/"]
    for m in ms:
        if m.version == 1 and "freezer" in m.controllers:
            return m
    for m in ms:
        if m.version == 2:
            return m
    raise AssertionError("no cgroup freezer visible (neither a v1 freezer mount nor cgroup2) in /proc/self/mountinfo")


def root() -> Path:
    """The mount point of the hierarchy the product freezes through here (where test cgroups are made)."""
    return _freezer_mount().mountpoint


def version() -> int:
    """1 or 2: the cgroup version containers are frozen through in this test process's view."""
    return _freezer_mount().version


def frozen_task_state() -> str:
    """The State letter of /proc/PID/status a frozen task shows: the v1 freezer parks tasks in uninterruptible
    sleep (D); the v2 freezer stops them like a job-control stop at a signal check, where they read S."""
    return "D" if version() == 1 else "S"


def describe() -> str:
    """One line for log headers: which cgroup version this run exercises and what is mounted."""
    ms = _mounts()
    v1 = sorted({c for m in ms if m.version == 1 for c in m.controllers})
    v2 = [str(m.mountpoint) for m in ms if m.version == 2]
    if version() == 1:
        return f"cgroup v1 (freezer controller; v1 controllers {','.join(v1)}; cgroup2 at {','.join(v2) or 'none'})"
    ctrls = Path(_freezer_mount().mountpoint / "cgroup.controllers").read_text().split()
    return f"cgroup v2 only (cgroup2 at {','.join(v2)}, controllers: {' '.join(ctrls) or 'none'})"


def unique_name(kind: str) -> str:
    """A cgroup name the clean-slate check attributes to this run: gpucr-test-KIND[-INSTANCE]-RANDOM."""
    inst = os.environ.get("GPUCR_INSTANCE")
    return f"gpucr-test-{kind}{'-' + inst if inst else ''}-{uuid.uuid4().hex[:8]}"


def of_pid(pid: int) -> Freezer:
    """The freezer the product would use for ``pid`` (never a hierarchy root)."""
    f = cgroups_of(pid).freezer
    assert not f.is_root, f"pid {pid} sits in the root cgroup {f.path}: not a container"
    return f


def at(cgroup_path: str) -> Freezer:
    """The freezer of a cgroup path as ``/proc/PID/cgroup`` or a spec's ``cgroupsPath`` names it."""
    m = _freezer_mount()
    d = resolve(m, cgroup_path)
    assert d is not None, f"cgroup {cgroup_path} is not visible under {m.mountpoint}"
    return Freezer(d, m.version)


def freezer_dir(path: str | Path) -> Freezer:
    """The freezer of a cgroup directory (e.g. the ``freeze_cgroup`` runc hands CRIU): v1 when it has
    ``freezer.state``."""
    p = Path(path)
    return Freezer(p, 1 if (p / "freezer.state").exists() else 2)


def state(f: Freezer) -> str:
    """THAWED, FREEZING or FROZEN (as the product reads it)."""
    return f.state().value


@contextlib.contextmanager
def fresh(kind: str) -> Iterator[Freezer]:
    """A new cgroup under the freezer hierarchy's root; afterwards thawed, its processes killed, removed."""
    if os.geteuid() != 0:
        raise AssertionError("cgroup tests need root")
    m = _freezer_mount()
    d = m.mountpoint / unique_name(kind)
    d.mkdir()
    f = Freezer(d, m.version)
    try:
        yield f
    finally:
        with contextlib.suppress(Exception):
            f.thaw()
        deadline = time.monotonic() + 15
        while True:
            pids = f.pids() if d.exists() else []
            if not pids:
                break
            for p in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise AssertionError(f"test cgroup {d} still holds {pids}")
            time.sleep(0.02)
        _rmdir(d, deadline)


def rmdir(d: Path, timeout_s: float = 30) -> None:
    """rmdir a test cgroup whose processes were killed, waiting while the kernel still counts them (EBUSY for a while
    on a loaded machine); raises when it is still there after ``timeout_s``."""
    _rmdir(d, time.monotonic() + timeout_s)


def _rmdir(d: Path, deadline: float) -> None:
    while d.exists():
        try:
            d.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def remove(cgroup_path: str, *, parent_too: bool = False) -> list[Path]:
    """rmdir ``cgroup_path`` in every visible hierarchy (v1 controllers and v2), and its parent once empty when
    ``parent_too``; returns what could not be removed."""
    left = []
    for m in _mounts():
        d = resolve(m, cgroup_path)
        if d is None or d == m.mountpoint:
            continue
        if d.exists():
            try:
                d.rmdir()
            except OSError:
                left.append(d)
                continue
        if parent_too and d.parent != m.mountpoint and d.parent.exists():
            with contextlib.suppress(OSError):  # still holds another container's cgroup
                d.parent.rmdir()
    return left

"""CRIU and the cgroup freezer together: dumps through ``freeze_cgroup`` of a workload in its own cgroup, including
the case the engine exists for — a cgroup a caller froze beforehand (containerd's task.Pause) — which CRIU must
leave frozen again, and a restore that puts the tree back into a cgroup."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.host.cgroup import Freezer, FreezerState, cgroups_of, cgroup_mounts
from nri_plugin.ckpt.criu import Criu, DumpOptions, RestoreOptions
from tests import cgroups
from tests.ckpt._workload import Workload, rmdir_cgroup, state
from tests.testenv import wait_for

pytestmark = pytest.mark.criu


def _mounts() -> dict[int, Path]:
    out: dict[int, Path] = {}
    for m in cgroup_mounts(Path("/proc/self/mountinfo").read_text()):
        if m.root != "/":
            continue
        if m.version == 1 and "freezer" in m.controllers:
            out.setdefault(1, m.mountpoint)
        elif m.version == 2:
            out.setdefault(2, m.mountpoint)
    return out


VERSIONS = sorted(_mounts())


@pytest.fixture(params=VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def jail(request: pytest.FixtureRequest, workload: Workload) -> Iterator[Freezer]:
    """The workload moved into a fresh cgroup of the v1 freezer or the v2 hierarchy."""
    version: int = request.param
    top = _mounts()[version] / cgroups.unique_name("criu")
    top.mkdir()
    f = Freezer(top, version)
    try:
        for pid in workload.pids:
            (top / "cgroup.procs").write_text(str(pid))
        assert f.pids() == sorted(workload.pids)
        yield f
    finally:
        try:
            f.thaw()
        except Exception:  # the cgroup may be gone already; cleanup continues
            pass
        workload.kill()
        wait_for(lambda: not top.exists() or not f.pids(), what=f"{top} to empty")
        rmdir_cgroup(top)


def test_dump_through_freeze_cgroup(criu_binary: str, workload: Workload, jail: Freezer, images: Path) -> None:
    Criu(criu_binary).dump(DumpOptions(pid=workload.root, images_dir=images, leave_running=True,
                                       freeze_cgroup=str(jail.path)))
    assert jail.state() == FreezerState.THAWED
    workload.advancing()


def test_caller_frozen_cgroup_stays_frozen(criu_binary: str, workload: Workload, jail: Freezer,
                                          images: Path) -> None:
    jail.freeze()  # a caller paused the container before the checkpoint
    frozen_at = workload.counters()
    assert jail.frozen() and jail.self_frozen()
    seen: list[tuple[str, str]] = []
    Criu(criu_binary).dump(DumpOptions(pid=workload.root, images_dir=images, leave_running=True,
                                       freeze_cgroup=str(jail.path)),
                           on_notify=lambda n, p: seen.append((n, jail.state())))
    assert seen[0] == ("pre-dump", FreezerState.FROZEN)  # CRIU meets the caller's freeze, as runc passes it
    assert jail.state() == FreezerState.FROZEN            # ... and leaves the cgroup as it found it
    assert workload.counters() == frozen_at
    jail.thaw()
    workload.advancing()
    # the images are good: replace the tree by them
    for pid in workload.pids:
        os.kill(pid, 9)
    workload.wait_gone()
    r = Criu(criu_binary).restore(RestoreOptions(images_dir=images))
    assert r.pid == workload.root
    wait_for(lambda: all(state(p) in "RSD" for p in workload.pids), what="restored tree running")
    workload.advancing()


def test_restore_into_cgroup(criu_binary: str, workload: Workload, jail: Freezer, images: Path) -> None:
    criu = Criu(criu_binary)
    criu.dump(DumpOptions(pid=workload.root, images_dir=images, manage_cgroups=True))
    workload.wait_gone()
    r = criu.restore(RestoreOptions(images_dir=images, manage_cgroups=True))
    pc = cgroups_of(r.pid)
    assert (pc.v1_freezer if jail.version == 1 else pc.unified) == jail.path
    assert jail.pids() == sorted(workload.pids)
    workload.advancing()

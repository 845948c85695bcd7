"""nri_plugin.host.cgroup: pure parsing (tables), then real cgroups on this host — a v1 freezer cgroup (hybrid host)
and a cgroup in the cgroup2 hierarchy — with a sleeping process frozen, thawed and found recursively."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.host.cgroup import (
    CgroupError, CgroupMount, Freezer, FreezerState, cgroup_mounts, cgroups_of, resolve,
)
from nri_plugin.host.proc import runc_cgroup, unified_host
from tests import cgroups
from tests.ckpt._workload import rmdir_cgroup
from tests.testenv import wait_for

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:40 / /mnt/with\\040space rw - ext4 /dev/sda1 rw
"""
V2_ONLY = "25 20 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
CONTAINER_V2 = "25 20 0:23 /kubepods/pod1/c1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"


def test_cgroup_mounts_hybrid() -> None:
    mounts = cgroup_mounts(HYBRID_MOUNTINFO)
    assert [(m.version, str(m.mountpoint)) for m in mounts] == [
        (1, "/sys/fs/cgroup/cpu,cpuacct"), (1, "/sys/fs/cgroup/freezer"), (1, "/sys/fs/cgroup/systemd"),
        (2, "/sys/fs/cgroup/unified")]
    assert mounts[0].controllers >= {"cpu", "cpuacct"} and "freezer" in mounts[1].controllers
    assert "name=systemd" in mounts[2].controllers and "rw" not in mounts[1].controllers


def test_cgroup_mounts_v2_and_escapes() -> None:
    (m,) = cgroup_mounts(V2_ONLY)
    assert (m.version, m.mountpoint, m.root) == (2, Path("/sys/fs/cgroup"), "/")
    (c,) = cgroup_mounts(CONTAINER_V2)
    assert c.root == "/kubepods/pod1/c1"
    esc = cgroup_mounts("9 1 0:5 / /a\\040b rw - cgroup2 none rw\n")
    assert esc[0].mountpoint == Path("/a b")
    utf8 = cgroup_mounts("9 1 0:5 /pod-été /sys/fs/cgroup/über rw - cgroup2 none rw\n")
    assert (utf8[0].root, utf8[0].mountpoint) == ("/pod-été", Path("/sys/fs/cgroup/über"))  # was garbled


@pytest.mark.parametrize("root, path, want", [
    ("/", "/", "/sys/fs/cgroup"),
    ("/", "/k8s/c1", "/sys/fs/cgroup/k8s/c1"),
    ("/kubepods/pod1/c1", "/kubepods/pod1/c1", "/sys/fs/cgroup"),
    ("/kubepods/pod1/c1", "/kubepods/pod1/c1/sub", "/sys/fs/cgroup/sub"),
    ("/kubepods/pod1/c1", "/kubepods/pod1/c10", None),
    ("/kubepods/pod1/c1", "/other", None),
])
def test_resolve(root: str, path: str, want: str | None) -> None:
    m = CgroupMount(2, Path("/sys/fs/cgroup"), root, frozenset())
    got = resolve(m, path)
    assert (str(got) if got is not None else None) == want


# --- real cgroups -------------------------------------------------------------------------------------------------


# a hybrid kernel seen from a mount namespace with cgroup2 on /sys/fs/cgroup (the rig's v2 leg) while CRIU's restore
# has its v1 cgroup yard mounted: /proc/PID/cgroup still lists v1 lines, but runc there is cgroup v2 only
V2_VIEW_WITH_YARD = V2_ONLY + "90 25 0:34 / /tmp/.criu.cgyard.ab12/freezer rw - cgroup none rw,freezer\n"
HYBRID_PROC_CGROUP = "6:freezer:/\n1:cpu,cpuacct:/\n0::/gpucr-test-2.1.9/c1\n"


@pytest.mark.parametrize(("mountinfo", "want_path", "want_v1"), [
    (HYBRID_MOUNTINFO, "/", Path("/sys/fs/cgroup/freezer")),
    (V2_VIEW_WITH_YARD, "/gpucr-test-2.1.9/c1", None),
], ids=["hybrid", "v2-view-of-hybrid-kernel"])
def test_runc_cgroup_follows_runcs_view(tmp_path: Path, mountinfo: str, want_path: str, want_v1: Path | None) -> None:
    assert runc_cgroup(HYBRID_PROC_CGROUP, unified=unified_host(mountinfo)) == want_path
    (tmp_path / "7").mkdir()
    (tmp_path / "7/cgroup").write_text(HYBRID_PROC_CGROUP)
    (tmp_path / "self").mkdir()
    (tmp_path / "self/mountinfo").write_text(mountinfo)
    pc = cgroups_of(7, proc=tmp_path)
    assert pc.v1_freezer == want_v1
    assert pc.freezer.version == (1 if want_v1 else 2)


def _hierarchies() -> dict[int, Path]:
    """v1 freezer and the cgroup2 mount of this host (either may be missing on other hosts)."""
    out: dict[int, Path] = {}
    for m in cgroup_mounts(Path("/proc/self/mountinfo").read_text()):
        if m.version == 1 and "freezer" in m.controllers and m.root == "/":
            out.setdefault(1, m.mountpoint)
        if m.version == 2 and m.root == "/":
            out.setdefault(2, m.mountpoint)
    return out


VERSIONS = sorted(_hierarchies())


@pytest.fixture(params=VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def cgroup(request: pytest.FixtureRequest) -> Iterator[tuple[Freezer, Path]]:
    """A fresh cgroup (with a child cgroup) in the v1 freezer or the v2 hierarchy; removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("cgroup tests need root", pytrace=False)
    version: int = request.param
    top = _hierarchies()[version] / cgroups.unique_name("criu")
    top.mkdir()
    (top / "sub").mkdir()
    try:
        yield Freezer(top, version), top
    finally:
        f = Freezer(top, version)
        try:
            f.thaw()
        except CgroupError:
            pass
        for pid in f.pids():
            os.kill(pid, 9)
        wait_for(lambda: not f.pids(), what=f"{top} to empty")
        rmdir_cgroup(top / "sub")
        rmdir_cgroup(top)


def _sleeper(cg: Path) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(["sleep", "1000"])
    (cg / "cgroup.procs").write_text(str(p.pid))
    return p


@pytest.mark.criu
def test_freeze_thaw_and_pids(cgroup: tuple[Freezer, Path]) -> None:
    f, top = cgroup
    a, b = _sleeper(top), _sleeper(top / "sub")
    try:
        assert f.pids() == sorted([a.pid, b.pid])
        assert Freezer(top / "sub", f.version).pids() == [b.pid]
        pc = cgroups_of(a.pid)
        assert (pc.v1_freezer if f.version == 1 else pc.unified) == top
        assert any(x == f for x in pc.freezers())

        assert f.state() == FreezerState.THAWED and not f.frozen() and not f.self_frozen()
        f.freeze()
        assert f.state() == FreezerState.FROZEN and f.frozen() and f.self_frozen()
        sub = Freezer(top / "sub", f.version)
        assert sub.frozen() and sub.parent_frozen() and not sub.self_frozen()
        wait_for(lambda: sub.state() == FreezerState.FROZEN, what="the child cgroup to report frozen")
        with pytest.raises(CgroupError, match="an ancestor cgroup is frozen"):
            sub.thaw()
        f.thaw()
        assert f.state() == FreezerState.THAWED and sub.state() == FreezerState.THAWED
        assert not sub.parent_frozen()
    finally:
        a.kill(); b.kill(); a.wait(); b.wait()


@pytest.mark.criu
def test_frozen_process_really_stops(cgroup: tuple[Freezer, Path], tmp_path: Path) -> None:
    f, top = cgroup
    out = tmp_path / "ticks"
    p = subprocess.Popen(["sh", "-c", f"while :; do echo x >> {out}; sleep 0.01; done"])
    (top / "cgroup.procs").write_text(str(p.pid))
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 10, what="ticks")
        f.freeze()
        size = out.stat().st_size
        time.sleep(0.3)
        assert out.stat().st_size == size, "a frozen cgroup kept running"
        f.thaw()
        wait_for(lambda: out.stat().st_size > size, what="ticks after thaw")
    finally:
        p.kill(); p.wait()


@pytest.mark.criu
def test_refuses_to_freeze_itself_or_root(cgroup: tuple[Freezer, Path]) -> None:
    f, top = cgroup
    me = cgroups_of(os.getpid())
    own = me.v1_freezer if f.version == 1 else me.unified
    assert own is not None
    (top / "cgroup.procs").write_text(str(os.getpid()))
    try:
        with pytest.raises(CgroupError, match=f"holds gpucr itself \\(pid {os.getpid()}\\)"):
            f.freeze()
    finally:
        (own / "cgroup.procs").write_text(str(os.getpid()))
    root = Freezer(_hierarchies()[f.version], f.version)
    assert root.is_root and root.state() == FreezerState.THAWED
    with pytest.raises(CgroupError, match="root cgroup cannot be frozen"):
        root.freeze()


def test_missing_pid_and_cgroup() -> None:
    with pytest.raises(CgroupError, match="no such process"):
        cgroups_of(2**22 - 1)
    with pytest.raises(CgroupError, match="does not exist"):
        Freezer(Path("/sys/fs/cgroup/gpucr-no-such-cgroup"), 2).pids()
    with pytest.raises(CgroupError, match="does not exist"):
        Freezer(Path("/sys/fs/cgroup/gpucr-no-such-cgroup"), 1).state()


@pytest.mark.criu
def test_thawed_restores_caller_state(cgroup: tuple[Freezer, Path]) -> None:
    from nri_plugin.host.cgroup import thawed

    f, top = cgroup
    a = _sleeper(top / "sub")
    sub = Freezer(top / "sub", f.version)
    try:
        with thawed([f]) as done:  # nothing frozen: nothing to do
            assert done == []
        assert f.state() == FreezerState.THAWED
        f.freeze()
        with thawed([f, sub]) as done:
            assert done == [f] and f.state() == FreezerState.THAWED
        assert f.state() == FreezerState.FROZEN
        with pytest.raises(RuntimeError, match="cuda lock failed"):
            with thawed([f]):
                assert f.state() == FreezerState.THAWED
                raise RuntimeError("cuda lock failed")
        assert f.state() == FreezerState.FROZEN  # the caller's state is back even on errors
        wait_for(lambda: sub.state() == FreezerState.FROZEN, what="child frozen through the parent")
        with pytest.raises(CgroupError, match="frozen by an ancestor cgroup"):
            with thawed([sub]):
                pass
        f.thaw()
    finally:
        a.kill()
        a.wait()

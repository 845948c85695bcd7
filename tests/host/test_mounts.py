"""nri_plugin.host.mounts (one mountinfo parser, one unescaper) and the pid-namespace facts of nri_plugin.host.proc:
tables of mountinfo texts, then this host's own mounts and a child in a pid namespace it does not init."""

from __future__ import annotations

import os
import subprocess

import pytest

from nri_plugin.host.mounts import bind_mounts, parse_mountinfo, unescape
from nri_plugin.host.proc import external_pid_ns


@pytest.mark.parametrize("field, path", [
    ("/tmp/my\\040data", "/tmp/my data"),
    ("/a\\011b\\012c\\134d", "/a\tb\nc\\d"),
    ("/donn\u00e9es/\u00fcber", "/donn\u00e9es/\u00fcber"),          # UTF-8 stays as it is (unicode_escape garbled it)
    ("/caf\u00e9\\040bar", "/caf\u00e9 bar"),
    ("/plain", "/plain"),
])
def test_unescape(field: str, path: str) -> None:
    assert unescape(field) == path


def test_parse_mountinfo_fields() -> None:
    text = ("132 116 254:0 /tmp/my\\040data /data rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
            "140 116 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w\n"
            "garbage line\n"
            "141 140 0:51 / /proc rw - proc proc rw\n")
    data, root, proc = parse_mountinfo(text)
    assert (data.dev, data.root, data.mountpoint, data.fstype, data.source) == ("254:0", "/tmp/my data", "/data",
                                                                                "ext4", "/dev/vda")
    assert data.options == ("rw", "relatime") and data.super_options == ("rw", "discard")
    assert root.fstype == "overlay" and "upperdir=/u" in root.super_options
    assert (proc.mountpoint, proc.fstype) == ("/proc", "proc")


def test_own_mounts_and_pid_ns() -> None:
    # our own namespace: no bind of a subdirectory onto "/" is reported as the root, kernel filesystems are skipped
    mounts = bind_mounts(os.getpid())
    assert all(m.target != "/" and m.fstype not in ("proc", "sysfs", "tmpfs", "devpts") for m in mounts)
    assert external_pid_ns(os.getpid()) is None


def test_child_in_a_pid_namespace_it_does_not_init() -> None:
    """unshare --pid --fork: sh is pid 1 there (dumpable as the namespace's init), its child sleep is not."""
    from pathlib import Path

    from tests.testenv import wait_for

    p = subprocess.Popen(["unshare", "--pid", "--fork", "sh", "-c", "sleep 30 & wait"])
    ours = os.stat("/proc/self/ns/pid").st_ino

    def children(pid: int) -> list[int]:
        try:
            return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    try:
        sh = wait_for(lambda: (children(p.pid) or [None])[0], what="sh in a new pid namespace")
        sleep = wait_for(lambda: (children(sh) or [None])[0], what="sleep under it")
        assert os.stat(f"/proc/{sleep}/ns/pid").st_ino != ours
        assert external_pid_ns(sh) is None
        assert external_pid_ns(sleep) == f"pid[{os.stat(f'/proc/{sleep}/ns/pid').st_ino}]:extRootPidNS"
    finally:
        for pid in (p.pid, *children(p.pid)):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        p.wait()

"""Container mount facts for CRIU, from mountinfo: which mounts are external, and their host paths."""

from __future__ import annotations

import os
import subprocess

from nri_plugin.ckpt.container import bind_mounts, external_pid_ns, parse_mountinfo_line


def test_parse_mountinfo_line_unescapes() -> None:
    line = ("132 116 254:0 /tmp/my\\040data /data rw,relatime shared:1 - ext4 /dev/vda rw,discard")
    assert parse_mountinfo_line(line) == ("254:0", "/tmp/my data", "/data", "ext4")


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

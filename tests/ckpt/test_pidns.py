"""nri_plugin.ckpt.pidns: the pids of a CRIU pstree image, the pids in use in a pid namespace, and the pid cursor
moved in a real new pid namespace (``unshare --pid``), as a restore into a pod's shared namespace needs."""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.ckpt.pidns import PidNsError, check_free, image_pids, prepare, pstree_pids, taken_pids
from tests.testenv import wait_for


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _entry(pid: int, ppid: int, pgid: int, sid: int, threads: list[int], packed: bool = False) -> bytes:
    body = b"".join(_varint(f << 3) + _varint(v) for f, v in ((1, pid), (2, ppid), (3, pgid), (4, sid)))
    if packed:
        payload = b"".join(_varint(t) for t in threads)
        body += _varint(5 << 3 | 2) + _varint(len(payload)) + payload
    else:
        body += b"".join(_varint(5 << 3) + _varint(t) for t in threads)
    return struct.pack("<I", len(body)) + body


def pstree(*entries: bytes) -> bytes:
    """A pstree.img as CRIU writes it: IMG_COMMON_MAGIC, PSTREE_MAGIC, then size-prefixed pstree_entry messages."""
    return struct.pack("<II", 0x54564319, 0x50273030) + b"".join(entries)


def test_pstree_pids_reads_tasks_threads_groups_and_sessions() -> None:
    img = pstree(_entry(8, 0, 8, 8, [8, 300]), _entry(12, 8, 8, 8, [12], packed=True), _entry(40, 8, 40, 2, [40]))
    own, group = pstree_pids(img, "x")
    assert own == {8, 300, 12, 40} and group == {8, 40, 2}


@pytest.mark.parametrize("data, says", [
    (b"", "no pstree magic"), (struct.pack("<II", 0x54564319, 0x12345678), "no pstree magic"),
    (pstree(_entry(8, 0, 8, 8, [8]))[:-1], "truncated"), (pstree(), "is empty"),
])
def test_pstree_pids_refuses_what_is_not_a_process_tree(data: bytes, says: str) -> None:
    with pytest.raises(PidNsError, match=says):
        pstree_pids(data, "images/pstree.img")


def test_image_pids_names_a_missing_image(tmp_path: Path) -> None:
    with pytest.raises(PidNsError, match="pstree.img: No such file"):
        image_pids(tmp_path)


def test_taken_pids_and_check_free_in_our_namespace() -> None:
    taken = taken_pids(os.stat("/proc/self/ns/pid").st_ino)
    assert os.getpid() in taken
    free = next(p for p in range(1000, 1 << 22) if p not in taken)
    check_free("/proc/self/ns/pid", {free}, "container x")
    with pytest.raises(PidNsError, match=rf"container x: the checkpoint's pid\(s\) \[{os.getpid()}\] are taken in "
                                         rf"the pod's shared PID namespace \({os.getpid()} by "):
        check_free("/proc/self/ns/pid", {free, os.getpid()}, "container x")


@pytest.fixture
def new_pid_ns() -> Iterator[int]:
    """A real new pid namespace, held by its init (``sleep``): the host pid of that init."""
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "60"])
    try:
        init = wait_for(lambda: next((int(c) for c in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text()
                                      .split()), 0), what="the namespace's init")
        # forked but maybe not yet exec'd: the tests name the holder by its command
        wait_for(lambda: Path(f"/proc/{init}/comm").read_text().strip() == "sleep", what="the init to exec sleep")
        yield init
    finally:
        p.kill()
        p.wait()


def _next_pid_in(init: int) -> int:
    r = subprocess.run(["nsenter", f"--pid=/proc/{init}/ns/pid", "--", "/bin/sh", "-c", "echo $$"],
                       capture_output=True, text=True, check=True)
    return int(r.stdout)


def test_prepare_moves_the_namespace_cursor_above_the_image(tmp_path: Path, new_pid_ns: int) -> None:
    """Before: the next process born there gets a low pid (where a restored task would go); after prepare, every
    new one lies above the image's highest pid, task, thread, pgid or sid."""
    assert _next_pid_in(new_pid_ns) < 10
    (tmp_path / "pstree.img").write_bytes(pstree(_entry(20, 0, 20, 20, [20, 57]), _entry(30, 20, 20, 20, [30])))
    assert prepare(tmp_path, f"/proc/{new_pid_ns}/ns/pid", "container x") == 57
    assert _next_pid_in(new_pid_ns) == 58


def test_prepare_refuses_a_taken_pid_and_leaves_the_cursor(tmp_path: Path, new_pid_ns: int) -> None:
    (tmp_path / "pstree.img").write_bytes(pstree(_entry(1, 0, 1, 1, [1]), _entry(90, 1, 1, 1, [90])))
    with pytest.raises(PidNsError, match=r"pid\(s\) \[1\] are taken .*\(1 by sleep\)"):
        prepare(tmp_path, f"/proc/{new_pid_ns}/ns/pid", "container x")
    assert _next_pid_in(new_pid_ns) < 10
    with pytest.raises(PidNsError, match="cannot open the pod's pid namespace /proc/0/ns/pid"):
        prepare(tmp_path, "/proc/0/ns/pid", "container x")

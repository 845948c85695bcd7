"""A multi-process, multi-threaded counter workload for real CRIU tests.

The root (a Python process) forks two children; every process runs two extra threads; each thread and each main
loop rewrites its own counter file every 20 ms. Stdio goes to a regular file (no pipes or ttys shared with pytest),
and the tree runs in its own session, so CRIU needs no shell-job or inherit-fd options.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.testenv import kill_and_reap, wait_for

SCRIPT = r"""
import os, sys, threading, time
d = sys.argv[1]
def counter(name):
    # one file, kept open and rewritten in place: it exists at every instant, so images taken with
    # leave_running always restore (a temp file renamed away after the dump would not)
    f = open(os.path.join(d, name), "w")
    n = 0
    while True:
        n += 1
        f.seek(0)
        f.write(str(n).ljust(16))
        f.flush()
        time.sleep(0.02)
for i in range(2):
    if os.fork() == 0:
        for t in range(2):
            threading.Thread(target=counter, args=(f"c{i}t{t}",), daemon=True).start()
        counter(f"c{i}")
for t in range(2):
    threading.Thread(target=counter, args=(f"pt{t}",), daemon=True).start()
counter("p")
"""

NAMES = ("p", "pt0", "pt1", "c0", "c0t0", "c0t1", "c1", "c1t0", "c1t1")


class Workload:
    """The running tree; ``pids`` are the root and its two children, all known once started."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "counters"
        self.dir.mkdir()
        self.script = tmp / "workload.py"
        self.script.write_text(SCRIPT)
        self.out = open(tmp / "workload.out", "wb")
        self.proc = subprocess.Popen([sys.executable, str(self.script), str(self.dir)], stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
        self.root = self.proc.pid
        wait_for(lambda: all((self.dir / n).exists() for n in NAMES), what="workload counters")
        self.pids = [self.root, *map(int, Path(f"/proc/{self.root}/task/{self.root}/children").read_text().split())]
        assert len(self.pids) == 3, self.pids

    def counters(self) -> dict[str, int]:
        return {n: int((self.dir / n).read_text().strip() or 0) for n in NAMES}

    def advancing(self, timeout: float = 5.0) -> dict[str, int]:
        """Wait until every counter moved past its current value; returns the new values."""
        before = self.counters()
        wait_for(lambda: all(v > before[n] for n, v in self.counters().items()), timeout=timeout,
                 what=f"every counter of the workload (root {self.root}) to advance")
        return self.counters()

    def wait_gone(self) -> None:
        """After a dump that killed the tree: reap our child, and wait until init reaped the others (their pids, and
        the root's pid they hold as session/group id, must be free before a restore can reuse them)."""
        self.proc.wait(10)
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in self.pids)
                 and not session_members(self.root), timeout=10, what=f"pids {self.pids} to be released")

    def kill(self) -> None:
        """Kill every process of the session (original or restored) and release the pids."""
        kill_and_reap(self.pids, self.proc)
        self.out.close()


def rmdir_cgroup(path: Path) -> None:
    """Remove a test cgroup, retrying while the kernel still counts exiting tasks in it (EBUSY)."""
    def gone() -> bool:
        try:
            path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    wait_for(gone, timeout=10, what=f"cgroup {path} to be removable")


def session_members(sid: int) -> list[int]:
    """Pids (zombies included) whose session id is ``sid``: all must be reaped before ``sid`` can be restored."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[3]) == sid:  # state ppid pgrp session ...
            out.append(int(entry))
    return out


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat (R, S, D, t, T, Z)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def settle(seconds: float) -> None:
    time.sleep(seconds)

"""What CRIU needs to know about a container's mounts, read from ``/proc/PID/mountinfo``.

A container's bind mounts (its volumes, ``/etc/hosts``, ``/etc/resolv.conf``, ...) come from outside its root
filesystem, so CRIU cannot dump them as part of the mount tree: like runc, gpucr marks each as external, keyed by its
mountpoint inside the container, and records the host path it came from so a restore can map the key back.
Kernel-provided filesystems (proc, sysfs, tmpfs, devpts, mqueue) are left to CRIU; cgroup mounts are binds of the
container's own cgroup directories, so they are external too (as runc passes them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["BindMount", "bind_mounts", "external_pid_ns", "parse_mountinfo_line"]

#: filesystems CRIU dumps and restores itself inside a container's mount namespace
KERNEL_FS = frozenset({"proc", "sysfs", "tmpfs", "devpts", "mqueue", "devtmpfs", "securityfs"})


@dataclass(frozen=True)
class BindMount:
    """A mount from outside the container: ``target`` inside it, ``source`` on the host."""

    target: str
    source: str
    fstype: str


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def parse_mountinfo_line(line: str) -> tuple[str, str, str, str]:
    """(major:minor, root, mountpoint, fstype) of one mountinfo line."""
    left, _, right = line.partition(" - ")
    f = left.split()
    return f[2], _unescape(f[3]), _unescape(f[4]), right.split()[0]


def bind_mounts(pid: int) -> list[BindMount]:
    """The external (bind) mounts of ``pid``'s mount namespace, with their host paths where they can be found."""
    with open(f"/proc/{pid}/mountinfo") as f:
        theirs = [parse_mountinfo_line(x) for x in f if x.strip()]
    with open("/proc/self/mountinfo") as f:
        ours = [parse_mountinfo_line(x) for x in f if x.strip()]
    # where each device's filesystem root is mounted on the host (for turning a mount's root into a host path)
    dev_root: dict[str, str] = {}
    for dev, root, mp, _fs in ours:
        if root == "/" and dev not in dev_root:
            dev_root[dev] = mp
    out = []
    for dev, root, mp, fs in theirs:
        if mp == "/" or fs in KERNEL_FS or fs == "overlay":
            continue
        base = dev_root.get(dev, "")
        src = (base.rstrip("/") + root) if base else root
        out.append(BindMount(mp, src or "/", fs))
    return out


def external_pid_ns(pid: int) -> str | None:
    """``pid[INODE]:extRootPidNS`` when ``pid`` lives in a pid namespace it is not the init of (a container that
    shares its pod's pid namespace): CRIU cannot dump such a namespace and must treat it as external, as runc does."""
    try:
        ours = os.stat("/proc/self/ns/pid").st_ino
        theirs = os.stat(f"/proc/{pid}/ns/pid").st_ino
        with open(f"/proc/{pid}/status") as f:
            nspid = next((ln.split()[1:] for ln in f if ln.startswith("NSpid:")), [])
    except OSError:
        return None
    if theirs == ours or not nspid or nspid[-1] == "1":
        return None
    return f"pid[{theirs}]:extRootPidNS"

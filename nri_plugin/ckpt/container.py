"""What CRIU needs to know about a container's mounts, read from ``/proc/PID/mountinfo``.

A container's bind mounts (its volumes, ``/etc/hosts``, ``/etc/resolv.conf``, ...) come from outside its root
filesystem, so CRIU cannot dump them as part of the mount tree: like runc, gpucr marks each as external, keyed by its
mountpoint inside the container, and records the host path it came from so a restore can map the key back.
Kernel-provided filesystems (proc, sysfs, tmpfs, devpts, mqueue, cgroup) are left to CRIU.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BindMount", "bind_mounts", "parse_mountinfo_line"]

#: filesystems CRIU dumps and restores itself inside a container's mount namespace
KERNEL_FS = frozenset({"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "devtmpfs", "securityfs"})


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

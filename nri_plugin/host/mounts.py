"""``/proc/PID/mountinfo`` parsed once, for every reader: the cgroup mounts (:mod:`.cgroup`) and a container's
bind mounts and root overlay (:mod:`nri_plugin.ckpt.container`).

One unescaper: the kernel writes space, tab, newline and backslash in a path as ``\\ooo`` (octal) and leaves every
other byte, UTF-8 included, as it is; the fields are decoded exactly that way and never through
``unicode_escape`` (which would garble a non-ASCII path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MountInfo", "bind_mounts", "parse_mountinfo", "read_mountinfo", "rootfs_overlay", "unescape"]

#: filesystems CRIU dumps and restores itself inside a container's mount namespace
KERNEL_FS = frozenset({"proc", "sysfs", "tmpfs", "devpts", "mqueue", "devtmpfs", "securityfs"})

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountInfo:
    """One mountinfo line: ``dev`` is major:minor, ``root`` the path of the mounted part of the filesystem."""

    dev: str
    root: str
    mountpoint: str
    options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]  # escaped as the kernel wrote them (they go back to mount -o as they are)


@dataclass(frozen=True)
class BindMount:
    """A mount from outside the container: ``target`` inside it, ``source`` on the host."""

    target: str
    source: str
    fstype: str


def unescape(field: str) -> str:
    """A mountinfo field as the path it names (``\\040`` -> space; non-ASCII left intact)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Every well-formed line of a ``/proc/PID/mountinfo`` text (malformed lines are skipped)."""
    out: list[MountInfo] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f, tail = left.split(), right.split()
        if len(f) < 6 or len(tail) < 2:
            continue
        out.append(MountInfo(f[2], unescape(f[3]), unescape(f[4]), tuple(f[5].split(",")), tail[0],
                             unescape(tail[1]), tuple(tail[2].split(",")) if len(tail) > 2 else ()))
    return out


def read_mountinfo(pid: int | str = "self") -> list[MountInfo]:
    """The mounts ``pid`` sees. Raises OSError when it is gone."""
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def bind_mounts(pid: int) -> list[BindMount]:
    """The external (bind) mounts of ``pid``'s mount namespace, with their host paths where they can be found."""
    theirs, ours = read_mountinfo(pid), read_mountinfo()
    # where each device's filesystem root is mounted on the host (for turning a mount's root into a host path)
    dev_root: dict[str, str] = {}
    for m in ours:
        if m.root == "/" and m.dev not in dev_root:
            dev_root[m.dev] = m.mountpoint
    out = []
    for m in theirs:
        if m.mountpoint == "/" or m.fstype in KERNEL_FS or m.fstype == "overlay":
            continue
        base = dev_root.get(m.dev, "")
        src = (base.rstrip("/") + m.root) if base else m.root
        out.append(BindMount(m.mountpoint, src or "/", m.fstype))
    return out


def rootfs_overlay(pid: int) -> str | None:
    """The overlay mount options of the container's root (lowerdir/upperdir/workdir), to remount it for a restore."""
    for m in read_mountinfo(pid):
        if m.mountpoint == "/" and m.fstype == "overlay":
            return ",".join(o for o in m.super_options if o not in ("rw", "ro"))
    return None

"""What CRIU needs to know about a container's mounts, read from ``/proc/PID/mountinfo``.

A container's bind mounts (its volumes, ``/etc/hosts``, ``/etc/resolv.conf``, ...) come from outside its root
filesystem, so CRIU cannot dump them as part of the mount tree: like runc, gpucr marks each as external, keyed by its
mountpoint inside the container, and records the host path it came from so a restore can map the key back.
Kernel-provided filesystems (proc, sysfs, tmpfs, devpts, mqueue) are left to CRIU; cgroup mounts are binds of the
container's own cgroup directories, so they are external too (as runc passes them).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GpucrError

__all__ = ["BindMount", "ContainerError", "bind_mounts", "describe", "dump_options", "external_pid_ns",
           "parse_mountinfo_line", "restore_options", "rootfs_overlay"]

#: filesystems CRIU dumps and restores itself inside a container's mount namespace
KERNEL_FS = frozenset({"proc", "sysfs", "tmpfs", "devpts", "mqueue", "devtmpfs", "securityfs"})


class ContainerError(GpucrError):
    """A container cannot be checkpointed or restored directly (its rootfs or pod is gone)."""


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


def rootfs_overlay(pid: int) -> str | None:
    """The overlay mount options of the container's root (lowerdir/upperdir/workdir), to remount it for a restore."""
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            _dev, _root, mp, fs = parse_mountinfo_line(line)
            if mp == "/" and fs == "overlay":
                opts = line.partition(" - ")[2].split()[2]
                return ",".join(o for o in opts.split(",") if o not in ("rw", "ro"))
    return None


def describe(pid: int, container_id: str) -> dict[str, Any]:
    """What a restore of this container needs, recorded in the checkpoint's metadata."""
    ext = external_pid_ns(pid)
    return {"id": container_id, "bind_mounts": {m.target: m.source for m in bind_mounts(pid)},
            "rootfs_overlay": rootfs_overlay(pid), "ext_pid_ns": int(ext[4:ext.index("]")]) if ext else None}


def dump_options(desc: dict[str, Any]) -> dict[str, Any]:
    """CRIU dump options for a container described by :func:`describe`."""
    out: dict[str, Any] = {"external_mounts": {t: t for t in desc["bind_mounts"]}}
    if desc.get("ext_pid_ns"):
        out["external"] = [f"pid[{desc['ext_pid_ns']}]:extRootPidNS"]
    return out


def _pid_ns_init(ino: int) -> int | None:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}/ns/pid").st_ino != ino:
                continue
            with open(f"/proc/{name}/status") as f:
                nspid = next((ln.split()[1:] for ln in f if ln.startswith("NSpid:")), [])
        except OSError:
            continue
        if nspid and nspid[-1] == "1":
            return int(name)
    return None


@contextmanager
def restore_options(desc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """CRIU restore options for a container: its root filesystem remounted (the snapshot outlives the task), its
    bind mounts mapped back to their host paths, and its pod's pid namespace joined (the pod must still run).

    Raises:
        ContainerError: the rootfs or the pod's pid namespace is gone (names what to do).
    """
    opts: dict[str, Any] = {"external_mounts": dict(desc["bind_mounts"])}
    with ExitStack() as stack:
        if desc.get("rootfs_overlay"):
            root = Path(tempfile.mkdtemp(prefix="gpucr-rootfs-"))
            stack.callback(lambda: root.rmdir() if root.exists() and not os.path.ismount(root) else None)
            r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", desc["rootfs_overlay"], str(root)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise ContainerError(f"cannot remount the root filesystem of container {desc['id']}: "
                                     f"{r.stderr.strip()}; was the container removed (its snapshot with it)?")
            # a lazy unmount: the restored mount namespace keeps its own copy of this mount
            stack.callback(lambda: subprocess.run(["umount", "-l", str(root)], capture_output=True))
            opts["root"] = str(root)
        if desc.get("ext_pid_ns"):
            init = _pid_ns_init(int(desc["ext_pid_ns"]))
            if init is None:
                raise ContainerError(f"the pid namespace of container {desc['id']}'s pod is gone (no init found): "
                                     f"restore while the pod sandbox still runs")
            fd = os.open(f"/proc/{init}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, fd)
            opts["inherit_fds"] = {"extRootPidNS": fd}
        yield opts

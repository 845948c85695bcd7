"""What CRIU needs to know about a container's mounts (read by :mod:`nri_plugin.host.mounts`), and its pid namespace.

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
from pathlib import Path
from typing import Any

from ..errors import GpucrError
from ..host.mounts import bind_mounts, rootfs_overlay
from ..host.proc import external_pid_ns, pid_ns_init

__all__ = ["ContainerError", "describe", "dump_options", "restore_options"]

class ContainerError(GpucrError):
    """A container cannot be checkpointed or restored directly (its rootfs or pod is gone)."""


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
            init = pid_ns_init(int(desc["ext_pid_ns"]))
            if init is None:
                raise ContainerError(f"the pid namespace of container {desc['id']}'s pod is gone (no init found): "
                                     f"restore while the pod sandbox still runs")
            fd = os.open(f"/proc/{init}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, fd)
            opts["inherit_fds"] = {"extRootPidNS": fd}
        yield opts

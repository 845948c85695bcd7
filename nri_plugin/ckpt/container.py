"""What CRIU needs to know about a container's mounts (read by :mod:`nri_plugin.host.mounts`), and its pid namespace.

A container's bind mounts (its volumes, ``/etc/hosts``, ``/etc/resolv.conf``, ...) come from outside its root
filesystem, so CRIU cannot dump them as part of the mount tree: like runc, gpucr marks each as external, keyed by its
mountpoint inside the container, and records the host path it came from so a restore can map the key back.
Kernel-provided filesystems (proc, sysfs, tmpfs, devpts, mqueue) are left to CRIU; cgroup mounts are binds of the
container's own cgroup directories, so they are external too (as runc passes them).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from ..errors import GpucrError
from ..host.mounts import bind_mounts, rootfs_overlay
from ..host.proc import cgroup_path, external_pid_ns, pid_ns_init
from ..host.proc import container_id as cgroup_container_id

__all__ = ["ContainerError", "check_restore", "describe", "dump_options", "restore_options"]

class ContainerError(GpucrError):
    """A container cannot be checkpointed or restored directly (its rootfs or pod is gone)."""


def describe(pid: int, container_id: str) -> dict[str, Any]:
    """What a restore of this container needs, recorded in the checkpoint's metadata; ``pod_sandbox`` is the
    container id of the init of the pod's pid namespace (the sandbox), which a restore requires to be the same."""
    ext = external_pid_ns(pid)
    ns = int(ext[4:ext.index("]")]) if ext else None
    init = pid_ns_init(ns) if ns else None
    return {"id": container_id, "bind_mounts": {m.target: m.source for m in bind_mounts(pid)},
            "rootfs_overlay": rootfs_overlay(pid), "ext_pid_ns": ns,
            "pod_sandbox": cgroup_container_id(cgroup_path(init)) if init else None}


#: overlay options a restore passes to mount(8): the snapshot layers (paths) and flags the kernel reports
_OVERLAY_PATHS = frozenset({"lowerdir", "upperdir", "workdir"})
_OVERLAY_FLAGS = frozenset({"index", "xino", "metacopy", "redirect_dir", "uuid", "nfs_export", "userxattr",
                            "nouserxattr", "volatile"})
#: containerd's overlayfs snapshotter keeps every layer at ``<root>/<this>/<n>/fs`` (and ``.../<n>/work``)
_SNAPSHOTS = re.compile(r"/(?:[^/,:=]+/)*io\.containerd\.snapshotter\.v1\.overlayfs/snapshots/[0-9]+/(?:fs|work)\Z")


def _plain_abs(p: Any) -> bool:
    return isinstance(p, str) and p.startswith("/") and os.path.normpath(p) == p and "\0" not in p


def check_restore(desc: Any) -> None:
    """Refuse a container description that asks a restore for more than the container had.

    ``gpucr.json`` sits in a dir that only root may write (:func:`nri_plugin.ckpt.layout.check_owner`), yet a
    restore runs mount(8), joins a pid namespace and hands host paths to CRIU from it, so each is checked as data:

    * ``rootfs_overlay``: only the option names overlayfs reports, and every layer path a plain absolute path in a
      containerd overlayfs snapshot (``.../io.containerd.snapshotter.v1.overlayfs/snapshots/N/{fs,work}``) that
      exists; anything else could mount any host dir as the restored root.
    * ``bind_mounts``: plain absolute targets and sources (no ``..``, no NUL). They are the container's own volumes
      and cgroup binds as recorded at checkpoint (a cgroup dir may be gone until CRIU recreates it), which may be
      anywhere on the host, so they cannot be held to a known root: this is where the restore trusts the owner of
      the checkpoint dir (root, checked).
    * ``ext_pid_ns``: joined only when its init runs in the cgroup of the pod sandbox recorded at checkpoint
      (``pod_sandbox``, checked in :func:`restore_options`), never the host's or another pod's namespace.

    Raises:
        ContainerError: names the field and what is wrong.
    """
    if not isinstance(desc, dict) or not isinstance(desc.get("id"), str) or not desc["id"]:
        raise ContainerError("the checkpoint's container description is malformed: the checkpoint is corrupt")
    cid = desc["id"]
    binds = desc.get("bind_mounts")
    if not isinstance(binds, dict) or not all(_plain_abs(t) and _plain_abs(s) for t, s in binds.items()):
        raise ContainerError(f"container {cid}: the recorded bind mounts are not plain absolute paths: refusing them")
    overlay = desc.get("rootfs_overlay")
    if overlay is not None:
        if not isinstance(overlay, str):
            raise ContainerError(f"container {cid}: the recorded root overlay is malformed: refusing it")
        for opt in overlay.split(","):
            key, _, value = opt.partition("=")
            if key in _OVERLAY_PATHS:
                for layer in value.split(":") if key == "lowerdir" else [value]:
                    if not (_plain_abs(layer) and _SNAPSHOTS.match(layer) and os.path.isdir(layer)):
                        raise ContainerError(f"container {cid}: root overlay layer {layer!r} is not a containerd "
                                             f"overlayfs snapshot on this host: refusing to mount it")
            elif key not in _OVERLAY_FLAGS:
                raise ContainerError(f"container {cid}: root overlay option {opt!r} is not one overlayfs reports: "
                                     f"refusing to mount it")
    ns = desc.get("ext_pid_ns")
    if ns is not None and (not isinstance(ns, int) or isinstance(ns, bool) or ns <= 0
                           or not isinstance(desc.get("pod_sandbox"), str) or not desc["pod_sandbox"]):
        raise ContainerError(f"container {cid}: the recorded pod pid namespace is malformed (or has no pod sandbox): "
                             f"refusing to join it")


def dump_options(desc: dict[str, Any]) -> dict[str, Any]:
    """CRIU dump options for a container described by :func:`describe`."""
    out: dict[str, Any] = {"external_mounts": {t: t for t in desc["bind_mounts"]}}
    if desc.get("ext_pid_ns"):
        out["external"] = [f"pid[{desc['ext_pid_ns']}]:extRootPidNS"]
    return out


@contextmanager
def restore_options(desc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """CRIU restore options for a container: its root filesystem remounted (the snapshot outlives the task), its
    bind mounts mapped back to their host paths, and its pod's pid namespace joined (the pod must still run), after
    :func:`check_restore`.

    Raises:
        ContainerError: the description asks for more than the container had, or the rootfs or the pod's pid
            namespace is gone (names what to do).
    """
    check_restore(desc)
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
            sandbox = cgroup_container_id(cgroup_path(init))
            if sandbox != desc["pod_sandbox"] or os.stat(f"/proc/{init}/ns/pid").st_ino != desc["ext_pid_ns"]:
                raise ContainerError(f"the pid namespace recorded for container {desc['id']} is now that of "
                                     f"{sandbox or 'no container'} (pid {init}), not of its pod sandbox "
                                     f"{desc['pod_sandbox']}: refusing to join it (restore while the pod still runs)")
            fd = os.open(f"/proc/{init}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, fd)
            opts["inherit_fds"] = {"extRootPidNS": fd}
        yield opts

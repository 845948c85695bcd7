"""What CRIU needs to know about a container's mounts (read by :mod:`nri_plugin.host.mounts`), and its pid namespace.

A container's bind mounts (its volumes, ``/etc/hosts``, ``/etc/resolv.conf``, ...) come from outside its root
filesystem, so CRIU cannot dump them as part of the mount tree: like runc, gpucr marks each as external, keyed by its
mountpoint inside the container, and records the host path it came from so a restore can map the key back.
Kernel-provided filesystems (proc, sysfs, tmpfs, devpts, mqueue) are left to CRIU; cgroup mounts are binds of the
container's own cgroup directories, so they are external too (as runc passes them); a cgroup2 mount is left to CRIU
(runc's restore maps none on cgroup v2).

A direct checkpoint of a container is also one ``runc restore`` takes (``gpucr.io/restore-from``), because it is
dumped the way runc's own checkpoint dumps a container (libcontainer's ``Checkpoint``): bind mounts external keyed by
their destination, a pid and a net namespace the container joined by path external under runc's keys
(``extRootPidNS``, ``extRootNetNS``), and CRIU's images dir holding ``descriptors.json`` (what fds 0-2 of the init
were, so runc hands the new container's stdio over in their place) and gpucr's CUDA marker (what the CRIU front
restores at post-resume): :class:`ContainerStore`.
"""

from __future__ import annotations

import json
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
from .layout import FileEntry, Metadata

__all__ = ["DESCRIPTORS", "KIND", "ContainerError", "ContainerStore", "check_restore", "describe", "dump_options",
           "restore_options", "write_runc_files"]

#: runc's file in CRIU's images dir: the init's fds 0-2 at checkpoint (libcontainer's ``descriptorsFilename``)
DESCRIPTORS = "descriptors.json"
#: ``kind`` in gpucr.json of a direct container checkpoint (``runtime``: one made through containerd)
KIND = "container"

class ContainerError(GpucrError):
    """A container cannot be checkpointed or restored directly (its rootfs or pod is gone)."""


def _descriptors(pid: int) -> list[str]:
    """What fds 0-2 of the container's init are (``pipe:[N]``, ``/dev/null``, ...), as runc records them."""
    out = []
    for fd in range(3):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            out.append("")
    return out


def _external_net_ns(pid: int) -> int | None:
    """The inode of ``pid``'s net namespace when it is not ours (CRIU's): the pod's, which runc dumps as external."""
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net").st_ino
        return None if theirs == os.stat("/proc/self/ns/net").st_ino else theirs
    except OSError:
        return None


def describe(pid: int, container_id: str, pod_sandbox: str = "") -> dict[str, Any]:
    """What a restore of this container needs, recorded in the checkpoint's metadata; ``pod_sandbox`` is the
    container id of the pod's sandbox, whose namespaces a restore joins (it must be the same then): the init of the
    pod's pid namespace when the container shares it, else the one the runtime names (``pod_sandbox``)."""
    ext = external_pid_ns(pid)
    ns = int(ext[4:ext.index("]")]) if ext else None
    init = pid_ns_init(ns) if ns else None
    sandbox = cgroup_container_id(cgroup_path(init)) if init else None
    return {"id": container_id,
            "bind_mounts": {m.target: m.source for m in bind_mounts(pid) if m.fstype != "cgroup2"},
            "rootfs_overlay": rootfs_overlay(pid), "ext_pid_ns": ns, "ext_net_ns": _external_net_ns(pid),
            "pod_sandbox": sandbox or pod_sandbox or None, "descriptors": _descriptors(pid)}


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
    for key, what in (("ext_pid_ns", "pid"), ("ext_net_ns", "net")):
        ns = desc.get(key)
        if ns is not None and (not isinstance(ns, int) or isinstance(ns, bool) or ns <= 0
                               or not isinstance(desc.get("pod_sandbox"), str) or not desc["pod_sandbox"]):
            raise ContainerError(f"container {cid}: the recorded pod {what} namespace is malformed (or has no pod "
                                 f"sandbox): refusing to join it")


def dump_options(desc: dict[str, Any]) -> dict[str, Any]:
    """CRIU dump options for a container described by :func:`describe`."""
    out: dict[str, Any] = {"external_mounts": {t: t for t in desc["bind_mounts"]}}
    ext = [f"{kind}[{desc[key]}]:{name}" for key, kind, name in _EXT_NS if desc.get(key)]
    if ext:
        out["external"] = ext
    return out


#: the namespaces a container joins by path that runc dumps as external: (description key, CRIU's kind, runc's key)
_EXT_NS = (("ext_pid_ns", "pid", "extRootPidNS"), ("ext_net_ns", "net", "extRootNetNS"))


def write_runc_files(images: Path, desc: dict[str, Any], meta: Metadata, *, managed: bool) -> None:
    """Into CRIU's images dir of a container checkpoint, before it is sealed: runc's ``descriptors.json`` and, when
    CUDA processes were checkpointed, gpucr's CUDA marker (the same the CRIU front writes). Raises OSError."""
    from . import marker
    path = images / DESCRIPTORS
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(list(desc.get("descriptors") or ["", "", ""]), f)
    cuda = meta.cuda
    if cuda.get("processes"):
        marker.write(str(images), marker.CudaMarker(meta.container_id or "", managed,
                                                    int(meta.root_pid or 0), list(cuda["processes"]),
                                                    dict(cuda.get("gpus") or {}), str(cuda.get("driver_version") or "")))


class ContainerStore:
    """The checkpoint store of a direct container checkpoint: the engine's store, plus :func:`write_runc_files`
    into the images just before the metadata (so the manifest covers them and the seal fsyncs them)."""

    def __init__(self, store: Any, desc: dict[str, Any], *, managed: bool) -> None:
        self._store, self._desc, self._managed = store, desc, managed

    def write_metadata(self, images_dir: Path, meta: Metadata, known: dict[str, FileEntry] | None = None) -> None:
        write_runc_files(self._store.images_of(images_dir), self._desc, meta, managed=self._managed)
        self._store.write_metadata(images_dir, meta, known)

    def __getattr__(self, name: str) -> Any:  # every other StoreLike method is the wrapped store's
        return getattr(self._store, name)


@contextmanager
def restore_options(desc: dict[str, Any], images: str | Path = "") -> Iterator[dict[str, Any]]:
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
            from .pidns import PidNsError, prepare
            try:  # its pids free there, CRIU's helpers born above them (see .pidns)
                if images:
                    prepare(Path(images), f"/proc/{init}/ns/pid", f"container {desc['id']}")
            except PidNsError as exc:
                raise ContainerError(str(exc)) from exc
        if desc.get("ext_net_ns"):
            fd = os.open(f"/proc/{_net_ns_holder(desc)}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, fd)
            opts["inherit_fds"] = {**opts.get("inherit_fds", {}), "extRootNetNS": fd}
        yield opts


def _net_ns_holder(desc: dict[str, Any]) -> int:
    """A process of the recorded pod sandbox in the recorded net namespace (never another pod's namespace).

    Raises:
        ContainerError: none runs (the pod is gone).
    """
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if (os.stat(f"/proc/{name}/ns/net").st_ino == desc["ext_net_ns"]
                    and cgroup_container_id(cgroup_path(int(name))) == desc["pod_sandbox"]):
                return int(name)
        except OSError:
            continue
    raise ContainerError(f"the network namespace of container {desc['id']}'s pod (sandbox {desc['pod_sandbox']}) is "
                         f"gone: restore while the pod sandbox still runs")

"""A container checkpointed through containerd's own checkpoint, as every other caller does, so gpucr's CRIU front
does the CUDA work; then sealed (``gpucr.json`` with a manifest) and fsynced, so ``gpucr.io/restore-from`` can name it.

containerd 2.x: CRI CheckpointContainer into ``DIR/checkpoint.tar`` (the container keeps running: CRI's checkpoint
has no kill mode). containerd 1.7 has no CRI checkpoint: the task API's Checkpoint with ``image_path=DIR/images``
(CRIU images, as ``ctr t checkpoint --image-path``); so does a container found outside CRI (``ctr run``, any
namespace). Afterwards the checkpoint must carry the front's marker (``gpucr-cuda.json``): a container holding CUDA
state whose checkpoint lacks it did not pass through the front, and the error says how to install it.

Without leave-running the task API's checkpoint stops the container, and the checkpoint is reported done only once
containerd has it stopped (:mod:`.stopped`).

Callers: ``gpucr checkpoint --via-runtime`` (:mod:`nri_plugin.cli._via_runtime`) and the plugin daemon's periodic
checkpoints (:mod:`nri_plugin.handlers.periodic`).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GpucrError
from .layout import CRIU_DUMP, dump_record
from . import marker as _marker
from .stopped import await_stopped

__all__ = ["RuntimeCheckpoint", "RuntimeTarget", "checkpoint", "runtime_major", "sealing_versions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeTarget:
    """The container to checkpoint and where containerd serves it."""

    address: str
    container_id: str
    pid: int
    namespace: str = "k8s.io"
    via_cri: bool = True


@dataclass(frozen=True)
class RuntimeCheckpoint:
    """What :func:`checkpoint` wrote: ``target`` is the archive or the images dir inside the checkpoint dir;
    ``left_running``: the container runs on (leave-running, or CRI's checkpoint on 2.x, which always leaves it)."""

    container_id: str
    pid: int
    via: str
    runtime: str
    target: Path
    marker: _marker.CudaMarker | None
    timings_s: dict[str, float] = field(default_factory=dict)
    left_running: bool = True


def runtime_major(address: str) -> tuple[int, str]:
    """containerd's major version and its "name version" text, through CRI Version."""
    from ..cri import CriClient
    with CriClient(address, timeout_s=10) as c:
        v = c.version()
    text = f"{v.runtime_name} {v.runtime_version}"
    try:
        return int(v.runtime_version.lstrip("v").split(".")[0]), text
    except ValueError as exc:
        raise GpucrError(f"cannot tell the version of the runtime at {address} ({text!r})") from exc


def _marker_of(path: Path, archive: bool) -> _marker.CudaMarker | None:
    """gpucr's marker in the runtime's checkpoint (an images dir, or CRI's archive); None when it has none.

    Raises:
        MarkerError: the marker is there but unreadable or of another format.
    """
    if not archive:
        if not (path / _marker.MARKER).exists():
            return None
        return _marker.read(str(path))
    with tarfile.open(path) as t:
        try:
            f = t.extractfile(f"checkpoint/{_marker.MARKER}")
        except KeyError:
            return None
        if f is None:
            return None
        try:
            data = json.loads(f.read())
        except ValueError as exc:
            raise _marker.MarkerError(f"gpucr's marker in {path} is unreadable ({exc})") from exc
        return _marker.parse(data, f"{path}:checkpoint/{_marker.MARKER}")


def _seal(out: Path, t: RuntimeTarget, via: str, runtime: str, mk: _marker.CudaMarker | None,
          extra: Mapping[str, Any], criu_path: str = "") -> None:
    """Make ``out`` a gpucr checkpoint: ``gpucr.json`` (written last, fsynced) with a manifest of every file (so a
    restore through ``gpucr.io/restore-from`` can refuse a truncated or changed one), the container's volumes
    (container path -> host path, so that restore can check the new container mounts each of them), and the CRIU
    and kernel that dumped it (:func:`sealing_versions`)."""
    from ..cri import CriClient, CriError
    from .layout import CheckpointDir, Metadata
    mounts: dict[str, str] = {}
    try:
        with CriClient(t.address, timeout_s=10) as c:
            status, _ = c.container_status(t.container_id)
            mounts = {m.container_path: m.host_path for m in status.mounts}
    except CriError:
        pass  # not a CRI container: no volumes recorded
    criu, kernel = sealing_versions(criu_path)
    CheckpointDir(out).finalize(Metadata(
        root_pid=t.pid, container_id=t.container_id, driver_version=(mk.driver_version or None) if mk else None,
        criu_version=criu, kernel_release=kernel,
        extra={"kind": "runtime", "via": via, "runtime": runtime, "mounts": mounts, **extra}))


def sealing_versions(criu_path: str = "") -> tuple[str | None, str]:
    """(CRIU version, kernel release) for ``gpucr.json`` of a runtime's checkpoint sealed on this node: the runtime
    ran the node's CRIU (``criu_path`` of the node config, the one gpucr's front runs; its ``criu --version``,
    cached per process). The CRIU version is None, with a warning, when it cannot be asked: the checkpoint is still
    sealed, and a restore then does not compare CRIU versions."""
    from .criu.binary import cli_version, node_criu
    from .criu.errors import CriuError
    try:
        criu: str | None = cli_version(node_criu(criu_path))
    except CriuError as exc:
        log.warning("the CRIU version is not recorded in the checkpoint: %s", exc)
        criu = None
    return criu, os.uname().release


def checkpoint(t: RuntimeTarget, out: Path, *, leave_running: bool, libcuda: str,
               extra: Mapping[str, Any] | None = None, runtime: tuple[int, str] | None = None,
               images_only: bool = False, criu_path: str = "",
               config_flags: Mapping[str, bool] | None = None) -> RuntimeCheckpoint:
    """Checkpoint ``t`` through containerd into the empty private dir ``out``, seal it and fsync it (``out``'s
    parent too). ``runtime``: containerd's (major, text) when the caller knows it. ``extra``: more fields for
    ``gpucr.json``. ``images_only``: a CRI container on 2.x goes through the task API too, so CRIU's images are
    written once, into ``out`` (CRI's path has containerd copy them into its content store and then into the archive;
    the price: no rootfs diff, no container config). ``criu_path``: the node config's (whose version is recorded).
    ``config_flags``: the restore-relevant options of the container's CRIU config file
    (``policy.criu_conf.dump_flags``); with them a dump through the task API records ``criu_dump`` (its own options
    are known: ``file_locks``); without them, or through CRI (containerd's options), nothing is recorded and a restore
    takes the defaults.

    Raises:
        GpucrError: the runtime refused (e.g. CRIU or the front failed: the container keeps running when
            ``leave_running``), a CUDA container's checkpoint lacks gpucr's marker, or the disk failed.
    """
    from ..host.proc import cuda_candidates, tree_pids
    from .durable import fsync_path, fsync_tree

    holds_cuda = bool(cuda_candidates(tree_pids(t.pid), libcuda or "libcuda.so.1"))
    if not t.via_cri:
        runtime = (0, f"containerd ({t.namespace})")
    major, text = runtime or runtime_major(t.address)
    t0 = time.monotonic()
    if t.via_cri and major >= 2 and not images_only:
        from ..cri import CriClient
        target = out / "checkpoint.tar"
        with CriClient(t.address) as c:
            c.checkpoint_container(t.container_id, str(target), timeout_s=3600)
        os.chmod(target, 0o600)
        via, archive = "cri CheckpointContainer", True
    else:
        from ..containerd import TaskClient
        target = out / "images"
        target.mkdir(mode=0o700)
        with TaskClient(t.address, t.namespace) as tc:
            tc.checkpoint(t.container_id, target, work_path=out / "work", exit=not leave_running, file_locks=True)
        via, archive = "containerd task Checkpoint", False
        if config_flags is not None:
            extra = {**(extra or {}), CRIU_DUMP: dump_record({"file_locks": True, **config_flags})}
    timings = {"runtime": round(time.monotonic() - t0, 4)}
    mk = _marker_of(target, archive)
    if mk is None and holds_cuda:
        raise GpucrError(f"container {t.container_id} (pid {t.pid}) holds CUDA state but its checkpoint {target} has "
                         f"no gpucr marker: {text}'s runc did not run gpucr's CRIU front; install it for this "
                         f"runtime (install/front.sh install --config <containerd config>) and restart containerd")
    _seal(out, t, via, text, mk, extra or {}, criu_path)
    # containerd wrote the checkpoint (the front fsynced CRIU's images, not containerd's archive or its dir): on
    # disk before it is called done
    t1 = time.monotonic()
    try:
        fsync_tree(out)
        fsync_path(out.parent, directory=True)
    except OSError as exc:
        raise GpucrError(f"checkpoint of container {t.container_id} (pid {t.pid}) failed at step sync: {out} could "
                         f"not be written to disk ({exc.strerror or exc}); fix: check that filesystem (free space, "
                         "dmesg), then checkpoint again") from exc
    timings["sync"] = round(time.monotonic() - t1, 4)
    left_running = leave_running or archive
    if not left_running:
        await_stopped(t.address, t.container_id, t.pid, namespace=t.namespace, via_cri=t.via_cri)
    return RuntimeCheckpoint(t.container_id, t.pid, via, text, target, mk, timings, left_running=left_running)

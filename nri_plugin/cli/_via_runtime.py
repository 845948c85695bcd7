"""``gpucr checkpoint CONTAINER --via-runtime``: checkpoint through containerd's own checkpoint, as every other
caller does, so the CLI and the standard commands share one path and gpucr's CRIU front does the CUDA work.

containerd 2.x: CRI CheckpointContainer into ``DIR/checkpoint.tar`` (the container keeps running; restore it with a
CRI CreateContainer from that archive). containerd 1.7 has no CRI checkpoint: the task API's Checkpoint with
``image_path=DIR/images`` (CRIU images, as ``ctr t checkpoint --image-path``; restore with ``runc restore`` or a
task created from them); so does a container found outside CRI (``ctr run``, any ``--namespace``), and, with
``--images-only``, a CRI container on 2.x: CRIU's images are then written once, into DIR, where CRI's path has
containerd copy them into its content store and then into the archive after CRIU is done (most of a CRI checkpoint's
time: ``docs/flows.md``), at the price of the archive's extras (the rootfs diff, the container's config). Afterwards the checkpoint must carry the front's marker (``gpucr-cuda.json``): a container
holding CUDA state whose checkpoint lacks it did not pass through the front, and the error says how to install it.
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GpucrError

if TYPE_CHECKING:
    from ..ckpt.marker import CudaMarker
    from ..policy.config import NodeConfig
    from ._resolve import Resolved

__all__ = ["run"]


def _runtime_major(address: str) -> tuple[int, str]:
    from ..cri import CriClient
    with CriClient(address, timeout_s=10) as c:
        v = c.version()
    text = f"{v.runtime_name} {v.runtime_version}"
    try:
        return int(v.runtime_version.lstrip("v").split(".")[0]), text
    except ValueError as exc:
        raise GpucrError(f"cannot tell the version of the runtime at {address} ({text!r})") from exc


def _marker_of(path: Path, archive: bool) -> CudaMarker | None:
    """gpucr's marker in the runtime's checkpoint (an images dir, or CRI's archive); None when it has none.

    Raises:
        MarkerError: the marker is there but unreadable or of another format.
    """
    from ..ckpt import marker
    if not archive:
        if not (path / marker.MARKER).exists():
            return None
        return marker.read(str(path))
    with tarfile.open(path) as t:
        try:
            f = t.extractfile(f"checkpoint/{marker.MARKER}")
        except KeyError:
            return None
        if f is None:
            return None
        try:
            data = json.loads(f.read())
        except ValueError as exc:
            raise marker.MarkerError(f"gpucr's marker in {path} is unreadable ({exc})") from exc
        return marker.parse(data, f"{path}:checkpoint/{marker.MARKER}")


def _seal(out: Path, address: str, container_id: str, pid: int, via: str, runtime: str,
          marker: CudaMarker | None) -> None:
    """Make ``out`` a gpucr checkpoint: ``gpucr.json`` with a manifest of every file (so a restore through
    ``gpucr.io/restore-from`` can refuse a truncated or changed one) and the container's volumes (container path ->
    host path, so that restore can check the new container mounts each of them)."""
    from ..ckpt.layout import CheckpointDir, Metadata
    from ..cri import CriClient, CriError
    mounts: dict[str, str] = {}
    try:
        with CriClient(address, timeout_s=10) as c:
            status, _ = c.container_status(container_id)
            mounts = {m.container_path: m.host_path for m in status.mounts}
    except CriError:
        pass  # not a CRI container: no volumes recorded
    CheckpointDir(out).finalize(Metadata(
        root_pid=pid, container_id=container_id, driver_version=(marker.driver_version or None) if marker else None,
        extra={"kind": "runtime", "via": via, "runtime": runtime, "mounts": mounts}))


def run(args: argparse.Namespace, cfg: NodeConfig, found: Resolved) -> int:
    """Checkpoint the container ``found`` through the runtime at ``args.address``; prints a summary; returns 0.

    DIR follows the rules of a gpucr checkpoint dir (:meth:`~nri_plugin.ckpt.layout.CheckpointDir.create_empty`:
    inside ``checkpoint_root``, ours, not writable by others, 0700) and must be empty: the runtime writes it, so
    there is no gpucr checkpoint in it for ``--force`` to replace.

    Raises:
        GpucrError: the runtime refused, DIR is unusable, or a CUDA container's checkpoint lacks gpucr's marker.
    """
    from ..ckpt.layout import CheckpointDir
    from ..host.proc import cuda_candidates, tree_pids

    if args.force:
        raise GpucrError("--force does not apply to --via-runtime (the runtime writes DIR): give an empty or new dir")
    container_id, pid = found.id, found.pid
    out = CheckpointDir.create_empty(Path(args.to), root=cfg.checkpoint_root)
    holds_cuda = bool(cuda_candidates(tree_pids(pid), args.libcuda or cfg.libcuda or "libcuda.so.1"))
    major, runtime = _runtime_major(args.address) if found.via_cri else (0, f"containerd ({found.namespace})")
    if found.via_cri and major >= 2 and not args.images_only:
        from ..cri import CriClient
        target = out / "checkpoint.tar"
        with CriClient(args.address) as c:
            c.checkpoint_container(container_id, str(target), timeout_s=3600)
        os.chmod(target, 0o600)
        via, archive = "cri CheckpointContainer", True
    else:
        from ..containerd import TaskClient
        target = out / "images"
        target.mkdir(mode=0o700)
        with TaskClient(args.address, found.namespace) as t:
            t.checkpoint(container_id, target, work_path=out / "work", exit=not args.leave_running,
                         file_locks=True)
        via, archive = "containerd task Checkpoint", False
    marker = _marker_of(target, archive)
    if marker is None and holds_cuda:
        raise GpucrError(f"container {container_id} (pid {pid}) holds CUDA state but its checkpoint {target} has no "
                         f"gpucr marker: {runtime}'s runc did not run gpucr's CRIU front; install it for this "
                         f"runtime (install/front.sh install --config <containerd config>) and restart containerd")
    _seal(out, args.address, container_id, pid, via, runtime, marker)
    # containerd wrote the checkpoint (the front fsynced CRIU's images, not containerd's archive or its dir): on
    # disk before it is called done
    from ..ckpt.durable import fsync_path, fsync_tree
    t0 = time.monotonic()
    try:
        fsync_tree(out)
        fsync_path(out.parent, directory=True)
    except OSError as exc:
        raise GpucrError(f"checkpoint of container {container_id} (pid {pid}) failed at step sync: {out} could not be "
                         f"written to disk ({exc.strerror or exc}); fix: check that filesystem (free space, dmesg), "
                         "then checkpoint again") from exc
    summary = {"action": "checkpoint", "container_id": container_id, "pid": pid, "via": via, "runtime": runtime,
               "path": str(target), "cuda_processes": marker.processes if marker else [],
               "gpus": marker.gpus if marker else {}, "timings_s": {"sync": round(time.monotonic() - t0, 4)}}
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"checkpoint of container {container_id} done through {via} ({runtime}): "
              f"{len(summary['cuda_processes'])} CUDA process(es) made GPU-safe by gpucr's CRIU front; {target}")
    return 0

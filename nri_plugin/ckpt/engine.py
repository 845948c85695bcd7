"""Checkpoint and restore of a workload that may hold CUDA state: the order of CUDA, cgroup and CRIU steps.

Checkpoint: if a caller froze the workload's cgroup, thaw it (a frozen process blocks every CUDA call); find the CUDA
processes; check host memory; lock CUDA in all of them in parallel; checkpoint them (GPU memory to host) in parallel;
re-freeze if it was frozen; CRIU dump. With leave-running, once the tasks run again: CUDA restore and unlock (thawing
around it when the cgroup is frozen), then the cgroup goes back to the state we found.
Restore: validate the metadata (before CRIU), check driver and GPU compatibility, CRIU restore, CUDA restore (with
the old->new GPU UUID pairs when the target GPUs differ) and unlock.

The CUDA half (suspend, resume, rollback, restore after CRIU) is :class:`.cuda_steps.CudaSteps`, which the CRIU
front's hooks share; this module adds CRIU and the checkpoint directory for ``gpucr checkpoint``/``restore``. Any
failure rolls back (see :mod:`.cuda_steps`). The engine works against small Protocols (CRIU, checkpoint store) so its
logic is unit-tested with fakes; the CLI wires the real ones.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import __version__
from ..host.proc import tree_pids
from .compat import check_compat
from .cuda.driver import format_api_version
from .cuda_steps import CudaSteps, FreezerLike
from .discovery import CudaProcess, GpuInventory, gpu_inventory
from .errors import CheckpointError

__all__ = ["CheckpointError", "CheckpointRequest", "CriuLike", "Engine", "RestoreRequest", "StoreLike", "Summary"]

#: how long the dumped (killed) tasks may take to leave their cgroup before it is frozen again
KILL_WAIT_S = 10.0


class CriuLike(Protocol):
    def dump(self, opts: Any, on_notify: Any = None) -> Any: ...
    def restore(self, opts: Any, on_notify: Any = None) -> Any: ...


class StoreLike(Protocol):
    """The checkpoint directory: prepared private, metadata written and read back validated."""

    def prepare(self, images_dir: Path, *, force: bool) -> Path: ...
    def write_metadata(self, images_dir: Path, meta: dict[str, Any]) -> None: ...
    def read_metadata(self, images_dir: Path) -> tuple[dict[str, Any], Path]: ...


@dataclass
class CheckpointRequest:
    """What to checkpoint. ``pid``: the tree's root; ``cgroup_pids``: every pid of a container's cgroup, if known."""

    images_dir: Path
    pid: int
    leave_running: bool = False
    force: bool = False
    container_id: str = ""
    use_cgroup: bool = False
    lock_timeout_ms: int = 30_000
    criu_options: Mapping[str, Any] = field(default_factory=dict)
    extra_metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RestoreRequest:
    images_dir: Path
    gpu_map: Mapping[str, str] = field(default_factory=dict)
    criu_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Summary:
    """What happened: per-step seconds, processes, bytes. ``to_json`` is the CLI's final line."""

    action: str
    images_dir: str
    pid: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)
    cuda_processes: list[dict[str, Any]] = field(default_factory=list)
    image_bytes: int = 0
    gpu_bytes: int = 0
    frozen_before: bool = False
    leave_running: bool = False

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for n in files:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
            except OSError:
                pass
    return total


class Engine:
    """``gpucr checkpoint``/``restore``: the CUDA steps, CRIU and the checkpoint directory, in order. Thread-safe only
    per call: use one Engine per operation."""

    def __init__(self, cuda: CudaSteps, criu: CriuLike, store: StoreLike, *,
                 freezer_at: Callable[[str, int], FreezerLike | None] | None = None,
                 dump_options: Callable[..., Any] | None = None,
                 restore_options: Callable[..., Any] | None = None) -> None:
        self.cuda, self.criu, self.store = cuda, criu, store
        self.freezer_at = freezer_at or (lambda path, version: None)
        self._dump_options = dump_options
        self._restore_options = restore_options
        self._node_gpus: list[str] = []


    def checkpoint(self, req: CheckpointRequest) -> Summary:
        """Checkpoint the workload of ``req``. Raises CheckpointError (after rollback) or GpucrError (bad input)."""
        if req.pid <= 0 or not os.path.exists(f"/proc/{req.pid}"):
            raise CheckpointError(f"pid {req.pid} does not exist; give the pid of a running process (or a container)",
                                  step="input", pid=req.pid)
        self.cuda.timings.clear()
        summary = Summary("checkpoint", str(req.images_dir), pid=req.pid, leave_running=req.leave_running)
        with self.cuda.step("prepare"):
            criu_dir = self.store.prepare(req.images_dir, force=req.force)
        s = self.cuda.suspend(req.pid, use_cgroup=req.use_cgroup, lock_timeout_ms=req.lock_timeout_ms)
        cgroup, frozen, procs, inv = s.cgroup, s.frozen_before, s.procs, s.inventory
        summary.frozen_before = frozen
        summary.gpu_bytes = s.gpu_bytes
        step = "criu-dump"
        try:
            self.cuda.progress(step, f"criu dump of pid {req.pid}")
            self.cuda.phase(step, s)
            with self.cuda.step(step):
                opts = self._make_dump_options(req, criu_dir,
                                               str(cgroup.path) if (frozen and cgroup is not None) else None)
                self.criu.dump(opts, on_notify=lambda name, _pid: self.cuda.phase(f"criu-{name}", s))
        except Exception as exc:
            raise self.cuda.fail(exc, step, s.touched, cgroup, frozen) from exc

        if req.leave_running:
            self.cuda.resume(s)
        if frozen and cgroup is not None and not cgroup.frozen():
            # CRIU thaws the freezer to let the dumped tasks die (no leave-running): once they are gone, put back the
            # caller's state (freezing earlier would trap the dying tasks)
            with self.cuda.step("refreeze"):
                dumped = set(tree_pids(req.pid)) | {p.pid for p in procs} | {req.pid}
                deadline = time.monotonic() + KILL_WAIT_S
                while dumped & set(cgroup.pids()) and time.monotonic() < deadline:
                    time.sleep(0.02)
                cgroup.freeze()
        self.cuda.phase("done", s)
        summary.image_bytes = dir_bytes(criu_dir)
        summary.cuda_processes = [p.to_json() for p in procs]
        summary.timings_s = dict(self.cuda.timings)
        # sealing (manifest with checksums) is timed in the summary, not in the metadata it writes
        with self.cuda.step("seal"):
            self.store.write_metadata(req.images_dir, self._metadata(req, procs, inv, summary))
        summary.timings_s = dict(self.cuda.timings)
        return summary

    def _make_dump_options(self, req: CheckpointRequest, criu_dir: Path, freeze_cgroup: str | None) -> Any:
        kw: dict[str, Any] = dict(pid=req.pid, images_dir=criu_dir, leave_running=req.leave_running,
                                  file_locks=True, tcp_established=True, ext_unix_sk=True, link_remap=True,
                                  force_irmap=True, shell_job=True)
        if freeze_cgroup:
            kw["freeze_cgroup"] = freeze_cgroup
        kw.update(req.criu_options)
        if self._dump_options is not None:
            return self._dump_options(**kw)
        from .criu import DumpOptions
        return DumpOptions(**kw)

    def _metadata(self, req: CheckpointRequest, procs: Sequence[CudaProcess], inv: GpuInventory,
                  summary: Summary) -> dict[str, Any]:
        api = self.cuda.driver.api_version if procs else 0
        return {
            "gpucr_version": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pid": req.pid,
            "container_id": req.container_id,
            "leave_running": req.leave_running,
            "frozen_before": summary.frozen_before,
            "freezer": self._freezer_json(req.pid),
            "cuda": {
                "driver_api": api,
                "driver_api_version": format_api_version(api) if api else "",
                "driver_version": inv.driver_version,
                "gpus": inv.gpus,
                "processes": [p.to_json() for p in procs],
                "gpu_bytes": summary.gpu_bytes,
            },
            "timings_s": summary.timings_s,
            "image_bytes": summary.image_bytes,
            **req.extra_metadata,
        }

    def _freezer_json(self, pid: int) -> dict[str, Any]:
        f = self.cuda.last_freezer
        return {"path": str(f.path), "version": int(getattr(f, "version", 0))} if f is not None else {}

    # -- restore -------------------------------------------------------------------------------------------------
    def restore(self, req: RestoreRequest) -> Summary:
        """Restore a checkpoint made by :meth:`checkpoint`. Raises CheckpointError naming the step."""
        self.cuda.timings.clear()
        summary = Summary("restore", str(req.images_dir))
        with self.cuda.step("validate"):
            meta, criu_dir = self.store.read_metadata(req.images_dir)
        cuda = meta.get("cuda") or {}
        old_procs = cuda.get("processes") or []
        self._node_gpus = list((cuda.get("gpus") or {}).keys())
        summary.gpu_bytes = int(cuda.get("gpu_bytes") or 0)
        if old_procs:
            with self.cuda.step("compatibility"):
                inv, _ = gpu_inventory(self.cuda.nvml)
                diffs = check_compat(cuda, inv.gpus, self.cuda.driver.api_version, self.cuda.driver.supports_remap,
                                     req.gpu_map)
                if diffs:
                    raise CheckpointError("checkpoint is not compatible with this node: " + "; ".join(diffs),
                                          step="compatibility")
        self.cuda.check_host_memory(summary.gpu_bytes, f"restore {req.images_dir}")
        # CRIU puts the tasks back into their cgroup; if a caller keeps it frozen, the restore would freeze mid-way:
        # thaw it for the restore and the CUDA steps, and freeze it again at the end (the tree comes back paused,
        # as it was checkpointed)
        rec = meta.get("freezer") or {}
        home = self.freezer_at(rec["path"], int(rec.get("version") or 0)) if rec.get("path") else None
        home_frozen = home is not None and home.frozen()
        step = "criu-restore"
        self.cuda.progress(step, f"criu restore from {req.images_dir}")
        try:
            if home_frozen:
                with self.cuda.step("thaw"):
                    home.thaw()  # type: ignore[union-attr]
            with self.cuda.step(step), ExitStack() as stack:
                extra: dict[str, Any] = {}
                if meta.get("container"):
                    from .container import restore_options
                    extra = stack.enter_context(restore_options(meta["container"]))
                opts = self._make_restore_options(req, criu_dir, extra)
                res = self.criu.restore(opts)
        except Exception as exc:
            if home_frozen:
                home.freeze()  # type: ignore[union-attr]
            raise CheckpointError(f"criu restore failed: {exc}", step=step) from exc
        summary.pid = int(res.pid)
        try:
            self._restore_cuda(req, summary, old_procs)
        finally:
            if home_frozen:
                with self.cuda.step("refreeze"):
                    home.freeze()  # type: ignore[union-attr]
        summary.timings_s = dict(self.cuda.timings)
        return summary

    def _restore_cuda(self, req: RestoreRequest, summary: Summary, old_procs: list[dict[str, Any]]) -> Summary:
        """CUDA restore + unlock of the CRIU-restored tree rooted at ``summary.pid``."""
        procs = self.cuda.restore_after_criu(summary.pid, old_procs, req.gpu_map, self._node_gpus)
        summary.cuda_processes = [p.to_json() for p in procs]
        summary.image_bytes = dir_bytes(req.images_dir / "images")
        summary.timings_s = dict(self.cuda.timings)
        return summary

    def _make_restore_options(self, req: RestoreRequest, criu_dir: Path, extra: Mapping[str, Any]) -> Any:
        kw: dict[str, Any] = dict(images_dir=criu_dir, file_locks=True, tcp_established=True,
                                  ext_unix_sk=True, shell_job=True)
        kw.update(extra)
        kw.update(req.criu_options)
        if self._restore_options is not None:
            return self._restore_options(**kw)
        from .criu import RestoreOptions
        return RestoreOptions(**kw)

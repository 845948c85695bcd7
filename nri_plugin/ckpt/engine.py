"""Checkpoint and restore of a workload that may hold CUDA state: the order of CUDA, cgroup and CRIU steps.

Checkpoint: if a caller froze the workload's cgroup, thaw it (a frozen process blocks every CUDA call); find the CUDA
processes; check host memory; lock CUDA in all of them in parallel; checkpoint them (GPU memory to host) in parallel;
re-freeze if it was frozen; CRIU dump. With leave-running, once the tasks run again: CUDA restore and unlock (thawing
around it when the cgroup is frozen), then the cgroup goes back to the state we found.
When the node has the memory (and ``mem_base`` is given), CRIU dumps into a private tmpfs (:mod:`.memstage`) and
the images are copied to the checkpoint dir at disk rate, hashed on the way: with leave-running after the workload
runs again (its downtime ends when its data is safe in memory), without it before CRIU's ``post-dump`` answer (the
tasks die only once the checkpoint is sealed). Either way ``gpucr checkpoint`` reports done only once it is durable.
Restore: validate the metadata and every image CRIU parses (before CRIU), check driver and GPU compatibility, CRIU
restore while the page images are hashed in the background (which also reads them ahead of CRIU; checked at CRIU's
``post-restore``, before the tasks run), CUDA restore (with the old->new GPU UUID pairs when the target GPUs differ)
and unlock.

The CUDA half (suspend, resume, rollback, restore after CRIU) is :class:`.cuda_steps.CudaSteps`, which the CRIU
front's hooks share; this module adds CRIU and the checkpoint directory for ``gpucr checkpoint``/``restore``. Any
failure rolls back (see :mod:`.cuda_steps`). The engine works against small Protocols (CRIU, checkpoint store) so its
logic is unit-tested with fakes; the CLI wires the real ones.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import GpucrError
from ..host.proc import alive, container_id, kill_tree, rss_bytes, tree_pids
from ..host.thp import ThpError
from . import memstage
from .compat import check_compat
from .criu.errors import CriuError
from .cuda.driver import format_api_version
from .cuda_steps import CudaSteps, FreezerLike, Suspended
from .discovery import CudaProcess, GpuInventory, gpu_inventory
from .errors import CheckpointError
from .layout import CRIU_DUMP, FileEntry, GpuProcess, ImageCopier, LayoutError, Metadata, dump_record
from .versions import node_version_problems

__all__ = ["CheckpointError", "CheckpointRequest", "CriuLike", "Engine", "RestoreRequest", "StoreLike", "Summary"]

#: how long the dumped (killed) tasks may take to leave their cgroup before it is frozen again
KILL_WAIT_S = 10.0
#: free disk space asked beyond the memory to dump: a tenth more, plus this much
DISK_MARGIN_FRACTION = 0.1
DISK_MARGIN_BYTES = 32 << 20
#: CRIU's notification once every image is written, before it kills (or resumes) the tasks (criu.rpc.Notify)
POST_DUMP = "post-dump"
#: CRIU options of every dump (a request's criu_options override them); recorded in gpucr.json (``criu_dump``)
_DUMP_DEFAULTS: dict[str, Any] = dict(file_locks=True, tcp_established=True, ext_unix_sk=True, link_remap=True,
                                      force_irmap=True, shell_job=True)

log = logging.getLogger(__name__)

#: what to do about a failed step of ``gpucr checkpoint``
_FIX = {
    "discover": "a CUDA process did not answer; make sure no other checkpoint of it runs, then retry",
    "host-memory": "free host memory (or add swap) for the GPU data, then retry",
    "cuda-lock": "the GPU work did not drain in time: retry, or raise --lock-timeout-ms",
    "cuda-checkpoint": "copying GPU memory to host failed: check host memory and the driver log, then retry",
    "cuda-restore": "copying GPU memory back failed: check the driver log (dmesg), then retry",
    "cuda-unlock": "the driver refused to unlock: check the driver log (dmesg), then retry",
    "get-state": "the driver did not report the process state: check the driver, then retry",
    "thaw": "the cgroup could not be thawed: check its freezer (an ancestor frozen?), then retry",
    "refreeze": "the cgroup could not be frozen again: check for tasks in D state, then retry",
    "criu-dump": "see CRIU's error above (-vv prints its log; dmesg when criu was killed), then retry",
    "sync": "the images could not be written to disk: check the filesystem (dmesg), then retry",
    "disk-space": "free space on the filesystem of --to, or choose --to on a larger filesystem, then retry",
    "seal": "the checkpoint could not be sealed: check the filesystem (dmesg, free space), then retry",
    "write-images": "the images could not be written to disk: check the filesystem (dmesg, free space), then retry",
}


def _no_space(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception chain (our own writes, or CRIU's errno)."""
    while exc is not None:
        if getattr(exc, "errno", None) == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class CriuLike(Protocol):
    def version(self) -> tuple[int, int, int]: ...
    def dump(self, opts: Any, on_notify: Any = None) -> Any: ...
    def restore(self, opts: Any, on_notify: Any = None) -> Any: ...


class StoreLike(Protocol):
    """The checkpoint directory: prepared private, metadata written and read back validated."""

    def prepare(self, images_dir: Path, *, force: bool) -> Path: ...
    def check_space(self, path: Path, need_bytes: int, what: str) -> None: ...
    def sync(self, images_dir: Path) -> int: ...
    def copier(self, images_dir: Path, src: Path) -> ImageCopier: ...
    def write_metadata(self, images_dir: Path, meta: Metadata, known: dict[str, FileEntry] | None = None) -> None: ...
    def committed(self, images_dir: Path) -> bool: ...
    def discard(self, images_dir: Path) -> None: ...
    def settle(self, images_dir: Path) -> None: ...
    def images_of(self, images_dir: Path) -> Path: ...
    def no_space(self, images_dir: Path) -> bool: ...
    def read_metadata(self, images_dir: Path) -> tuple[Metadata, Path]: ...
    def finish_verify(self, images_dir: Path) -> None: ...
    def drop_verify(self, images_dir: Path) -> None: ...


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
    #: how the driver copied GPU memory: THP mode that ran, the node's own, CustomStorage (:meth:`CudaSteps.driver_stage`)
    driver_stage: dict[str, Any] = field(default_factory=dict)
    #: with leave-running: seconds from the CUDA lock until the workload ran again
    downtime_s: float = 0.0
    #: where CRIU dumped: "memory" (a tmpfs, then copied to disk) or "disk (why not memory)"
    dump_to: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def disk_need(host_bytes: int, gpu_bytes: int) -> int:
    """Bytes a checkpoint's images may take: the tree's resident memory plus its GPU data, with
    :data:`DISK_MARGIN_FRACTION` and :data:`DISK_MARGIN_BYTES` on top (page-map and file images, logs)."""
    raw = host_bytes + gpu_bytes
    return int(raw * (1 + DISK_MARGIN_FRACTION)) + DISK_MARGIN_BYTES


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _copy_logs(src: Path, dst: Path) -> None:
    """CRIU's log and stats of a dump made in memory (written after ``post-dump``) into the checkpoint's images."""
    import shutil

    for name in ("dump.log", "stats-dump"):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


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
                 restore_options: Callable[..., Any] | None = None, mem_base: Path | None = None,
                 criu_binary: str | None = None, allow_older_kernel: bool = False) -> None:
        self.cuda, self.criu, self.store = cuda, criu, store
        #: the binary ``criu`` runs: a restore compares its version and this kernel with the checkpoint's first
        #: (:mod:`.versions`; None: not compared); ``allow_older_kernel``: the node config's restore_allow_older_kernel
        self.criu_binary, self.allow_older_kernel = criu_binary, allow_older_kernel
        #: where the memory stage of a dump is mounted (None: CRIU dumps straight to disk)
        self.mem_base = mem_base
        self.freezer_at = freezer_at or (lambda path, version: None)
        self._dump_options = dump_options
        self._restore_options = restore_options
        self._node_gpus: list[str] = []


    def checkpoint(self, req: CheckpointRequest) -> Summary:
        """Checkpoint the workload of ``req``. Raises CheckpointError (after rollback, one line naming the workload,
        the step and the fix; no valid checkpoint left) or GpucrError (bad input)."""
        if req.pid <= 0 or not os.path.exists(f"/proc/{req.pid}"):
            raise CheckpointError(f"pid {req.pid} does not exist; give the pid of a running process (or a container)",
                                  step="input", pid=req.pid)
        self.cuda.timings.clear()
        summary = Summary("checkpoint", str(req.images_dir), pid=req.pid, leave_running=req.leave_running)
        host_bytes = sum(rss_bytes(p) for p in tree_pids(req.pid))
        with self.cuda.step("disk-space"):  # before anything is created or locked
            self.store.check_space(req.images_dir, disk_need(host_bytes, 0),
                                   f"the checkpoint of pid {req.pid} ({_gib(host_bytes)} host memory + margin)")
        with self.cuda.step("prepare"):
            criu_dir = self.store.prepare(req.images_dir, force=req.force)
        summary.downtime_s = -time.monotonic()  # completed once the workload runs again
        try:
            s = self.cuda.suspend(req.pid, use_cgroup=req.use_cgroup, lock_timeout_ms=req.lock_timeout_ms)
        except CheckpointError as exc:  # already rolled back by the CUDA steps
            raise self._failed(req, exc, exc.step, None) from exc
        except BaseException:
            self.store.discard(req.images_dir)
            raise
        summary.frozen_before = s.frozen_before
        summary.gpu_bytes = s.gpu_bytes
        return self._dump_and_seal(req, summary, s, criu_dir, host_bytes)

    def _dump_and_seal(self, req: CheckpointRequest, summary: Summary, s: Suspended, criu_dir: Path,
                       host_bytes: int) -> Summary:
        """CRIU dump, images durable at ``post-dump``, then the checkpoint sealed (metadata, atomic rename). Without
        leave-running the seal happens at ``post-dump`` too: CRIU kills the tasks only after our answer, so the
        workload is never gone before its checkpoint is valid and durable (and a gpucr that dies there makes CRIU's
        dump fail, which resumes the tasks). With leave-running it happens after the tasks run again. With a memory
        stage CRIU dumps into it and "durable" means copied to the checkpoint dir (:meth:`_fill`)."""
        stage = self._open_stage(req, summary, s, host_bytes)
        copier = None
        try:
            if stage is not None:  # copies CRIU's page images out while CRIU still writes them
                copier = self.store.copier(req.images_dir, stage.images).follow()
            return self._dump_staged(req, summary, s, criu_dir, host_bytes, stage, copier)
        finally:
            if copier is not None:
                copier.cancel()
            if stage is not None:
                stage.close()

    def _open_stage(self, req: CheckpointRequest, summary: Summary, s: Suspended,
                    host_bytes: int) -> memstage.MemStage | None:
        """The memory stage for this dump, when the node can hold the images (the GPU data is in host memory now,
        so what is available already accounts for it); None, and the reason in the summary, otherwise."""
        if self.mem_base is None:
            summary.dump_to = "disk"
            return None
        stage, why = memstage.open_stage(self.mem_base, host_bytes + s.gpu_bytes, self.cuda.mem_available())
        summary.dump_to = "memory" if stage is not None else f"disk ({why})"
        if stage is None:
            self.cuda.progress("criu-dump", f"dumping pid {req.pid} straight to disk: {why}")
        return stage

    def _fill(self, req: CheckpointRequest, copier: ImageCopier) -> dict[str, FileEntry]:
        """Finish copying the dump from the memory stage into the checkpoint dir (hashed and fdatasynced on the
        way; what CRIU had finished is copied already)."""
        self.cuda.progress("write-images", f"writing the images of pid {req.pid} to disk")
        with self.cuda.step("write-images"):
            known = copier.finish()
        with self.cuda.step("sync"):
            self.store.sync(req.images_dir)  # the dirs (the files are fdatasynced already)
        return known

    def _dump_staged(self, req: CheckpointRequest, summary: Summary, s: Suspended, criu_dir: Path, host_bytes: int,
                     stage: memstage.MemStage | None, copier: ImageCopier | None) -> Summary:
        cgroup, frozen, procs = s.cgroup, s.frozen_before, s.procs
        step = "disk-space"
        own_step: list[str] = []  # the step of ours that failed inside CRIU's notify callback
        known: dict[str, FileEntry] = {}

        def on_notify(name: str, _pid: int) -> None:
            self.cuda.phase(f"criu-{name}", s)
            if name != POST_DUMP:
                return
            if copier is not None:
                if not req.leave_running:  # the tasks die after our answer: durable and sealed first
                    own_step[:] = ["write-images"]
                    known.update(self._fill(req, copier))
                    own_step[:] = ["seal"]
                    self._seal(req, summary, s, known)
                own_step.clear()
                return
            own_step[:] = ["sync"]
            self.cuda.progress("sync", f"writing the images of pid {req.pid} to disk")
            with self.cuda.step("sync"):
                self.store.sync(req.images_dir)
            if not req.leave_running:
                own_step[:] = ["seal"]
                self._seal(req, summary, s)
            own_step.clear()

        try:
            if s.gpu_bytes:  # the GPU data is host memory now, and goes into the images too
                # the filesystem of req.images_dir (or its nearest parent): the staged dir is its sibling, on it too
                self.store.check_space(req.images_dir, disk_need(host_bytes, s.gpu_bytes),
                                       f"the checkpoint of pid {req.pid} ({_gib(host_bytes)} host memory + "
                                       f"{_gib(s.gpu_bytes)} GPU data + margin)")
            step = "criu-dump"
            self.cuda.progress(step, f"criu dump of pid {req.pid}" + (" into memory" if stage else ""))
            self.cuda.phase(step, s)
            with self.cuda.step(step):
                opts = self._make_dump_options(req, stage.images if stage is not None else criu_dir,
                                               str(cgroup.path) if (frozen and cgroup is not None) else None)
                self.criu.dump(opts, on_notify)
        except BaseException as exc:
            if isinstance(exc, Exception):
                raise self._failed(req, exc, own_step[0] if own_step else step, s) from exc
            self.store.discard(req.images_dir)
            raise

        if req.leave_running:
            try:
                self.cuda.resume(s)
            except CheckpointError as exc:  # rolled back by the CUDA steps
                raise self._failed(req, exc, exc.step, None) from exc
            summary.downtime_s = round(summary.downtime_s + time.monotonic(), 3)
        else:
            summary.downtime_s = 0.0
        if frozen and cgroup is not None and not cgroup.frozen():
            # CRIU thaws the freezer to let the dumped tasks die (no leave-running): once they are gone, put back the
            # caller's state (freezing earlier would trap the dying tasks)
            with self.cuda.step("refreeze"):
                dumped = set(tree_pids(req.pid)) | {p.pid for p in procs} | {req.pid}
                deadline = time.monotonic() + KILL_WAIT_S
                while dumped & set(cgroup.pids()) and time.monotonic() < deadline:
                    time.sleep(0.02)
                cgroup.freeze()
        self.cuda.phase("done", s)  # the CUDA processes run again (or are gone): the lease ends
        if self.store.committed(req.images_dir):
            try:  # CRIU's log and stats, written after post-dump: not part of the sealed checkpoint
                if stage is not None:
                    _copy_logs(stage.images, self.store.images_of(req.images_dir))
                with self.cuda.step("sync"):
                    self.store.sync(req.images_dir)
            except (GpucrError, OSError) as exc:
                log.warning("%s", exc)
        else:
            step = "seal"
            try:
                if copier is not None:
                    step = "write-images"
                    known.update(self._fill(req, copier))
                    step = "seal"
                self._seal(req, summary, s, known)
            except Exception as exc:  # the tasks run again (leave-running): nothing to roll back
                raise self._failed(req, exc, step, None) from exc
        self.store.settle(req.images_dir)
        summary.image_bytes = dir_bytes(self.store.images_of(req.images_dir))
        summary.timings_s = dict(self.cuda.timings)
        summary.driver_stage = dict(self.cuda.stage)
        return summary

    def _seal(self, req: CheckpointRequest, summary: Summary, s: Suspended,
              known: dict[str, FileEntry] | None = None) -> None:
        """Metadata (manifest with checksums) written last, everything fsynced, renamed into place: the checkpoint
        becomes valid here and only here. Sealing is timed in the summary, not in the metadata it writes."""
        summary.image_bytes = dir_bytes(self.store.images_of(req.images_dir))
        summary.cuda_processes = [p.to_json() for p in s.procs]
        summary.timings_s = dict(self.cuda.timings)
        summary.driver_stage = dict(self.cuda.stage)
        with self.cuda.step("seal"):
            self.store.write_metadata(req.images_dir, self._metadata(req, s.procs, s.inventory, summary), known)

    def _failed(self, req: CheckpointRequest, exc: Exception, step: str, s: Suspended | None) -> CheckpointError:
        """Turn a failure into the one error the caller sees: the workload, the step, the cause, what was undone
        and the fix. Rolls back the CUDA steps when ``s`` is given (not yet rolled back) and drops the unfinished
        checkpoint (one committed at ``post-dump`` stays only when the dumped tasks are gone)."""
        full = _no_space(exc) or self.store.no_space(req.images_dir)
        # sealed at post-dump and the tasks gone (CRIU killed them, then failed): that checkpoint is all that is left
        # of the workload, keep it; while the workload runs, no checkpoint of a failed dump stays valid
        sealed = self.store.committed(req.images_dir) and not alive(req.pid)
        if sealed:
            self.store.settle(req.images_dir)
        else:
            self.store.discard(req.images_dir)
        undone = ""
        problems: list[str] = list(getattr(exc, "rollback_problems", []))
        if s is not None:
            rolled = self.cuda.fail(exc, step, s.touched, s.cgroup, s.frozen_before)
            undone = str(rolled).splitlines()[-1]
            problems = rolled.rollback_problems
        elif isinstance(exc, CheckpointError) and len(str(exc).splitlines()) > 1:
            undone = str(exc).splitlines()[-1]
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.debug("checkpoint of pid %d failed at %s: %s", req.pid, step, exc)
        who = f"container {req.container_id[:13]} (pid {req.pid})" if req.container_id else f"pid {req.pid}"
        if full:
            cause = f"no space left on the filesystem of {req.images_dir} ({cause})"
            fix = (f"the filesystem of {req.images_dir} is full: free space there or choose --to on a larger "
                   "filesystem, then retry")
        else:
            fix = _FIX.get(step, "fix the cause above, then retry (-vv shows CRIU's log)")
        kept = (f"the dumped tasks are gone, but the checkpoint in {req.images_dir} was complete and durable before "
                "(sealed at post-dump): restore it" if sealed else f"no new checkpoint in {req.images_dir}")
        msg = f"checkpoint of {who} failed at step {step}: {cause}" + (f"; {undone}" if undone else "") + \
            f"; {kept}; fix: {fix}"
        err = CheckpointError(msg, step=step, pid=getattr(exc, "pid", None) or req.pid)
        err.rollback_problems = problems  # the lease stays for the sweep when the rollback left something undone
        return err

    def _make_dump_options(self, req: CheckpointRequest, criu_dir: Path, freeze_cgroup: str | None) -> Any:
        kw: dict[str, Any] = dict(pid=req.pid, images_dir=criu_dir, leave_running=req.leave_running,
                                  **_DUMP_DEFAULTS)
        if freeze_cgroup:
            kw["freeze_cgroup"] = freeze_cgroup
        kw.update(req.criu_options)
        if self._dump_options is not None:
            return self._dump_options(**kw)
        from .criu import DumpOptions
        return DumpOptions(**kw)

    def _metadata(self, req: CheckpointRequest, procs: Sequence[CudaProcess], inv: GpuInventory,
                  summary: Summary) -> Metadata:
        api = self.cuda.driver.api_version if procs else 0
        extra = dict(req.extra_metadata)
        container = extra.pop("container", None) or {}
        # what a restore must be given again (runc restore's flags for a container: handlers/runc_restore.py)
        extra[CRIU_DUMP] = dump_record({**_DUMP_DEFAULTS, **req.criu_options})
        return Metadata(
            root_pid=req.pid, container_id=req.container_id or None, driver_version=inv.driver_version or None,
            processes=[GpuProcess(p.pid, list(p.gpus), [inv.gpus.get(u, "") for u in p.gpus], sum(p.gpus.values()))
                       for p in procs],
            timings=dict(summary.timings_s), sizes={"image_bytes": summary.image_bytes},
            leave_running=req.leave_running, frozen_before=summary.frozen_before, freezer=self._freezer_json(req.pid),
            cuda={
                "driver_api": api,
                "driver_api_version": format_api_version(api) if api else "",
                "driver_version": inv.driver_version,
                "gpus": inv.gpus,
                "processes": [p.to_json() for p in procs],
                "gpu_bytes": summary.gpu_bytes,
            },
            container=container, driver_stage=dict(summary.driver_stage), criu_version=self._criu_version(),
            kernel_release=os.uname().release, extra=extra)

    def _criu_version(self) -> str | None:
        """The dumping CRIU's version, from its VERSION answer (asked before the dump, cached by the client)."""
        try:
            v = self.criu.version()
        except CriuError as exc:  # cannot happen after a dump; recorded as unknown rather than failing the seal
            log.warning("CRIU's version is unknown (%s): not recorded in the checkpoint", exc)
            return None
        if not isinstance(v, tuple) or len(v) < 2:
            return None
        return ".".join(map(str, v[:2] if len(v) > 2 and v[2] == 0 else v))  # as criu --version prints it

    def _version_problems(self, req: RestoreRequest, meta: Metadata) -> list[str]:
        """The checkpoint's CRIU and kernel against the CRIU this engine runs and this kernel (the check the NRI
        restore makes at CreateContainer)."""
        if self.criu_binary is None:
            return []
        try:
            return node_version_problems(criu_then=meta.criu_version, kernel_then=meta.kernel_release,
                                         criu=self.criu_binary, allow_older_kernel=self.allow_older_kernel)
        except CriuError as exc:
            raise CheckpointError(f"checkpoint {req.images_dir}: {exc}", step="compatibility") from exc

    def _freezer_json(self, pid: int) -> dict[str, Any]:
        f = self.cuda.last_freezer
        return {"path": str(f.path), "version": int(getattr(f, "version", 0))} if f is not None else {}

    # -- restore -------------------------------------------------------------------------------------------------
    def restore(self, req: RestoreRequest) -> Summary:
        """Restore a checkpoint made by :meth:`checkpoint`. Raises CheckpointError naming the step."""
        self.cuda.timings.clear()
        summary = Summary("restore", str(req.images_dir))
        try:
            with self.cuda.step("validate"):
                meta, criu_dir = self.store.read_metadata(req.images_dir)
            return self._restore_checked(req, summary, meta, criu_dir)
        finally:
            self.store.drop_verify(req.images_dir)

    def _restore_checked(self, req: RestoreRequest, summary: Summary, meta: Metadata, criu_dir: Path) -> Summary:
        cuda = meta.cuda
        old_procs = cuda.get("processes") or []
        self._node_gpus = list((cuda.get("gpus") or {}).keys())
        summary.gpu_bytes = int(cuda.get("gpu_bytes") or 0)
        with self.cuda.step("compatibility"):  # CRIU and kernel first: before CRIU runs or the driver is asked
            diffs = self._version_problems(req, meta)
            if old_procs and not diffs:
                inv, _ = gpu_inventory(self.cuda.nvml)
                diffs = check_compat(cuda, inv.gpus, self.cuda.driver.api_version, self.cuda.driver.supports_remap,
                                     req.gpu_map)
            if diffs:
                raise CheckpointError(f"checkpoint {req.images_dir} is not compatible with this node (step "
                                      f"compatibility): {'; '.join(diffs)}", step="compatibility")
        self.cuda.check_host_memory(summary.gpu_bytes, f"restore {req.images_dir}")
        # CRIU puts the tasks back into their cgroup; if a caller keeps it frozen, the restore would freeze mid-way:
        # thaw it for the restore and the CUDA steps, and freeze it again at the end (the tree comes back paused,
        # as it was checkpointed)
        home = self._home_freezer(meta)
        home_frozen = home is not None and home.frozen()
        step = "criu-restore"
        bad_pages: list[LayoutError] = []
        checked: list[bool] = []

        def on_notify(name: str, _pid: int) -> None:
            if name == "post-restore":  # the tasks are restored but not yet running: their pages must be intact
                checked.append(True)
                self._verify_pages(req, bad_pages)

        self.cuda.progress(step, f"criu restore from {req.images_dir}")
        try:
            if home_frozen:
                with self.cuda.step("thaw"):
                    home.thaw()  # type: ignore[union-attr]
            with self.cuda.step(step), ExitStack() as stack:
                extra: dict[str, Any] = {}
                if meta.container:
                    from .container import restore_options
                    extra = stack.enter_context(restore_options(meta.container, criu_dir))
                opts = self._make_restore_options(req, criu_dir, extra)
                if self.cuda.thp is not None:  # driver_thp: CRIU's page restore faults in on huge pages too
                    stack.enter_context(self._thp_boost())
                res = self.criu.restore(opts, on_notify)
        except Exception as exc:
            if home_frozen:
                home.freeze()  # type: ignore[union-attr]
            if bad_pages:
                raise CheckpointError(f"{bad_pages[0]}; CRIU removed the restored tasks before they ran",
                                      step="validate") from exc
            raise CheckpointError(f"criu restore failed: {exc}", step=step) from exc
        summary.pid = int(res.pid)
        try:
            if not checked:  # CRIU sent no post-restore: check now, and never leave unchecked tasks running
                self._verify_pages(req, bad_pages)
        except LayoutError as exc:
            kill_tree(summary.pid)
            if home_frozen:
                home.freeze()  # type: ignore[union-attr]
            raise CheckpointError(f"{exc}; the restored tasks were killed", step="validate") from exc
        try:
            self._restore_cuda(req, summary, old_procs)
        finally:
            if home_frozen:
                with self.cuda.step("refreeze"):
                    home.freeze()  # type: ignore[union-attr]
        summary.timings_s = dict(self.cuda.timings)
        summary.driver_stage = dict(self.cuda.stage)
        return summary

    @contextmanager
    def _thp_boost(self) -> Iterator[None]:
        """THP ``always`` while CRIU restores the pages (the node's ``driver_thp``): CRIU's single thread is bound by
        the restored tasks' page faults (gpu-device.md: 34 GiB from a huge tmpfs 10.1 s with ``always``, 17.4 s with
        ``madvise``). A boost that cannot be taken is a warning; the restore runs in the node's mode."""
        assert self.cuda.thp is not None
        try:
            held = self.cuda.thp.acquire()
        except ThpError as exc:
            log.warning("CRIU restore without huge pages: %s", exc)
            yield
            return
        try:
            yield
        finally:
            try:
                self.cuda.thp.release(held)
            except ThpError as exc:  # the next sweep (or gpucr recover) retries: the holder file stays
                log.error("%s", exc)

    def _verify_pages(self, req: RestoreRequest, bad: list[LayoutError]) -> None:
        """Wait for the background sha256 check of the page images (recording a failure in ``bad``)."""
        with self.cuda.step("verify-pages"):
            try:
                self.store.finish_verify(req.images_dir)
            except LayoutError as exc:
                bad.append(exc)
                raise

    def _home_freezer(self, meta: Metadata) -> FreezerLike | None:
        """The cgroup the workload was checkpointed in, which restore thaws around CRIU and freezes again when a
        caller keeps it frozen. ``gpucr.json`` is data, so only a plain path inside a mounted hierarchy is taken
        (:func:`nri_plugin.host.cgroup.freezer_at`), and for a container only a cgroup that is the container's own
        (:func:`nri_plugin.host.proc.container_id`); anything else is ignored (the restore then just runs)."""
        rec = meta.freezer
        path = rec.get("path") if isinstance(rec, Mapping) else None
        if not isinstance(path, str) or not path:
            return None
        cid = meta.container_id or ""
        if cid and container_id(path) != cid:
            return None
        version = rec.get("version")
        return self.freezer_at(path, version) if isinstance(version, int) else None

    def _restore_cuda(self, req: RestoreRequest, summary: Summary, old_procs: list[dict[str, Any]]) -> Summary:
        """CUDA restore + unlock of the CRIU-restored tree rooted at ``summary.pid``."""
        procs = self.cuda.restore_after_criu(summary.pid, old_procs, req.gpu_map, self._node_gpus)
        summary.cuda_processes = [p.to_json() for p in procs]
        summary.image_bytes = dir_bytes(req.images_dir / "images")
        summary.timings_s = dict(self.cuda.timings)
        summary.driver_stage = dict(self.cuda.stage)
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

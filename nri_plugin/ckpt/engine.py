"""Checkpoint and restore of a workload that may hold CUDA state: the order of CUDA, cgroup and CRIU steps.

Checkpoint: if a caller froze the workload's cgroup, thaw it (a frozen process blocks every CUDA call); find the CUDA
processes; check host memory; lock CUDA in all of them in parallel; checkpoint them (GPU memory to host) in parallel;
re-freeze if it was frozen; CRIU dump. With leave-running, once the tasks run again: CUDA restore and unlock (thawing
around it when the cgroup is frozen), then the cgroup goes back to the state we found.
Restore: validate the metadata (before CRIU), check driver and GPU compatibility, CRIU restore, CUDA restore (with
the old->new GPU UUID pairs when the target GPUs differ) and unlock.

Any failure rolls back: every process that was locked or checkpointed is restored and unlocked (after waiting for a
call our watchdog gave up on), the cgroup returns to its original freezer state, and the error names the step, the
pid and the fix. The engine works against small Protocols (CUDA driver, CRIU, cgroups, checkpoint store) so its
logic is unit-tested with fakes; the CLI wires the real ones.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import __version__
from ..errors import GpucrError
from ..host.proc import rss_bytes
from .cuda.driver import CudaError, Driver, ProcessState, format_api_version
from .cuda.nvml import Nvml
from .discovery import CudaProcess, GpuInventory, discover, gpu_inventory, tree_pids

__all__ = ["CgroupsLike", "CheckpointError", "FreezerLike", "CheckpointRequest", "CriuLike", "Engine", "Progress",
           "RestoreRequest", "StoreLike", "Summary", "Suspended"]

log = logging.getLogger(__name__)

#: how long rollback waits for a driver call the watchdog gave up on, once the process is thawed
ROLLBACK_WAIT_S = 30.0
#: checkpoint/restore deadline: a floor plus time at a pessimistic 0.5 GiB/s (measured 1.6-5 GiB/s on an H200)
COPY_FLOOR_S = 60.0
COPY_RATE_BPS = 0.5 * (1 << 30)
#: how long the dumped (killed) tasks may take to leave their cgroup before it is frozen again
KILL_WAIT_S = 10.0
#: host memory kept free beyond the GPU data, for CRIU and the rest of the node
HOST_MEMORY_MARGIN_BYTES = 512 << 20


class CheckpointError(GpucrError):
    """A checkpoint or restore step failed; ``step`` and ``pid`` say where; the workload was rolled back."""

    def __init__(self, message: str, *, step: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.step, self.pid = step, pid


class CriuLike(Protocol):
    def dump(self, opts: Any, on_notify: Any = None) -> Any: ...
    def restore(self, opts: Any, on_notify: Any = None) -> Any: ...


class FreezerLike(Protocol):
    """The freezer of the cgroup a workload lives in (``nri_plugin.ckpt.cgroup.Freezer``)."""

    path: Path

    def frozen(self) -> bool: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def pids(self) -> list[int]: ...


#: pid -> the freezer of its cgroup, or None when it sits in a root cgroup that nobody can freeze
CgroupsLike = Callable[[int], "FreezerLike | None"]


class StoreLike(Protocol):
    """The checkpoint directory: prepared private, metadata written and read back validated."""

    def prepare(self, images_dir: Path, *, force: bool) -> Path: ...
    def write_metadata(self, images_dir: Path, meta: dict[str, Any]) -> None: ...
    def read_metadata(self, images_dir: Path) -> tuple[dict[str, Any], Path]: ...
    def host_memory_available(self) -> int: ...


#: progress(step, message) for long steps; the CLI prints it as one refreshed line
Progress = Callable[[str, str], None]


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


@dataclass
class Suspended:
    """What :meth:`Engine.suspend` did to a workload, for :meth:`Engine.resume` or :meth:`Engine.rollback`."""

    pid: int
    cgroup: FreezerLike | None
    frozen_before: bool
    procs: list[CudaProcess] = field(default_factory=list)
    inventory: GpuInventory = field(default_factory=GpuInventory)
    #: pids a lock was attempted on (rollback looks at each)
    touched: set[int] = field(default_factory=set)

    @property
    def gpu_bytes(self) -> int:
        return sum(p.gpu_bytes for p in self.procs)


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for n in files:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
            except OSError:
                pass
    return total


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


class Engine:
    """Orchestrates one checkpoint or restore. Thread-safe only per call: use one Engine per operation."""

    def __init__(self, driver: Driver, criu: CriuLike | None, cgroups: CgroupsLike, store: StoreLike | None, *,
                 nvml: Nvml | None = None, progress: Progress | None = None,
                 freezer_at: Callable[[str, int], FreezerLike | None] | None = None,
                 dump_options: Callable[..., Any] | None = None,
                 restore_options: Callable[..., Any] | None = None) -> None:
        self.driver, self.criu, self.cgroups, self.store, self.nvml = driver, criu, cgroups, store, nvml
        self.progress = progress or (lambda step, msg: None)
        self.freezer_at = freezer_at or (lambda path, version: None)
        self._dump_options = dump_options
        self._restore_options = restore_options
        self._timings: dict[str, float] = {}
        self._checkpoint_freezer: FreezerLike | None = None
        self._node_gpus: list[str] = []

    # -- small helpers -------------------------------------------------------------------------------------------
    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self._timings[name] = round(self._timings.get(name, 0.0) + time.monotonic() - t0, 4)

    def _parallel(self, step: str, procs: Sequence[CudaProcess], fn: Callable[[CudaProcess], None],
                  touched: set[int] | None = None) -> None:
        """Run ``fn`` for every process at once; raise the first failure (as CheckpointError) after all finish."""
        if not procs:
            return
        errors: list[tuple[int, Exception]] = []

        def one(p: CudaProcess) -> None:
            if touched is not None:
                touched.add(p.pid)
            try:
                fn(p)
            except Exception as exc:  # collected and re-raised below, with the pid
                errors.append((p.pid, exc))

        with self._step(step), ThreadPoolExecutor(max_workers=len(procs), thread_name_prefix=step) as ex:
            list(ex.map(one, procs))
        if errors:
            pid, exc = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise CheckpointError(f"{step} failed for pid {pid}: {exc}{more}", step=step, pid=pid) from exc

    def _copy_ticker(self, step: str, procs: Sequence[CudaProcess], total: int,
                     sign: int) -> Callable[[float], None]:
        """A watchdog tick that reports bytes moved (RSS growth on checkpoint, shrink on restore) and the rate."""
        start = {p.pid: rss_bytes(p.pid) for p in procs}
        last = [0.0]

        def tick(elapsed: float) -> None:
            if elapsed - last[0] < 1.0:
                return
            last[0] = elapsed
            moved = max(0, sum(sign * (rss_bytes(p) - r) for p, r in start.items()))
            rate = moved / elapsed if elapsed else 0
            of = f" of {_gib(total)}" if total else ""
            self.progress(step, f"{step}: {_gib(moved)}{of} copied, {rate / (1 << 30):.2f} GiB/s, {elapsed:.0f}s")
        return tick

    @staticmethod
    def _copy_deadline(p: CudaProcess) -> float:
        return COPY_FLOOR_S + p.gpu_bytes / COPY_RATE_BPS

    def _check_host_memory(self, need: int, what: str) -> None:
        if need <= 0:
            return
        avail = self.store.host_memory_available()
        if avail and need + HOST_MEMORY_MARGIN_BYTES > avail:
            raise CheckpointError(
                f"not enough host memory to {what}: the GPU data needs {_gib(need)} (+{_gib(HOST_MEMORY_MARGIN_BYTES)}"
                f" margin) but only {_gib(avail)} is available; free memory or add swap, then retry",
                step="host-memory")

    # -- rollback ------------------------------------------------------------------------------------------------
    def _rollback(self, touched: set[int], cgroup: FreezerLike | None, frozen_before: bool) -> list[str]:
        """Bring every touched process back to RUNNING; return problems (empty when all is well)."""
        problems: list[str] = []
        if cgroup is not None and cgroup.frozen():
            cgroup.thaw()
        for pid in sorted(touched):
            if not os.path.exists(f"/proc/{pid}"):
                continue
            if not self.driver.wait_pending(pid, ROLLBACK_WAIT_S):
                problems.append(f"pid {pid}: a CUDA call is still blocked; the process may stay locked")
                continue
            try:
                state = self.driver.get_state(pid)
                if state == ProcessState.CHECKPOINTED:
                    self.driver.restore(pid, timeout_s=COPY_FLOOR_S + 600)
                    state = ProcessState.LOCKED
                if state == ProcessState.LOCKED:
                    self.driver.unlock(pid)
            except CudaError as exc:
                problems.append(f"pid {pid}: {exc}")
        if cgroup is not None and frozen_before:
            cgroup.freeze()
        for pid in touched:
            log.info("rollback: pid %d back to %s", pid, "RUNNING" if not problems else "?")
        return problems

    def _fail(self, exc: Exception, step: str, touched: set[int], cgroup: FreezerLike | None,
              frozen_before: bool) -> CheckpointError:
        problems = self._rollback(touched, cgroup, frozen_before)
        pid = getattr(exc, "pid", None)
        base = str(exc) if isinstance(exc, CheckpointError) else f"{step} failed: {exc}"
        if problems:
            base += "\nrollback was incomplete: " + "; ".join(problems)
        else:
            base += f"\nrolled back: {len(touched)} CUDA process(es) restored and unlocked, the workload keeps running"
        return CheckpointError(base, step=getattr(exc, "step", step), pid=pid)

    # -- checkpoint ----------------------------------------------------------------------------------------------
    def suspend(self, pid: int, *, use_cgroup: bool = False, lock_timeout_ms: int = 30_000,
                what: str = "") -> Suspended:
        """Make the workload of ``pid`` safe to dump: thaw a caller-frozen cgroup (a frozen process blocks every CUDA
        call), find its CUDA processes, lock and checkpoint them all in parallel, and freeze the cgroup again if it
        was frozen. ``use_cgroup``: every process of the cgroup, else the tree of ``pid``. ``what`` names the
        workload in errors (e.g. a container).

        Raises:
            CheckpointError: naming the step and pid, after rollback (processes RUNNING, cgroup as it was).
        """
        cgroup = self.cgroups(pid)
        self._checkpoint_freezer = cgroup
        frozen = cgroup is not None and cgroup.frozen()
        s = Suspended(pid=pid, cgroup=cgroup, frozen_before=frozen)
        step = "thaw"
        try:
            if frozen:
                with self._step("thaw"):
                    cgroup.thaw()  # type: ignore[union-attr]
            step = "discover"
            with self._step("discover"):
                pids = cgroup.pids() if (use_cgroup and cgroup is not None) else tree_pids(pid)
                s.procs, s.inventory = discover(pids, self.driver, self.nvml)
            step = "host-memory"
            self._check_host_memory(s.gpu_bytes, f"checkpoint {what or f'pid {pid}'}")
            if s.procs:
                for p in s.procs:
                    if p.state != ProcessState.RUNNING:
                        raise CheckpointError(
                            f"pid {p.pid} is already {p.state.name} in CUDA (another checkpoint in progress?); "
                            f"finish or roll it back first", step="discover", pid=p.pid)
                step = "cuda-lock"
                self.progress(step, f"locking CUDA in {len(s.procs)} process(es)")
                self._parallel(step, s.procs, lambda p: self.driver.lock(p.pid, lock_timeout_ms), s.touched)
                step = "cuda-checkpoint"
                tick = self._copy_ticker(step, s.procs, s.gpu_bytes, +1)
                self._parallel(step, s.procs, lambda p: self.driver.checkpoint(
                    p.pid, self._copy_deadline(p), on_tick=tick))
            if frozen:
                step = "refreeze"
                with self._step("refreeze"):
                    cgroup.freeze()  # type: ignore[union-attr]
        except Exception as exc:
            raise self._fail(exc, step, s.touched, cgroup, frozen) from exc
        return s

    def resume(self, s: Suspended) -> None:
        """After a leave-running dump: CUDA restore + unlock of what :meth:`suspend` checkpointed, thawing around it
        when the cgroup is frozen (and freezing it again if the caller had it frozen).

        Raises:
            CheckpointError: after rollback.
        """
        if not s.procs:
            return
        try:
            self._resume_cuda(s.procs, s.cgroup, s.frozen_before, gpu_pairs={})
        except Exception as exc:
            raise self._fail(exc, "cuda-restore", s.touched, s.cgroup, s.frozen_before) from exc

    def rollback(self, s: Suspended) -> list[str]:
        """Undo :meth:`suspend` after a failed dump: every touched process back to RUNNING, the cgroup as the caller
        had it. Returns the problems left (empty when all is well)."""
        return self._rollback(s.touched, s.cgroup, s.frozen_before)

    def checkpoint(self, req: CheckpointRequest) -> Summary:
        """Checkpoint the workload of ``req``. Raises CheckpointError (after rollback) or GpucrError (bad input)."""
        if req.pid <= 0 or not os.path.exists(f"/proc/{req.pid}"):
            raise CheckpointError(f"pid {req.pid} does not exist; give the pid of a running process (or a container)",
                                  step="input", pid=req.pid)
        self._timings = {}
        summary = Summary("checkpoint", str(req.images_dir), pid=req.pid, leave_running=req.leave_running)
        with self._step("prepare"):
            assert self.store is not None, "checkpoint() needs a store"
            criu_dir = self.store.prepare(req.images_dir, force=req.force)
        s = self.suspend(req.pid, use_cgroup=req.use_cgroup, lock_timeout_ms=req.lock_timeout_ms)
        cgroup, frozen, procs, inv = s.cgroup, s.frozen_before, s.procs, s.inventory
        summary.frozen_before = frozen
        summary.gpu_bytes = s.gpu_bytes
        step = "criu-dump"
        try:
            self.progress(step, f"criu dump of pid {req.pid}")
            with self._step(step):
                assert self.criu is not None, "checkpoint() needs CRIU"
                opts = self._make_dump_options(req, criu_dir,
                                               str(cgroup.path) if (frozen and cgroup is not None) else None)
                self.criu.dump(opts)
        except Exception as exc:
            raise self._fail(exc, step, s.touched, cgroup, frozen) from exc

        if req.leave_running:
            self.resume(s)
        if frozen and cgroup is not None and not cgroup.frozen():
            # CRIU thaws the freezer to let the dumped tasks die (no leave-running): once they are gone, put back the
            # caller's state (freezing earlier would trap the dying tasks)
            with self._step("refreeze"):
                dumped = set(tree_pids(req.pid)) | {p.pid for p in procs} | {req.pid}
                deadline = time.monotonic() + KILL_WAIT_S
                while dumped & set(cgroup.pids()) and time.monotonic() < deadline:
                    time.sleep(0.02)
                cgroup.freeze()
        summary.image_bytes = dir_bytes(criu_dir)
        summary.cuda_processes = [p.to_json() for p in procs]
        summary.timings_s = dict(self._timings)
        # sealing (manifest with checksums) is timed in the summary, not in the metadata it writes
        with self._step("seal"):
            self.store.write_metadata(req.images_dir, self._metadata(req, procs, inv, summary))
        summary.timings_s = dict(self._timings)
        return summary

    def _resume_cuda(self, procs: Sequence[CudaProcess], cgroup: FreezerLike | None, frozen: bool,
                     gpu_pairs: Mapping[int, list[tuple[str, str]]]) -> None:
        """CUDA restore + unlock of running (or thawed) processes; puts a frozen cgroup back to FROZEN."""
        thawed = False
        if cgroup is not None and cgroup.frozen():
            cgroup.thaw()
            thawed = True
        try:
            total = sum(p.gpu_bytes for p in procs)
            tick = self._copy_ticker("cuda-restore", procs, total, -1)
            self._parallel("cuda-restore", procs, lambda p: self.driver.restore(
                p.pid, gpu_pairs.get(p.pid, []), self._copy_deadline(p), on_tick=tick))
            self._parallel("cuda-unlock", procs, lambda p: self.driver.unlock(p.pid))
        finally:
            if thawed and frozen and cgroup is not None:
                cgroup.freeze()

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
        api = self.driver.api_version if procs else 0
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
        f = self._checkpoint_freezer
        return {"path": str(f.path), "version": int(getattr(f, "version", 0))} if f is not None else {}

    # -- restore -------------------------------------------------------------------------------------------------
    def restore(self, req: RestoreRequest) -> Summary:
        """Restore a checkpoint made by :meth:`checkpoint`. Raises CheckpointError naming the step."""
        self._timings = {}
        summary = Summary("restore", str(req.images_dir))
        with self._step("validate"):
            meta, criu_dir = self.store.read_metadata(req.images_dir)
        cuda = meta.get("cuda") or {}
        old_procs = cuda.get("processes") or []
        self._node_gpus = list((cuda.get("gpus") or {}).keys())
        summary.gpu_bytes = int(cuda.get("gpu_bytes") or 0)
        if old_procs:
            with self._step("compatibility"):
                self._check_compat(cuda, req.gpu_map)
        self._check_host_memory(summary.gpu_bytes, f"restore {req.images_dir}")
        # CRIU puts the tasks back into their cgroup; if a caller keeps it frozen, the restore would freeze mid-way:
        # thaw it for the restore and the CUDA steps, and freeze it again at the end (the tree comes back paused,
        # as it was checkpointed)
        rec = meta.get("freezer") or {}
        home = self.freezer_at(rec["path"], int(rec.get("version") or 0)) if rec.get("path") else None
        home_frozen = home is not None and home.frozen()
        step = "criu-restore"
        self.progress(step, f"criu restore from {req.images_dir}")
        try:
            if home_frozen:
                with self._step("thaw"):
                    home.thaw()  # type: ignore[union-attr]
            with self._step(step), ExitStack() as stack:
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
                with self._step("refreeze"):
                    home.freeze()  # type: ignore[union-attr]
        summary.timings_s = dict(self._timings)
        return summary

    def _restore_cuda(self, req: RestoreRequest, summary: Summary, old_procs: list[dict[str, Any]]) -> Summary:
        """CUDA restore + unlock of the CRIU-restored tree rooted at ``summary.pid``."""
        procs = self.restore_after_criu(summary.pid, old_procs, req.gpu_map, self._node_gpus)
        summary.cuda_processes = [p.to_json() for p in procs]
        summary.image_bytes = dir_bytes(req.images_dir / "images")
        summary.timings_s = dict(self._timings)
        return summary

    def restore_after_criu(self, root: int, old_procs: Sequence[Mapping[str, Any]],
                           gpu_map: Mapping[str, str] | None = None, node_gpus: Sequence[str] = (), *,
                           may_freeze: bool = True) -> list[CudaProcess]:
        """CUDA restore (with the old->new GPU UUID pairs of ``gpu_map``) and unlock of the checkpointed CUDA
        processes of the tree CRIU restored at ``root``; ``old_procs`` are the processes recorded at checkpoint
        (``pid``, ``gpus``). A frozen cgroup is thawed around the work and frozen again, unless ``may_freeze`` is
        False (the CRIU front on RESTORE sits in the container's cgroup: freezing it would freeze the front).

        Raises:
            CheckpointError: the restored tree does not match the checkpoint, or a CUDA step failed (names the pid).
        """
        procs: list[CudaProcess] = []
        if not old_procs:
            return procs
        step = "discover"
        cgroup = self.cgroups(root) if may_freeze else None
        frozen = cgroup is not None and cgroup.frozen()
        try:
            if frozen:
                cgroup.thaw()  # type: ignore[union-attr]
            with self._step(step):
                found, _ = discover(tree_pids(root), self.driver, None)
                procs = [p for p in found if p.state == ProcessState.CHECKPOINTED]
            old_by_pid = {int(p["pid"]): p for p in old_procs}
            for p in procs:
                p.gpus = dict((old_by_pid.get(p.pid) or {}).get("gpus") or {})
            if len(procs) != len(old_procs):
                raise CheckpointError(
                    f"the restored tree of pid {root} has {len(procs)} checkpointed CUDA process(es), the "
                    f"checkpoint recorded {len(old_procs)}", step=step, pid=root)
            pairs = {p.pid: self._pairs(p, gpu_map or {}, node_gpus) for p in procs}
            self._resume_cuda(procs, cgroup, False, pairs)
        except Exception as exc:
            if frozen and cgroup is not None:
                cgroup.freeze()
            step = getattr(exc, "step", step)
            raise CheckpointError(
                f"{exc}\nthe processes were restored by CRIU (pid {root}) but their CUDA state was not; "
                f"kill them and retry the restore", step=step, pid=getattr(exc, "pid", root)) from exc
        if frozen and cgroup is not None:
            cgroup.freeze()
        return procs

    def _pairs(self, p: CudaProcess, gpu_map: Mapping[str, str], node_gpus: Sequence[str] = ()) -> list[tuple[str, str]]:
        """Old->new UUID pairs; none when nothing moves (the driver's default).

        The driver wants the pairs to cover every GPU the process could see (measured on a 2-GPU H200: a PyTorch
        process on GPU 0 alone got CUDA_ERROR_INVALID_VALUE for the single pair GPU0->GPU1), so every GPU of the
        checkpointing node is paired, unmapped ones with themselves, and the result must be one-to-one.
        """
        if not gpu_map:
            return []
        olds = list(dict.fromkeys([*p.gpus, *node_gpus, *gpu_map]))
        pairs = [(u, gpu_map.get(u, u)) for u in olds]
        news = [b for _, b in pairs]
        if len(set(news)) != len(news):
            dup = sorted({b for b in news if news.count(b) > 1})
            raise CheckpointError(
                f"--gpu-map must be one-to-one over the GPUs of the checkpointing node ({', '.join(olds)}): "
                f"{', '.join(dup)} would receive two GPUs; map the other one too (e.g. swap them)",
                step="compatibility", pid=p.pid)
        return pairs

    def _check_compat(self, cuda: Mapping[str, Any], gpu_map: Mapping[str, str]) -> None:
        """Refuse before CRIU when this node cannot take the checkpoint's GPU state; say what differs."""
        api = self.driver.api_version
        old_api = int(cuda.get("driver_api") or 0)
        diffs: list[str] = []
        if old_api and api < old_api:
            diffs.append(f"driver API {format_api_version(api)} here is older than "
                         f"{format_api_version(old_api)} at checkpoint")
        if gpu_map and not self.driver.supports_remap:
            diffs.append("--gpu-map needs driver 580 (CUDA 13.0) or newer")
        inv, _ = gpu_inventory(self.nvml)
        old_gpus: Mapping[str, str] = cuda.get("gpus") or {}
        used = {u for p in cuda.get("processes") or [] for u in (p.get("gpus") or {})}
        for u in sorted(gpu_map):
            if u not in used and u not in old_gpus:
                diffs.append(f"--gpu-map names {u}, which was not a GPU of the checkpointing node "
                             f"(it had: {sorted(set(old_gpus) | used)})")
        if inv.gpus:
            for u in sorted(used):
                target = gpu_map.get(u, u)
                if target not in inv.gpus:
                    diffs.append(f"GPU {u} used at checkpoint is not on this node (here: {sorted(inv.gpus)}); "
                                 f"map it with --gpu-map {u}=<uuid here>")
                elif old_gpus.get(u) and inv.gpus[target] != old_gpus[u]:
                    diffs.append(f"GPU chip differs: {old_gpus[u]} at checkpoint ({u}) vs {inv.gpus[target]} here "
                                 f"({target})")
        if diffs:
            raise CheckpointError("checkpoint is not compatible with this node: " + "; ".join(diffs),
                                  step="compatibility")

    def _make_restore_options(self, req: RestoreRequest, criu_dir: Path, extra: Mapping[str, Any]) -> Any:
        kw: dict[str, Any] = dict(images_dir=criu_dir, file_locks=True, tcp_established=True,
                                  ext_unix_sk=True, shell_job=True)
        kw.update(extra)
        kw.update(req.criu_options)
        if self._restore_options is not None:
            return self._restore_options(**kw)
        from .criu import RestoreOptions
        return RestoreOptions(**kw)

"""The CUDA steps of a checkpoint or restore, shared by ``gpucr checkpoint`` (:mod:`.engine`) and the CRIU front's
hooks (:mod:`nri_plugin.handlers.front_cuda`): suspend (thaw a caller-frozen cgroup, find the CUDA processes, check
host memory, lock and checkpoint them all in parallel, freeze again), resume, rollback, and the CUDA half of a
restore once CRIU has put the tree back.

Any failure rolls back: every process that was locked or checkpointed is restored and unlocked (after waiting for a
call our watchdog gave up on), the cgroup returns to its original freezer state, and the error names the step, the
pid and the fix. Works against small Protocols (CUDA driver, cgroups) so its logic is unit-tested with fakes.
Deliberately not here: CRIU and the checkpoint directory (the CLI's :class:`.engine.Engine` adds those).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..host.proc import mem_available as host_mem_available
from ..host.proc import rss_bytes, tree_pids
from ..host.thp import KNOB, Held, ThpError, ThpStage, read_mode
from .compat import gpu_pairs
from .cuda.driver import CudaError, Driver, ProcessState
from .cuda.nvml import Nvml
from .discovery import CudaProcess, GpuInventory, discover
from .errors import CheckpointError

__all__ = ["CgroupsLike", "CudaSteps", "FreezerLike", "OnPhase", "Progress", "Suspended"]

log = logging.getLogger(__name__)

#: how long rollback waits for a driver call the watchdog gave up on, once the process is thawed
ROLLBACK_WAIT_S = 30.0
#: checkpoint/restore deadline: a floor plus time at a pessimistic 0.5 GiB/s (measured 1.6-5 GiB/s on an H200)
COPY_FLOOR_S = 60.0
COPY_RATE_BPS = 0.5 * (1 << 30)
#: host memory kept free beyond the GPU data, for CRIU and the rest of the node
HOST_MEMORY_MARGIN_BYTES = 512 << 20


class FreezerLike(Protocol):
    """The freezer of the cgroup a workload lives in (``nri_plugin.host.cgroup.Freezer``)."""

    path: Path

    def frozen(self) -> bool: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def pids(self) -> list[int]: ...


#: pid -> the freezer of its cgroup, or None when it sits in a root cgroup that nobody can freeze
CgroupsLike = Callable[[int], "FreezerLike | None"]

#: progress(step, message) for long steps; the CLI prints it as one refreshed line
Progress = Callable[[str, str], None]

#: on_phase(point, suspended): called as a critical section moves on (``thaw``, ``cuda-lock``, ``after-lock``,
#: ``cuda-checkpoint``, ``checkpointed``, ``refreeze``, ``criu-dump``, ``criu-<notify>``, ``cuda-restore``,
#: ``restored``, ``cuda-unlock``, and ``done`` when the processes run again), before the step it names; the lease
#: (:mod:`.lease`) records it. Raising aborts the
#: step and rolls back, as any failure does. ``suspended`` is None for the CUDA half of a restore.
OnPhase = Callable[[str, "Suspended | None"], None]


@dataclass
class Suspended:
    """What :meth:`CudaSteps.suspend` did to a workload, for :meth:`CudaSteps.resume` or :meth:`CudaSteps.rollback`."""

    pid: int
    cgroup: FreezerLike | None
    frozen_before: bool
    procs: list[CudaProcess] = field(default_factory=list)
    inventory: GpuInventory = field(default_factory=GpuInventory)
    #: pids a lock was attempted on (rollback looks at each)
    touched: set[int] = field(default_factory=set)
    #: this section's share of the THP boost while the driver copies (the lease records it)
    thp: Held | None = None

    @property
    def gpu_bytes(self) -> int:
        return sum(p.gpu_bytes for p in self.procs)


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


class CudaSteps:
    """The CUDA half of one checkpoint or restore. Thread-safe only per call: use one object per operation.

    ``mem_available`` returns the host's available memory in bytes (the real /proc/meminfo by default; a seam for
    tests). ``timings`` collects per-step seconds for the caller's summary. ``thp``: the node's THP boost
    (:class:`~nri_plugin.host.thp.ThpStage`, when the node config's ``driver_thp`` is ``always``), taken around the
    driver's copies only; ``stage`` says what the driver stage ran with (THP mode, the node's mode, CustomStorage).
    """

    def __init__(self, driver: Driver, cgroups: CgroupsLike, *, nvml: Nvml | None = None,
                 progress: Progress | None = None, mem_available: Callable[[], int] = host_mem_available,
                 on_phase: OnPhase | None = None, thp: ThpStage | None = None) -> None:
        self.driver, self.cgroups, self.nvml = driver, cgroups, nvml
        self.thp = thp
        self.stage: dict[str, Any] = {}
        self.on_phase = on_phase
        self.progress = progress or (lambda step, msg: None)
        self.mem_available = mem_available
        self.timings: dict[str, float] = {}
        #: the freezer of the last :meth:`suspend` (the checkpoint records it)
        self.last_freezer: FreezerLike | None = None

    # -- small helpers -------------------------------------------------------------------------------------------
    def phase(self, point: str, s: Suspended | None) -> None:
        """Tell the ``on_phase`` callback (the lease) that the critical section reaches ``point``."""
        if self.on_phase is not None:
            self.on_phase(point, s)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.monotonic() - t0, 4)

    @contextmanager
    def driver_stage(self, s: Suspended | None) -> Iterator[None]:
        """Around the driver's GPU<->host copies: the THP boost when configured (given back on every exit path; the
        lease records the share, so a sweep gives it back after a crash), and :attr:`stage` filled in. A boost that
        cannot be taken is a warning, not a failure: the copy runs in the node's mode and ``stage`` says so."""
        if "custom_storage" not in self.stage:
            try:
                self.stage["custom_storage"] = bool(self.driver.custom_storage)
            except CudaError:
                self.stage["custom_storage"] = False
            if self.stage["custom_storage"]:
                log.info("the driver exports cuCheckpointOperationComplete (CustomStorage); gpucr uses the "
                         "driver's own copy")
        held: Held | None = None
        if self.thp is not None:
            try:
                held = self.thp.acquire()
            except ThpError as exc:
                log.warning("driver stage without huge pages: %s", exc)
                self.stage["thp_error"] = str(exc)
        node_mode = held.original if held is not None else read_mode(self.thp.knob if self.thp else KNOB)
        self.stage["thp"] = held.mode if held is not None else (node_mode or "unknown")
        self.stage["thp_node"] = node_mode or "unknown"
        if s is not None:
            s.thp = held
        try:
            yield
        finally:
            if held is not None and self.thp is not None:
                if s is not None:
                    s.thp = None
                try:
                    self.thp.release(held)
                except ThpError as exc:  # the next sweep (or gpucr recover) retries: the holder file stays
                    log.error("%s", exc)

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

        with self.step(step), ThreadPoolExecutor(max_workers=len(procs), thread_name_prefix=step) as ex:
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

    def check_host_memory(self, need: int, what: str) -> None:
        """Refuse (as step host-memory) when the host cannot take ``need`` bytes of GPU data plus a margin."""
        if need <= 0:
            return
        avail = self.mem_available()
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

        def one(pid: int) -> str | None:
            if not os.path.exists(f"/proc/{pid}"):
                return None
            if not self.driver.wait_pending(pid, ROLLBACK_WAIT_S):
                return f"pid {pid}: a CUDA call is still blocked; the process may stay locked"
            try:
                state = self.driver.get_state(pid)
                if state == ProcessState.CHECKPOINTED:
                    self.driver.restore(pid, timeout_s=COPY_FLOOR_S + 600)
                    state = ProcessState.LOCKED
                if state == ProcessState.LOCKED:
                    self.driver.unlock(pid)
            except CudaError as exc:
                return f"pid {pid}: {exc}"
            return None

        pids = sorted(touched)
        if pids:  # every process at once, as they were checkpointed
            with ThreadPoolExecutor(max_workers=len(pids), thread_name_prefix="rollback") as ex:
                problems += [p for p in ex.map(one, pids) if p]
        if cgroup is not None and frozen_before:
            cgroup.freeze()
        for pid in touched:
            log.info("rollback: pid %d back to %s", pid, "RUNNING" if not problems else "?")
        return problems

    def fail(self, exc: Exception, step: str, touched: set[int], cgroup: FreezerLike | None,
              frozen_before: bool) -> CheckpointError:
        problems = self._rollback(touched, cgroup, frozen_before)
        pid = getattr(exc, "pid", None)
        base = str(exc) if isinstance(exc, CheckpointError) else f"{step} failed: {exc}"
        if problems:
            base += "\nrollback was incomplete: " + "; ".join(problems)
        else:
            base += f"\nrolled back: {len(touched)} CUDA process(es) restored and unlocked, the workload keeps running"
        err = CheckpointError(base, step=getattr(exc, "step", step), pid=pid)
        err.rollback_problems = problems
        return err

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
        self.last_freezer = cgroup
        frozen = cgroup is not None and cgroup.frozen()
        s = Suspended(pid=pid, cgroup=cgroup, frozen_before=frozen)
        step = "thaw"
        try:
            if frozen:
                self.phase("thaw", s)
                with self.step("thaw"):
                    cgroup.thaw()  # type: ignore[union-attr]
            step = "discover"
            with self.step("discover"):
                pids = cgroup.pids() if (use_cgroup and cgroup is not None) else tree_pids(pid)
                s.procs, s.inventory = discover(pids, self.driver, self.nvml)
            step = "host-memory"
            self.check_host_memory(s.gpu_bytes, f"checkpoint {what or f'pid {pid}'}")
            if s.procs:
                for p in s.procs:
                    if p.state != ProcessState.RUNNING:
                        raise CheckpointError(
                            f"pid {p.pid} is already {p.state.name} in CUDA (another checkpoint in progress?); "
                            f"finish or roll it back first", step="discover", pid=p.pid)
                step = "cuda-lock"
                self.phase(step, s)
                self.progress(step, f"locking CUDA in {len(s.procs)} process(es)")
                self._parallel(step, s.procs, lambda p: self.driver.lock(p.pid, lock_timeout_ms), s.touched)
                self.phase("after-lock", s)
                step = "cuda-checkpoint"
                with self.driver_stage(s):
                    self.phase(step, s)
                    tick = self._copy_ticker(step, s.procs, s.gpu_bytes, +1)
                    self._parallel(step, s.procs, lambda p: self.driver.checkpoint(
                        p.pid, self._copy_deadline(p), on_tick=tick))
                self.phase("checkpointed", s)
            if frozen:
                step = "refreeze"
                self.phase(step, s)
                with self.step("refreeze"):
                    cgroup.freeze()  # type: ignore[union-attr]
        except Exception as exc:
            raise self.fail(exc, step, s.touched, cgroup, frozen) from exc
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
            self.resume_cuda(s.procs, s.cgroup, s.frozen_before, pairs={}, s=s)
        except Exception as exc:
            raise self.fail(exc, "cuda-restore", s.touched, s.cgroup, s.frozen_before) from exc

    def rollback(self, s: Suspended) -> list[str]:
        """Undo :meth:`suspend` after a failed dump: every touched process back to RUNNING, the cgroup as the caller
        had it. Returns the problems left (empty when all is well)."""
        return self._rollback(s.touched, s.cgroup, s.frozen_before)

    def resume_cuda(self, procs: Sequence[CudaProcess], cgroup: FreezerLike | None, frozen: bool,
                    pairs: Mapping[int, list[tuple[str, str]]], s: Suspended | None = None) -> None:
        """CUDA restore + unlock of running (or thawed) processes; puts a frozen cgroup back to FROZEN."""
        thawed = False
        try:
            with self.driver_stage(s):  # the THP boost covers the copies, not the unlock
                self.phase("cuda-restore", s)
                if cgroup is not None and cgroup.frozen():
                    cgroup.thaw()
                    thawed = True
                total = sum(p.gpu_bytes for p in procs)
                tick = self._copy_ticker("cuda-restore", procs, total, -1)
                self._parallel("cuda-restore", procs, lambda p: self.driver.restore(
                    p.pid, pairs.get(p.pid, []), self._copy_deadline(p), on_tick=tick))
            self.phase("restored", s)
            self.phase("cuda-unlock", s)
            self._parallel("cuda-unlock", procs, lambda p: self.driver.unlock(p.pid))
        finally:
            if thawed and frozen and cgroup is not None:
                cgroup.freeze()

    # -- restore -------------------------------------------------------------------------------------------------
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
            with self.step(step):
                found, _ = discover(tree_pids(root), self.driver, None)
                procs = [p for p in found if p.state == ProcessState.CHECKPOINTED]
            old_by_pid = {int(p["pid"]): p for p in old_procs}
            for p in procs:
                p.gpus = dict((old_by_pid.get(p.pid) or {}).get("gpus") or {})
            if len(procs) != len(old_procs):
                raise CheckpointError(
                    f"the restored tree of pid {root} has {len(procs)} checkpointed CUDA process(es), the "
                    f"checkpoint recorded {len(old_procs)}", step=step, pid=root)
            pairs = {p.pid: gpu_pairs(p.gpus, node_gpus, gpu_map or {}, pid=p.pid) for p in procs}
            held = Suspended(pid=root, cgroup=cgroup, frozen_before=frozen, procs=list(procs),
                             touched={p.pid for p in procs})
            self.resume_cuda(procs, cgroup, False, pairs, s=held)
        except Exception as exc:
            if frozen and cgroup is not None:
                cgroup.freeze()
            step = getattr(exc, "step", step)
            raise CheckpointError(
                f"{exc}\nthe processes were restored by CRIU (pid {root}) but their CUDA state was not; "
                f"kill them and retry the restore", step=step, pid=getattr(exc, "pid", root)) from exc
        if frozen and cgroup is not None:
            cgroup.freeze()
        self.phase("done", None)
        return procs

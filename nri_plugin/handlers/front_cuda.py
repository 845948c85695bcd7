"""gpucr's hooks for the CRIU front: the CUDA steps of a dump or restore that a runtime drives through CRIU's RPC.

The one outer-layer module that joins the front (:mod:`nri_plugin.front`, which stays free of engine imports), the
CUDA steps (:mod:`nri_plugin.ckpt.cuda_steps`, the ones ``gpucr checkpoint`` uses) and the plugin's
policy records (:mod:`nri_plugin.policy.records`). The front loads it from its configuration
(``hooks = nri_plugin.handlers.front_cuda:make``) and calls, per swrk session (criu-front.md section 5):

* ``wants`` -- cheap, /proc and state-dir only, never the driver (a frozen process would block it): a DUMP whose
  container has a gpucr record (managed), or whose processes hold CUDA state (they map the driver library or hold
  a ``/dev/nvidia*`` fd, as :func:`~nri_plugin.ckpt.discovery.cuda_candidates` checks); an unmanaged container
  holding CUDA state is protected or ignored per the node's ``unmanaged_cuda`` (``protect`` by default: containerd
  creates containers without the plugin's adjustments when the plugin is down or late). A RESTORE whose images dir
  carries gpucr's marker (:data:`MARKER`, written at dump time; containerd packs the images dir into its checkpoint,
  so ``ctr c restore`` and CRI restores bring it back).
* ``before_dump`` -- :meth:`CudaSteps.suspend` (thaw the cgroup containerd froze, lock and checkpoint every CUDA process
  in parallel, freeze again), then the marker. A failure is rolled back by the steps and becomes a HookError naming
  the container, pid, step and fix; the relay puts it in front of CRIU's error and CRIU never runs.
* ``on_notify('post-dump')`` on DUMP -- every image is written and CRIU waits for our answer before it kills (or
  resumes) the tasks: the images and their dir are fsynced (:func:`~nri_plugin.ckpt.durable.fsync_tree`), so the
  runtime never hears "done" for images still in the page cache; a failure fails the dump and CRIU resumes the tasks.
  A caller that asked for no notifications gets the same fsync in ``after_response``, before CRIU's answer.
* ``after_response`` -- DUMP success with leave-running: :meth:`CudaSteps.resume` (thaw, CUDA restore, unlock, freeze
  again, so containerd's resume finds the workload as it left it); DUMP failure: :meth:`CudaSteps.rollback`.
* ``on_notify('post-resume')`` on RESTORE -- the only point where the restored tasks run:
  :meth:`CudaSteps.restore_after_criu` with the container's GPU UUID map (its record's ``gpu-map``, identity by
  default) and unlock. The front then sits in the container's cgroups, so nothing is frozen there.

Every DUMP that locks CUDA holds a lease (:mod:`nri_plugin.ckpt.lease`) in the node's state dir from before the
first lock until the CUDA processes run again, after stale leases of earlier sessions are swept; SIGTERM or SIGINT
to the front then rolls back before it exits. The cgroup of a front's lease is the runtime's: containerd resumes the
task it paused once the dump fails, so a rollback leaves the cgroup as the runtime has it.

Configuration keys (front.conf): ``node_config`` (default ``/etc/gpucr/config.toml``: state_dir, unmanaged_cuda,
libcuda, lock_timeout_ms, driver_call_timeout_s), ``libcuda`` and ``libnvml`` (override the node's driver paths);
test-only: ``test_pause_at`` and ``test_pause_file`` (:func:`nri_plugin.ckpt.lease.pause_point`).
"""

from __future__ import annotations

import os
import time

from ..ckpt.marker import MARKER
from ..front._log import FrontLog
from ..front.errors import HookError
from ..front.messages import DUMP, RESTORE

# the front loads this module on every DUMP and RESTORE, non-CUDA ones included: only what ``wants`` needs is
# imported up front (typing, json, dataclasses and the CUDA steps cost tens of ms of start-up each, see front/_wire)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..ckpt.cuda_steps import CudaSteps, Suspended
    from ..ckpt.lease import LeaseHolder
    from ..ckpt.marker import CudaMarker
    from ..front.messages import Request
    from ..policy.config import NodeConfig
    from ..policy.records import ContainerRecord

__all__ = ["MARKER", "CudaFrontHooks", "NodeView", "Target", "make", "node_view"]

DEFAULT_LIBCUDA = "libcuda.so.1"

#: what to do about a failed step, for the error the runtime shows
_FIX = {
    "thaw": "the container's cgroup could not be thawed: check its freezer (an ancestor frozen?) and retry",
    "discover": "a CUDA process did not answer; make sure no other checkpoint of it is running, then retry",
    "host-memory": "free host memory (or add swap) for the GPU data, then retry",
    "cuda-lock": "the GPU work did not drain in time: retry, or raise the pod's gpucr.io/lock-timeout",
    "cuda-checkpoint": "copying GPU memory to host failed: check host memory and the driver log, then retry",
    "refreeze": "the cgroup could not be frozen again: check for tasks in D state, then retry",
    "marker": "gpucr could not write into CRIU's images dir: check the checkpoint location is writable",
    "compatibility": "fix the container's gpucr.io/gpu-map annotation (one-to-one over the checkpointing node's GPUs)",
    "sync": "check the filesystem of the runtime's checkpoint dir (free space, dmesg for I/O errors), then retry",
}


class NodeView:
    """The node-config values the front uses. Parsing the TOML file costs tens of ms of start-up (tomllib,
    dataclasses) on every dump, so :func:`node_view` caches these few values in the front's root-only cache dir, keyed by the
    file's path, mtime and size (as the front caches the real criu's VERSION answer)."""

    KEYS = ("state_dir", "unmanaged_cuda", "libcuda", "lock_timeout_ms", "driver_call_timeout_s", "phase_timeouts",
            "driver_thp")
    __slots__ = KEYS

    def __init__(self, state_dir: str, unmanaged_cuda: str, libcuda: str, lock_timeout_ms: int,
                 driver_call_timeout_s: float, phase_timeouts: str = "", driver_thp: str = "keep") -> None:
        self.state_dir, self.unmanaged_cuda, self.libcuda = state_dir, unmanaged_cuda, libcuda
        self.lock_timeout_ms, self.driver_call_timeout_s = lock_timeout_ms, driver_call_timeout_s
        #: the node's per-phase deadlines, "phase=seconds,..." (NodeConfig.phase_budgets without the lock's)
        self.phase_timeouts = phase_timeouts
        self.driver_thp = driver_thp

    @classmethod
    def of(cls, cfg: NodeConfig) -> NodeView:
        budgets = ",".join(f"{p}={s}" for p, s in cfg.phase_budgets().items() if p != "cuda-lock")
        return cls(str(cfg.state_dir), cfg.unmanaged_cuda, cfg.libcuda, int(cfg.lock_timeout_ms),
                   float(cfg.driver_call_timeout_s), budgets, cfg.driver_thp)

    def phase_budgets(self, lock_ms: int, asked: tuple[tuple[str, int], ...] = ()) -> dict[str, float]:
        """As :meth:`NodeConfig.phase_budgets`: the node's deadlines, a container's shorter ones, the lock's."""
        out = {p: float(s) for p, _, s in (i.partition("=") for i in self.phase_timeouts.split(",") if i)}
        out["cuda-lock"] = lock_ms / 1000 + 30.0
        for phase, secs in asked:
            if phase in out:
                out[phase] = min(out[phase], float(secs))
        return out


def node_view(path: str | None, cache_dir: str | None) -> NodeView:
    """The node configuration's values for the front, from the cache when the file did not change.

    Raises:
        ConfigError: the file is invalid, or an explicitly named one is missing (the message names it).
    """
    conf = path or "/etc/gpucr/config.toml"
    try:
        st = os.stat(conf)
        key = f"{os.path.realpath(conf)} {st.st_mtime_ns} {st.st_size}"
    except OSError:
        key = f"{conf} absent"
    from ..front.trust import read_cache, write_cache
    lines = (read_cache(cache_dir, "node-config.cache") or "").split("\n")  # FrontError: a cache root does not own
    if lines[0] == key:
        try:
            kv = dict(ln.split("\t", 1) for ln in lines[1:] if "\t" in ln)
            return NodeView(kv["state_dir"], kv["unmanaged_cuda"], kv["libcuda"], int(kv["lock_timeout_ms"]),
                            float(kv["driver_call_timeout_s"]), kv["phase_timeouts"], kv["driver_thp"])
        except (KeyError, ValueError):
            pass
    from pathlib import Path

    from ..policy.config import load_config
    view = NodeView.of(load_config(Path(path) if path else None))
    write_cache(cache_dir, "node-config.cache",
                "\n".join([key, *(f"{k}\t{getattr(view, k)}" for k in NodeView.KEYS)]) + "\n")
    return view


class Target:
    """What a DUMP request is about: the container (id from its cgroup), its record if any, and the decision."""

    __slots__ = ("pid", "container_id", "cgroup", "record", "cuda_pids", "protect", "why")

    def __init__(self, pid: int, container_id: str, cgroup: str) -> None:
        self.pid, self.container_id, self.cgroup = pid, container_id, cgroup
        self.record: ContainerRecord | None = None
        self.cuda_pids: list[int] = []
        self.protect = False
        self.why = ""

    def describe(self) -> str:
        who = self.record.describe() if self.record else f"container {self.container_id or '?'}"
        return f"{who} (pid {self.pid})"


class CudaFrontHooks:
    """:class:`~nri_plugin.front.hooks.FrontHooks` for CUDA workloads; one object per swrk session."""

    def __init__(self, values: dict[str, str], node: NodeConfig | None = None) -> None:
        self.values = values
        self.log = FrontLog(values.get("log_dir"))
        self.node = NodeView.of(node) if node is not None else node_view(values.get("node_config"),
                                                                         values.get("cache_dir"))
        self.libcuda = values.get("libcuda") or self.node.libcuda or DEFAULT_LIBCUDA
        self.libnvml = values.get("libnvml") or None
        self.target: Target | None = None
        self.suspended: Suspended | None = None
        self._criu_t0 = 0.0
        self._steps: CudaSteps | None = None
        self._restored_pid: int | None = None
        self._durable = False
        self.lease: LeaseHolder | None = None

    # -- the decision (cheap: /proc and the state dir only) -------------------------------------------------------
    def wants(self, request: Request) -> bool:
        if request.type == DUMP:
            self.target = self._dump_target(request)
            return self.target is not None and self.target.protect
        if request.type == RESTORE:
            return bool(request.images_dir) and os.path.exists(os.path.join(request.images_dir or "", MARKER))
        return False

    def _workload_pids(self, pid: int, freeze_cgroup: str | None) -> list[int]:
        from ..host.proc import cgroup_procs, tree_pids
        if freeze_cgroup:
            try:
                return cgroup_procs(freeze_cgroup)
            except OSError:
                pass
        from ..host.cgroup import CgroupError, cgroups_of
        try:
            f = cgroups_of(pid).freezer
            if not f.is_root:
                return f.pids()
        except CgroupError:
            pass
        return tree_pids(pid)

    def _load_record(self, cid: str, pid: int) -> ContainerRecord | None:
        """The plugin's record for this container, or None (with a clear log line when it is unusable)."""
        if not cid or not os.path.exists(os.path.join(self.node.state_dir, "containers", f"{cid}.json")):
            return None
        from pathlib import Path

        from ..policy.records import RecordError, RecordMissingError, load_record
        try:
            rec = load_record(Path(self.node.state_dir), cid)
        except RecordMissingError:
            return None
        except RecordError as exc:
            self.log.warning(f"DUMP of pid {pid}: ignoring the state record of container {cid}: {exc}; "
                             f"applying the node policy (unmanaged_cuda={self.node.unmanaged_cuda})")
            return None
        if rec.pid and rec.pid != pid and os.path.exists(f"/proc/{rec.pid}"):
            self.log.warning(f"DUMP of pid {pid}: the state record of container {cid} is stale (it names pid "
                             f"{rec.pid}, which is another live process); applying the node policy "
                             f"(unmanaged_cuda={self.node.unmanaged_cuda})")
            return None
        return rec

    def _dump_target(self, request: Request) -> Target | None:
        pid = request.pid
        if not pid or pid <= 0:
            return None
        from ..host.proc import cgroup_path, container_id, cuda_candidates
        cg_path = cgroup_path(pid) or request.freeze_cgroup or ""
        cid = container_id(cg_path)
        t = Target(pid, cid, cg_path)
        rec = self._load_record(cid, pid)
        if rec is not None and rec.managed:
            t.record, t.protect, t.why = rec, True, f"managed ({rec.reason})"
            return t
        t.cuda_pids = cuda_candidates(self._workload_pids(pid, request.freeze_cgroup), self.libcuda)
        if not t.cuda_pids:
            return None  # no record, no CUDA state: exactly as without gpucr
        if self.node.unmanaged_cuda == "protect":
            t.protect, t.why = True, "not managed by gpucr but holding CUDA state (unmanaged_cuda=protect)"
            self.log.warning(f"DUMP of {t.describe()}: container {cid or '?'} was not managed by gpucr (no record: "
                             f"the plugin was down, late, or it was not created through CRI) but pids "
                             f"{t.cuda_pids} hold CUDA state; making the dump GPU-safe (unmanaged_cuda=protect)")
        else:
            self.log.warning(f"DUMP of {t.describe()}: container {cid or '?'} is not managed and pids {t.cuda_pids} "
                             f"hold CUDA state; leaving it to CRIU as configured (unmanaged_cuda=ignore)")
        return t

    # -- the CUDA steps (shared with gpucr checkpoint) ------------------------------------------------------------
    def steps(self) -> CudaSteps:
        if self._steps is None:
            from ..ckpt.cuda import Driver, Nvml
            from ..ckpt.cuda_steps import CudaSteps
            from ..host.cgroup import freezer_of
            from ..host.thp import ThpStage

            thp = ThpStage(self.node.state_dir) if self.node.driver_thp == "always" else None
            self._steps = CudaSteps(Driver(self.libcuda, call_timeout_s=self.node.driver_call_timeout_s), freezer_of,
                                    nvml=Nvml(self.libnvml), thp=thp)
        return self._steps

    def _error(self, what: str, exc: Exception, fallback_step: str) -> HookError:
        step = getattr(exc, "step", "") or fallback_step
        fix = _FIX.get(step, "see the front's log and retry")
        detail = str(exc).replace("\n", "; ")
        return HookError(f"{what} failed at step {step}: {detail}; fix: {fix}")

    # -- DUMP -----------------------------------------------------------------------------------------------------
    def before_dump(self, request: Request) -> None:
        if request.type != DUMP:
            return
        t = self.target if self.target is not None and self.target.pid == request.pid else self._dump_target(request)
        self.target = t
        if t is None or not t.protect:
            return
        from ..ckpt.errors import CheckpointError
        lock_ms = int((t.record.policy.lock_timeout_ms if t.record else 0) or self.node.lock_timeout_ms)
        eng = self.steps()
        self._hold_lease(t.describe(), t.container_id, lock_ms, t.record.policy.phase_timeouts if t.record else ())
        try:
            s = eng.suspend(t.pid, use_cgroup=True, lock_timeout_ms=lock_ms, what=t.describe())
        except CheckpointError as exc:
            self._end_lease(exc.rollback_problems)
            err = self._error(f"GPU-safe dump of {t.describe()}", exc, "discover")
            self.log.error(str(err))
            raise err from exc
        if not s.procs:  # managed, but no CUDA state now: CRIU dumps it as any process, the restore needs nothing
            self._end_lease([])
            from ..host.proc import cuda_candidates
            pids = self._workload_pids(t.pid, request.freeze_cgroup)
            self.log.info(f"DUMP of {t.describe()}, {t.why}: no process holds CUDA state (pids {pids}, by /proc: "
                          f"{cuda_candidates(pids, self.libcuda)}); nothing for gpucr to do")
            return
        self.suspended = s
        self._criu_t0 = time.monotonic()  # CRIU dumps from now until after_response: the metrics' criu step
        try:
            self._write_marker(request, t, s)
        except OSError as exc:
            problems = eng.rollback(s)
            self.suspended = None
            self._end_lease(problems)
            err = HookError(f"GPU-safe dump of {t.describe()} failed at step marker: cannot write {MARKER} into "
                            f"{request.images_dir}: {exc}" + (f"; rollback incomplete: {problems}" if problems else
                                                               "; rolled back, the workload keeps running")
                            + f"; fix: {_FIX['marker']}")
            self.log.error(str(err))
            raise err from exc
        eng.phase("criu-dump", s)
        frozen = "thawed it, " if s.frozen_before else ""
        self.log.info(f"DUMP of {t.describe()}, {t.why}: {frozen}locked and checkpointed "
                      f"{len(s.procs)} CUDA process(es) {[p.pid for p in s.procs]} in parallel ({_stage(eng)})"
                      + (", froze it again" if s.frozen_before else "") + "; criu may dump now")

    def _write_marker(self, request: Request, t: Target, s: Suspended) -> None:
        if not request.images_dir:
            raise OSError("the runtime's images dir is unknown")
        from ..ckpt import marker
        gpu_map = [list(p) for p in t.record.policy.gpu_map] if t.record else []
        marker.write(request.images_dir, marker.CudaMarker(
            t.container_id, t.record is not None, t.pid, [p.to_json() for p in s.procs], s.inventory.gpus,
            s.inventory.driver_version, gpu_map))

    def _make_durable(self, request: Request, when: str) -> None:
        """fsync CRIU's images and their dir before the runtime may call the dump done. At ``post-dump`` CRIU has
        not let the tasks go yet and waits for our answer: a failure here (or a front killed here) fails the dump
        and CRIU resumes the tasks."""
        if self._durable:
            return
        import time

        from ..ckpt.durable import fsync_tree
        what = f"DUMP of {self.target.describe() if self.target else f'pid {request.pid}'}"
        if not request.images_dir:
            raise HookError(f"{what}: the runtime's images dir is unknown, so gpucr cannot make the images durable; "
                            "fix: pass images_dir_fd in the DUMP request")
        t0 = time.monotonic()
        try:
            n = fsync_tree(request.images_dir)
        except OSError as exc:
            err = HookError(f"{what} failed at step sync: the images in {request.images_dir} could not be written to "
                            f"disk ({exc.strerror or exc}); fix: {_FIX['sync']}")
            self.log.error(str(err))
            raise err from exc
        self._durable = True
        self.log.info(f"{what}: {n} image file(s) in {request.images_dir} fsynced at {when} in "
                      f"{time.monotonic() - t0:.3f} s")

    def after_response(self, request: Request, success: bool) -> None:
        if request.type == DUMP and success and not self._durable:
            # a caller that asked for no notifications: still durable before the runtime sees CRIU's success; the
            # CUDA steps below run either way (the tasks were let go already)
            try:
                self._make_durable(request, "CRIU's answer")
            except HookError as exc:
                self._after_dump(request, success)
                raise exc
        self._after_dump(request, success)

    def _after_dump(self, request: Request, success: bool) -> None:
        s, t = self.suspended, self.target
        if request.type != DUMP or s is None or t is None:
            return
        self.suspended = None
        eng = self.steps()
        self._report_dump(request, s, success)
        if not success:
            problems = eng.rollback(s)
            self._end_lease(problems)
            if problems:
                err = HookError(f"the dump of {t.describe()} failed and gpucr's rollback is incomplete: "
                                f"{'; '.join(problems)}; fix: check the processes' CUDA state (they may stay "
                                "locked) before retrying")
                self.log.error(str(err))
                raise err
            self.log.info(f"DUMP of {t.describe()} failed in CRIU: rolled back {len(s.procs)} CUDA process(es), "
                          "the workload keeps running")
            return
        if not request.leave_running:
            self._end_lease([])
            self.log.info(f"DUMP of {t.describe()} done; the dumped tasks were stopped (no leave-running)")
            return
        from ..ckpt.errors import CheckpointError
        try:
            eng.resume(s)
            self._end_lease([])
        except CheckpointError as exc:
            self._end_lease(exc.rollback_problems)
            err = self._error(f"resuming the CUDA processes of {t.describe()} after the dump", exc, "cuda-restore")
            self.log.error(str(err))
            raise err from exc
        self.log.info(f"DUMP of {t.describe()} done (leave-running): restored and unlocked {len(s.procs)} CUDA "
                      f"process(es)" + (", cgroup frozen again for the runtime's resume" if s.frozen_before else ""))

    def _report_dump(self, request: Request, s: Suspended, success: bool) -> None:
        from pathlib import Path

        from ..ckpt.engine import dir_bytes
        from .metrics import report
        timings = {**self.steps().timings, "criu": round(time.monotonic() - self._criu_t0, 4)}
        images = dir_bytes(Path(request.images_dir)) if success and request.images_dir else 0
        report(self.node.state_dir, "checkpoint", "front", success, timings, images, s.gpu_bytes)

    # -- the lease ------------------------------------------------------------------------------------------------
    def _hold_lease(self, what: str, container_id: str, lock_ms: int, asked: tuple[tuple[str, int], ...]) -> None:
        """Sweep stale leases (a killed earlier session's), then take this session's: written before the first lock
        (the CUDA steps' ``on_phase``; on RESTORE before the CUDA restore), ended when the processes run again;
        SIGTERM/SIGINT roll back and exit."""
        import signal

        from ..ckpt.lease import LeaseHolder, LeaseStore, sweep
        from ..host.cgroup import freezer_at

        store = LeaseStore(self.node.state_dir)
        for res in sweep(store, self.steps, freezer_at):
            (self.log.error if res.problems else self.log.warning)(res.line())
        budgets = self.node.phase_budgets(lock_ms, asked)
        self.lease = LeaseHolder(store, holder="criu front", container_id=container_id, what=what,
                                 budgets=budgets, cgroup_owner="runtime",
                                 pause_at=self.values.get("test_pause_at") or "",
                                 pause_file=self.values.get("test_pause_file") or "")
        self.steps().on_phase = self.lease.on_phase
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _end_lease(self, problems: list[str]) -> None:
        """The section is over: remove the lease, unless a rollback left something undone (the sweep retries it
        once this process is gone)."""
        if self.lease is not None and not problems:
            self.lease.end()

    def _on_signal(self, signum: int, _frame: object) -> None:
        import signal

        from ..ckpt.lease import roll_back
        from ..host.cgroup import freezer_at

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # one rollback, not cut short by a second signal
        name = signal.Signals(signum).name
        if self.lease is None or not self.lease.written:
            self.log.warning(f"{name}: no CUDA step in progress; exiting")
            os._exit(128 + signum)
        res = roll_back(self.lease.lease, self.steps(), freezer_at, f"the front got {name}")
        (self.log.error if res.problems else self.log.warning)(res.line())
        self._end_lease(res.problems)
        os._exit(128 + signum)

    # -- RESTORE --------------------------------------------------------------------------------------------------
    def on_notify(self, request: Request, name: str, pid: int | None) -> None:
        if request.type == DUMP:
            if self.suspended is not None:
                self.steps().phase(f"criu-{name}", self.suspended)  # the lease's pause points (test-only)
            if name == "post-dump":
                self._make_durable(request, "post-dump")
            return
        if request.type != RESTORE:
            return
        if pid and name in ("setup-namespaces", "post-restore", "post-resume"):
            self._restored_pid = pid
        if name != "post-resume":
            return
        root = self._restored_pid
        marker = self._read_marker(request)
        procs = marker.processes
        if not root:
            raise HookError(f"RESTORE from {request.images_dir}: CRIU named no restored pid; the CUDA state of "
                            f"container {marker.container_id} cannot be restored")
        from ..host.proc import cgroup_path, container_id, kill_tree
        cid = container_id(cgroup_path(root))
        gpu_map, source = self._gpu_map(cid, marker)
        from ..ckpt.errors import CheckpointError
        self._hold_lease(f"container {cid or marker.container_id} (pid {root})", cid, self.node.lock_timeout_ms, ())
        try:
            done = self.steps().restore_after_criu(root, procs, gpu_map, list(marker.gpus),
                                                    may_freeze=False)
        except CheckpointError as exc:
            from .metrics import report
            report(self.node.state_dir, "restore", "front", False, self.steps().timings)
            self._end_lease([])  # the restored tree is killed below: nothing is left to undo
            killed = kill_tree(root)  # left alive it would stay locked forever
            err = self._error(f"CUDA restore of container {cid or marker.container_id} (pid {root})", exc,
                              "cuda-restore")
            err = HookError(f"{err}; the restored processes {killed} were killed (their CUDA state is unusable); "
                            "the checkpoint is intact for another restore")
            self.log.error(str(err))
            raise err from exc
        from .metrics import report
        report(self.node.state_dir, "restore", "front", True, self.steps().timings)
        self.log.info(f"RESTORE of container {cid} (pid {root}, checkpointed as {marker.container_id}): "
                      f"restored and unlocked {len(done)} CUDA process(es) {[p.pid for p in done]}, GPU map "
                      f"{gpu_map or 'identity'} ({source}); all at once, {_stage(self.steps())}")

    def _read_marker(self, request: Request) -> CudaMarker:
        from ..ckpt import marker
        try:
            return marker.read(request.images_dir or "")
        except marker.MarkerError as exc:
            raise HookError(f"RESTORE: {exc}; the checkpoint's CUDA state cannot be restored: use an intact "
                            "checkpoint") from exc

    def _gpu_map(self, cid: str, marker: CudaMarker) -> tuple[dict[str, str], str]:
        """The restored container's GPU UUID map: its own record's gpu-map, else the one recorded at dump."""
        if cid:
            from pathlib import Path

            from ..policy.records import RecordError, load_record
            try:
                rec = load_record(Path(self.node.state_dir), cid)
                pairs = rec.policy.gpu_map
                if pairs:
                    return {str(a): str(b) for a, b in pairs}, f"record of container {cid}"
            except RecordError:
                pass
        if marker.gpu_map:
            return {str(a): str(b) for a, b in marker.gpu_map}, "recorded at checkpoint"
        return {}, "default"


def _stage(steps: CudaSteps) -> str:
    """The driver stage for a log line: which THP mode the copies ran in, and the CustomStorage probe."""
    st = steps.stage
    thp = st.get("thp", "?")
    node = st.get("thp_node", "?")
    cs = "present" if st.get("custom_storage") else "absent"
    return f"THP {thp}" + (f" (node: {node})" if node != thp else "") + f", CustomStorage {cs}"


def make(values: dict[str, str]) -> CudaFrontHooks:
    """The front's hooks factory (``hooks = nri_plugin.handlers.front_cuda:make``).

    Raises:
        ConfigError: the node configuration is unreadable or invalid (the front answers the runtime with it).
    """
    from ..errors import GpucrError
    try:
        return CudaFrontHooks(values)
    except GpucrError as exc:  # ConfigError, kept as such, named as the hooks' configuration
        raise type(exc)(f"gpucr's CRIU hooks: {exc}") from exc

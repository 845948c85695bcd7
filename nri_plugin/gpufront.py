"""gpucr's hooks for the CRIU front: the CUDA steps of a dump or restore that a runtime drives through CRIU's RPC.

The one outer-layer module that joins the front (:mod:`nri_plugin.front`, which stays free of engine imports), the
checkpoint engine (:mod:`nri_plugin.ckpt.engine`, the same engine ``gpucr checkpoint`` uses) and the plugin's
policy records (:mod:`nri_plugin.policy.records`). The front loads it from its configuration
(``hooks = nri_plugin.gpufront:make``) and calls, per swrk session (criu-front.md section 5):

* ``wants`` -- cheap, /proc and state-dir only, never the driver (a frozen process would block it): a DUMP whose
  container has a gpucr record (managed), or whose processes hold CUDA state (they map the driver library or hold
  a ``/dev/nvidia*`` fd, as :func:`~nri_plugin.ckpt.discovery.cuda_candidates` checks); an unmanaged container
  holding CUDA state is protected or ignored per the node's ``unmanaged_cuda`` (``protect`` by default: containerd
  creates containers without the plugin's adjustments when the plugin is down or late). A RESTORE whose images dir
  carries gpucr's marker (:data:`MARKER`, written at dump time; containerd packs the images dir into its checkpoint,
  so ``ctr c restore`` and CRI restores bring it back).
* ``before_dump`` -- :meth:`Engine.suspend` (thaw the cgroup containerd froze, lock and checkpoint every CUDA process
  in parallel, freeze again), then the marker. A failure is rolled back by the engine and becomes a HookError naming
  the container, pid, step and fix; the relay puts it in front of CRIU's error and CRIU never runs.
* ``after_response`` -- DUMP success with leave-running: :meth:`Engine.resume` (thaw, CUDA restore, unlock, freeze
  again, so containerd's resume finds the workload as it left it); DUMP failure: :meth:`Engine.rollback`.
* ``on_notify('post-resume')`` on RESTORE -- the only point where the restored tasks run:
  :meth:`Engine.restore_after_criu` with the container's GPU UUID map (its record's ``gpu-map``, identity by
  default) and unlock. The front then sits in the container's cgroups, so nothing is frozen there.

Configuration keys (front.conf): ``node_config`` (default ``/etc/gpucr/config.toml``: state_dir, unmanaged_cuda,
libcuda, lock_timeout_ms, driver_call_timeout_s), ``libcuda`` and ``libnvml`` (override the node's driver paths).
"""

from __future__ import annotations

import os

from .front._log import FrontLog
from .front.errors import HookError
from .front.messages import DUMP, RESTORE

# the front loads this module on every DUMP and RESTORE, non-CUDA ones included: only what ``wants`` needs is
# imported up front (typing, json, dataclasses and the engine cost tens of ms of start-up each, see front/_wire)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .ckpt.engine import Engine, Suspended
    from .front.messages import Request
    from .policy.config import NodeConfig
    from .policy.records import ContainerRecord

__all__ = ["MARKER", "GpuFrontHooks", "NodeView", "Target", "make", "node_view"]

#: gpucr's marker in CRIU's images dir: the CUDA processes and GPUs of the dump, for the restore
MARKER = "gpucr-cuda.json"
MARKER_FORMAT = 1
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
}


class NodeView:
    """The node-config values the front uses. Parsing the TOML file costs tens of ms of start-up (tomllib,
    dataclasses) on every dump, so :func:`node_view` caches these few values beside the front's log, keyed by the
    file's path, mtime and size (as the front caches the real criu's VERSION answer)."""

    KEYS = ("state_dir", "unmanaged_cuda", "libcuda", "lock_timeout_ms", "driver_call_timeout_s")
    __slots__ = KEYS

    def __init__(self, state_dir: str, unmanaged_cuda: str, libcuda: str, lock_timeout_ms: int,
                 driver_call_timeout_s: float) -> None:
        self.state_dir, self.unmanaged_cuda, self.libcuda = state_dir, unmanaged_cuda, libcuda
        self.lock_timeout_ms, self.driver_call_timeout_s = lock_timeout_ms, driver_call_timeout_s

    @classmethod
    def of(cls, cfg: NodeConfig) -> NodeView:
        return cls(str(cfg.state_dir), cfg.unmanaged_cuda, cfg.libcuda, int(cfg.lock_timeout_ms),
                   float(cfg.driver_call_timeout_s))


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
    cache = os.path.join(cache_dir, "node-config.cache") if cache_dir else None
    if cache:
        try:
            with open(cache, encoding="utf-8") as f:
                lines = f.read().split("\n")
            if lines[0] == key:
                kv = dict(ln.split("\t", 1) for ln in lines[1:] if "\t" in ln)
                return NodeView(kv["state_dir"], kv["unmanaged_cuda"], kv["libcuda"], int(kv["lock_timeout_ms"]),
                                float(kv["driver_call_timeout_s"]))
        except (OSError, KeyError, ValueError):
            pass
    from pathlib import Path

    from .policy.config import load_config
    view = NodeView.of(load_config(Path(path) if path else None))
    if cache:
        try:
            tmp = f"{cache}.{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("\n".join([key, *(f"{k}\t{getattr(view, k)}" for k in NodeView.KEYS)]) + "\n")
            os.replace(tmp, cache)
        except OSError:
            pass
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


def _freezer_path(pid: int) -> str:
    """The pid's cgroup path in the freezer runc uses (v1 where mounted, else v2); "" when gone."""
    from .ckpt.cgroup import cgroup_path_of
    return cgroup_path_of(pid)


class GpuFrontHooks:
    """:class:`~nri_plugin.front.hooks.FrontHooks` for CUDA workloads; one object per swrk session."""

    def __init__(self, values: dict[str, str], node: NodeConfig | None = None) -> None:
        self.values = values
        self.log = FrontLog(values.get("log_dir"))
        self.node = NodeView.of(node) if node is not None else node_view(values.get("node_config"),
                                                                         values.get("log_dir"))
        self.libcuda = values.get("libcuda") or self.node.libcuda or DEFAULT_LIBCUDA
        self.libnvml = values.get("libnvml") or None
        self.target: Target | None = None
        self.suspended: Suspended | None = None
        self._engine: Engine | None = None
        self._restored_pid: int | None = None

    # -- the decision (cheap: /proc and the state dir only) -------------------------------------------------------
    def wants(self, request: Request) -> bool:
        if request.type == DUMP:
            self.target = self._dump_target(request)
            return self.target is not None and self.target.protect
        if request.type == RESTORE:
            return bool(request.images_dir) and os.path.exists(os.path.join(request.images_dir or "", MARKER))
        return False

    def _workload_pids(self, pid: int, freeze_cgroup: str | None) -> list[int]:
        from .ckpt._proc import cgroup_procs, tree_pids
        if freeze_cgroup:
            try:
                return cgroup_procs(freeze_cgroup)
            except OSError:
                pass
        from .ckpt.cgroup import CgroupError, cgroups_of
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

        from .policy.records import RecordError, load_record
        try:
            rec = load_record(Path(self.node.state_dir), cid)
        except RecordError as exc:
            if "no gpucr record" not in str(exc):
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
        from .ckpt._proc import cuda_candidates
        cg = request.freeze_cgroup or ""
        cg_path = _freezer_path(pid) or cg
        cid = os.path.basename(cg_path.rstrip("/"))
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

    # -- the engine -----------------------------------------------------------------------------------------------
    def engine(self) -> Engine:
        if self._engine is None:
            from .ckpt.cgroup import freezer_of
            from .ckpt.cuda import Driver, Nvml
            from .ckpt.engine import Engine
            from .ckpt.store import CheckpointStore

            self._engine = Engine(Driver(self.libcuda, call_timeout_s=self.node.driver_call_timeout_s), None,
                                  freezer_of, CheckpointStore(), nvml=Nvml(self.libnvml))
        return self._engine

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
        from .ckpt.engine import CheckpointError
        lock_ms = int((t.record.policy.get("lock_timeout_ms") if t.record else 0) or self.node.lock_timeout_ms)
        eng = self.engine()
        try:
            s = eng.suspend(t.pid, use_cgroup=True, lock_timeout_ms=lock_ms, what=t.describe())
        except CheckpointError as exc:
            err = self._error(f"GPU-safe dump of {t.describe()}", exc, "discover")
            self.log.error(str(err))
            raise err from exc
        if not s.procs:  # managed, but no CUDA state now: CRIU dumps it as any process, the restore needs nothing
            from .ckpt._proc import cuda_candidates
            pids = self._workload_pids(t.pid, request.freeze_cgroup)
            self.log.info(f"DUMP of {t.describe()}, {t.why}: no process holds CUDA state (pids {pids}, by /proc: "
                          f"{cuda_candidates(pids, self.libcuda)}); nothing for gpucr to do")
            return
        self.suspended = s
        try:
            self._write_marker(request, t, s)
        except OSError as exc:
            problems = eng.rollback(s)
            self.suspended = None
            err = HookError(f"GPU-safe dump of {t.describe()} failed at step marker: cannot write {MARKER} into "
                            f"{request.images_dir}: {exc}" + (f"; rollback incomplete: {problems}" if problems else
                                                               "; rolled back, the workload keeps running")
                            + f"; fix: {_FIX['marker']}")
            self.log.error(str(err))
            raise err from exc
        frozen = "thawed it, " if s.frozen_before else ""
        self.log.info(f"DUMP of {t.describe()}, {t.why}: {frozen}locked and checkpointed "
                      f"{len(s.procs)} CUDA process(es) {[p.pid for p in s.procs]}"
                      + (", froze it again" if s.frozen_before else "") + "; criu may dump now")

    def _write_marker(self, request: Request, t: Target, s: Suspended) -> None:
        if not request.images_dir:
            raise OSError("the runtime's images dir is unknown")
        gpu_map = (t.record.policy.get("gpu_map") if t.record else None) or []
        data = {"format": MARKER_FORMAT, "container_id": t.container_id, "managed": t.record is not None,
                "pid": t.pid, "processes": [p.to_json() for p in s.procs], "gpus": s.inventory.gpus,
                "driver_version": s.inventory.driver_version, "gpu_map": gpu_map}
        import json
        path = os.path.join(request.images_dir, MARKER)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)

    def after_response(self, request: Request, success: bool) -> None:
        s, t = self.suspended, self.target
        if request.type != DUMP or s is None or t is None:
            return
        self.suspended = None
        eng = self.engine()
        if not success:
            problems = eng.rollback(s)
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
            self.log.info(f"DUMP of {t.describe()} done; the dumped tasks were stopped (no leave-running)")
            return
        from .ckpt.engine import CheckpointError
        try:
            eng.resume(s)
        except CheckpointError as exc:
            err = self._error(f"resuming the CUDA processes of {t.describe()} after the dump", exc, "cuda-restore")
            self.log.error(str(err))
            raise err from exc
        self.log.info(f"DUMP of {t.describe()} done (leave-running): restored and unlocked {len(s.procs)} CUDA "
                      f"process(es)" + (", cgroup frozen again for the runtime's resume" if s.frozen_before else ""))

    # -- RESTORE --------------------------------------------------------------------------------------------------
    def on_notify(self, request: Request, name: str, pid: int | None) -> None:
        if request.type != RESTORE:
            return
        if pid and name in ("setup-namespaces", "post-restore", "post-resume"):
            self._restored_pid = pid
        if name != "post-resume":
            return
        root = self._restored_pid
        marker = self._read_marker(request)
        procs = marker.get("processes") or []
        if not root:
            raise HookError(f"RESTORE from {request.images_dir}: CRIU named no restored pid; the CUDA state of "
                            f"container {marker.get('container_id')} cannot be restored")
        cid = os.path.basename(_freezer_path(root).rstrip("/"))
        gpu_map, source = self._gpu_map(cid, marker)
        from .ckpt.engine import CheckpointError
        try:
            done = self.engine().restore_after_criu(root, procs, gpu_map, list(marker.get("gpus") or {}),
                                                    may_freeze=False)
        except CheckpointError as exc:
            killed = self._kill_tree(root)
            err = self._error(f"CUDA restore of container {cid or marker.get('container_id')} (pid {root})", exc,
                              "cuda-restore")
            err = HookError(f"{err}; the restored processes {killed} were killed (their CUDA state is unusable); "
                            "the checkpoint is intact for another restore")
            self.log.error(str(err))
            raise err from exc
        self.log.info(f"RESTORE of container {cid} (pid {root}, checkpointed as {marker.get('container_id')}): "
                      f"restored and unlocked {len(done)} CUDA process(es) {[p.pid for p in done]}, GPU map "
                      f"{gpu_map or 'identity'} ({source})")

    @staticmethod
    def _kill_tree(root: int) -> list[int]:
        """SIGKILL a restored tree whose CUDA state could not come back: left alive it would stay locked forever."""
        import signal

        from .ckpt._proc import tree_pids
        pids = tree_pids(root)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def _read_marker(self, request: Request) -> dict[str, Any]:
        import json
        path = os.path.join(request.images_dir or "", MARKER)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise HookError(f"RESTORE: gpucr's marker {path} is unreadable ({exc}); the checkpoint's CUDA state "
                            "cannot be restored: use an intact checkpoint") from exc
        if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
            raise HookError(f"RESTORE: gpucr's marker {path} has an unknown format; restore it with the gpucr "
                            "version that made it")
        return data

    def _gpu_map(self, cid: str, marker: dict[str, Any]) -> tuple[dict[str, str], str]:
        """The restored container's GPU UUID map: its own record's gpu-map, else the one recorded at dump."""
        if cid:
            from pathlib import Path

            from .policy.records import RecordError, load_record
            try:
                rec = load_record(Path(self.node.state_dir), cid)
                pairs = rec.policy.get("gpu_map") or []
                if pairs:
                    return {str(a): str(b) for a, b in pairs}, f"record of container {cid}"
            except RecordError:
                pass
        pairs = marker.get("gpu_map") or []
        if pairs:
            return {str(a): str(b) for a, b in pairs}, "recorded at checkpoint"
        return {}, "default"


def make(values: dict[str, str]) -> GpuFrontHooks:
    """The front's hooks factory (``hooks = nri_plugin.gpufront:make``).

    Raises:
        ConfigError: the node configuration is unreadable or invalid (the front answers the runtime with it).
    """
    from .errors import GpucrError
    try:
        return GpuFrontHooks(values)
    except GpucrError as exc:  # ConfigError, kept as such, named as the hooks' configuration
        raise type(exc)(f"gpucr's CRIU hooks: {exc}") from exc

"""Periodic checkpoints: the plugin daemon checkpoints a running container every ``gpucr.io/checkpoint-interval``
and keeps its ``gpucr.io/checkpoint-keep`` newest.

Each tick checkpoints through containerd, leave-running, exactly as ``gpucr checkpoint --via-runtime
--leave-running`` does (:mod:`nri_plugin.ckpt.via_runtime`: CRI CheckpointContainer on 2.x, the task API on 1.7;
gpucr's CRIU front does the CUDA work), into the container's series dir under the checkpoint root
(:mod:`nri_plugin.ckpt.series`), so ``gpucr.io/restore-from: periodic/<namespace>/<pod>/<container>/latest`` restores
the newest. The new checkpoint is sealed, fsynced and renamed into place before ``latest`` moves and before any old
one is removed; removal skips checkpoints a restore holds the lock on.

One checkpoint of a container at a time (:mod:`nri_plugin.ckpt.container_lock`, shared with ``gpucr checkpoint``):
a tick that finds one running (a gpucr checkpoint's lock, or a CRIU front's lease of a ``ctr``/kubelet checkpoint)
is skipped with a log line. A failed tick leaves the workload running (leave-running; the front rolls the CUDA
state back) and unlocked, logs one error line, counts in ``gpucr_checkpoints_total{path="periodic",result="error"}``,
and the next tick tries again. Timers start at PostStartContainer, stop at StopContainer/RemoveContainer, and are
re-armed for running containers at Synchronize (a daemon restart).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..ckpt.restore_source import locks_dir
from ..errors import GpucrError
from ..nri import pb
from ..policy import AnnotationError, NodeConfig, decide
from ..policy.criu_conf import container_dump_flags
from .lease_sweep import SweepingPolicyPlugin
from .metrics import report
from .nri_policy import container_view

__all__ = ["Job", "PeriodicCheckpoints", "PeriodicPolicyPlugin", "job_of"]

log = logging.getLogger(__name__)

#: NRI's ContainerState RUNNING
_RUNNING = 3
#: CRI's ContainerState CONTAINER_RUNNING
_CRI_RUNNING = 1


@dataclass(frozen=True)
class Job:
    """One container's periodic checkpoints."""

    container_id: str
    what: str         #: "container NAME in pod NS/POD", for log lines
    series: str       #: its dir's name under the checkpoint root (ckpt/series.py)
    interval_s: int
    keep: int


class PeriodicCheckpoints:
    """The timers: one asyncio task per container, each tick's checkpoint in a worker thread (it blocks)."""

    def __init__(self, node_of: Callable[[], NodeConfig]) -> None:
        self.node_of = node_of
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.jobs: dict[str, Job] = {}

    def arm(self, job: Job) -> None:
        old = self.jobs.get(job.container_id)
        if old == job and job.container_id in self.tasks:
            return
        self.disarm(job.container_id, "")
        self.jobs[job.container_id] = job
        self.tasks[job.container_id] = asyncio.get_running_loop().create_task(self._loop(job))
        log.info("periodic checkpoints of %s every %ds, %d kept, in %s (restore the newest with "
                 "gpucr.io/restore-from: %s/latest)", job.what, job.interval_s, job.keep,
                 self.node_of().checkpoint_root / job.series, job.series)

    def disarm(self, container_id: str, why: str) -> None:
        task = self.tasks.pop(container_id, None)
        job = self.jobs.pop(container_id, None)
        if task is not None:
            task.cancel()
            if why and job is not None:
                log.info("periodic checkpoints of %s stopped: %s", job.what, why)

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for cid in list(self.tasks):
            self.disarm(cid, "")
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, job: Job) -> None:
        while True:
            await asyncio.sleep(job.interval_s)
            try:
                running = await asyncio.to_thread(self.tick, job)
            except Exception as exc:  # a bug must not end the timer silently: one error line, the next tick retries
                self._failed(job, self.node_of(), "checkpoint", f"{type(exc).__name__}: {exc}", 0.0)
                continue
            if not running:
                if self.tasks.get(job.container_id) is asyncio.current_task():
                    self.disarm(job.container_id, "the container is not running")
                return

    def tick(self, job: Job) -> bool:
        """One periodic checkpoint (blocking). False when the container is no longer running (the timer stops)."""
        from ..ckpt import via_runtime
        from ..ckpt.container_lock import CheckpointBusy, busy_reason, held
        from ..ckpt.series import Series
        from ..cri import CriClient, CriError

        node = self.node_of()
        busy = busy_reason(node.state_dir, job.container_id)
        if busy:
            log.info("periodic checkpoint of %s skipped: %s; next try in %ds", job.what, busy, job.interval_s)
            return True
        address = str(node.containerd_address)
        try:
            with CriClient(address, timeout_s=10) as c:
                status, info = c.container_status(job.container_id, verbose=True)
            pid = int((info.get("info") or {}).get("pid") or 0)
        except (CriError, ValueError, TypeError, AttributeError) as exc:
            import grpc
            if isinstance(exc, CriError) and exc.code == grpc.StatusCode.NOT_FOUND:
                return False
            self._failed(job, node, "container-status", f"{exc}", 0.0)
            return True
        if status.state != _CRI_RUNNING or pid <= 0:
            return False
        t0 = time.monotonic()
        series = Series(node.checkpoint_root, job.series)
        try:
            with held(node.state_dir, job.container_id, job.what):
                tmp, final = series.begin()
                try:
                    res = via_runtime.checkpoint(
                        via_runtime.RuntimeTarget(address, job.container_id, pid), tmp, leave_running=True,
                        libcuda=node.libcuda or "libcuda.so.1", criu_path=node.criu_path,
                        extra={"periodic": {"series": job.series, "interval_s": job.interval_s}},
                        config_flags=container_dump_flags(node.state_dir, job.container_id))
                    series.commit(tmp, final)
                except BaseException:
                    series.discard(tmp)
                    raise
                removed, kept = series.prune(job.keep, locks_dir(node.checkpoint_root))
        except CheckpointBusy as exc:
            log.info("periodic checkpoint of %s skipped: %s; next try in %ds", job.what, exc, job.interval_s)
            return True
        except (GpucrError, OSError) as exc:
            if not self._running(address, job.container_id):  # it stopped meanwhile: not the checkpoint's fault
                log.info("periodic checkpoint of %s ended: the container stopped during it", job.what)
                return False
            self._failed(job, node, "checkpoint", str(exc), time.monotonic() - t0)
            return True
        total = time.monotonic() - t0
        size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
        report(node.state_dir, "checkpoint", "periodic", True, {**res.timings_s, "total": total}, image_bytes=size)
        log.info("periodic checkpoint of %s done in %.2fs through %s: %s (%d CUDA process(es)); removed %s%s",
                 job.what, total, res.via, final, len(res.marker.processes) if res.marker else 0,
                 ", ".join(p.name for p in removed) or "none",
                 f"; kept {', '.join(p.name for p in kept)} (a restore holds it)" if kept else "")
        return True

    @staticmethod
    def _running(address: str, container_id: str) -> bool:
        from ..cri import CriClient, CriError
        try:
            with CriClient(address, timeout_s=10) as c:
                return c.container_status(container_id)[0].state == _CRI_RUNNING
        except CriError:
            return True  # cannot tell: report the failure

    def _failed(self, job: Job, node: NodeConfig, step: str, why: str, secs: float) -> None:
        report(node.state_dir, "checkpoint", "periodic", False, {"total": secs})
        log.error("periodic checkpoint of %s (container %s) failed at step %s: %s; the container keeps running, "
                  "the next try is in %ds", job.what, job.container_id, step, why.replace("\n", " "),
                  job.interval_s)


def job_of(pod: pb.PodSandbox, ctr: pb.Container, node: NodeConfig) -> Job | None:
    """The periodic checkpoints ``ctr`` asked for, or None (not asked, not managed, or annotations now invalid)."""
    from ..ckpt.series import series_name

    view = container_view(pod, ctr)
    try:
        d = decide(view, node)
    except AnnotationError as exc:  # refused at creation already; a node config changed since
        log.warning("%s: no periodic checkpoints: %s", view.describe(), exc)
        return None
    if not d.managed or d.periodic is None:
        return None
    return Job(ctr.id, view.describe(), series_name(pod.namespace, pod.name, ctr.name), d.periodic.interval_s,
               d.periodic.keep)


class PeriodicPolicyPlugin(SweepingPolicyPlugin):
    """The daemon's plugin: the policy, the lease sweep, and periodic checkpoints of running containers."""

    def __init__(self, node: NodeConfig | None = None) -> None:
        super().__init__(node)
        self.periodic = PeriodicCheckpoints(lambda: self.node)

    async def synchronize(self, pods: list[pb.PodSandbox], containers: list[pb.Container]) -> None:
        await super().synchronize(pods, containers)
        by_id = {p.id: p for p in pods}
        for ctr in containers:
            pod = by_id.get(ctr.pod_sandbox_id)
            job = job_of(pod, ctr, self.node) if pod is not None and ctr.state == _RUNNING else None
            if job is not None:
                self.periodic.arm(job)

    async def post_start_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> None:
        job = job_of(pod, ctr, self.node)
        if job is not None:
            self.periodic.arm(job)

    async def stop_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> None:
        self.periodic.disarm(ctr.id, "the container stopped")

    async def remove_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> None:
        self.periodic.disarm(ctr.id, "the container was removed")
        await super().remove_container(pod, ctr)

"""The lease around ``gpucr checkpoint``'s critical section (:mod:`nri_plugin.ckpt.lease`), and its signals.

Before it starts, the CLI sweeps stale leases (a killed earlier run's); while it holds a lease, SIGTERM and SIGINT
raise :class:`~nri_plugin.ckpt.lease.Interrupted` in the engine, which rolls back before the CLI exits, and SIGALRM
marks the current phase's deadline (from the node config the CLI read: :func:`.checkpoint.node_config`), so a
phase that runs out rolls back too and the error names it. A rollback that leaves something undone keeps the lease,
for the daemon's sweep (or ``gpucr recover``) to finish.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from ..ckpt.cuda_steps import Suspended
from ..ckpt.lease import Interrupted, LeaseHolder, LeaseStore, roll_back, sweep
from ..policy import NodeConfig

__all__ = ["Guard", "steps_factory", "sweep_now"]

log = logging.getLogger("gpucr.lease")


def steps_factory(libcuda: str | None, node: NodeConfig) -> Any:
    def make() -> Any:
        from ..ckpt.cuda import Driver
        from ..ckpt.cuda_steps import CudaSteps
        from ..host.cgroup import freezer_of

        return CudaSteps(Driver(libcuda or node.libcuda or None, call_timeout_s=node.driver_call_timeout_s),
                         freezer_of)
    return make


def sweep_now(node: NodeConfig, libcuda: str | None, **kw: Any) -> list[Any]:
    from ..host.cgroup import freezer_at

    return sweep(LeaseStore(node.state_dir), steps_factory(libcuda, node), freezer_at, **kw)


def _asked(node: NodeConfig, container_id: str) -> tuple[tuple[str, int], ...]:
    """The container's gpucr.io/phase-timeouts, from the plugin's record (none without one)."""
    if not container_id:
        return ()
    from ..policy.records import RecordError, load_record
    try:
        return load_record(node.state_dir, container_id).policy.phase_timeouts
    except RecordError:
        return ()


class Guard:
    """One checkpoint's lease, signal handlers and phase alarm."""

    def __init__(self, node: NodeConfig, *, what: str, container_id: str, lock_timeout_ms: int,
                 holder: str = "gpucr checkpoint") -> None:
        self.node = node
        self.holder = LeaseHolder(LeaseStore(node.state_dir), holder=holder, container_id=container_id,
                                  what=what, budgets=node.phase_budgets(lock_timeout_ms, _asked(node, container_id)))
        self._fired = False

    def on_phase(self, point: str, s: Suspended | None) -> None:
        self.holder.on_phase(point, s)
        if self.holder.written and self.holder.lease.deadline:
            signal.setitimer(signal.ITIMER_REAL, max(0.01, self.holder.lease.deadline - time.time()))
        elif not self.holder.written:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._fired or not self.holder.written:
            if not self.holder.written and signum != signal.SIGALRM:
                raise Interrupted(f"interrupted by {signal.Signals(signum).name} before any CUDA step; nothing to undo")
            return  # one interruption is enough: the rollback it started must not be cut short
        self._fired = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        le = self.holder.lease
        if signum == signal.SIGALRM:
            budget = self.holder.budgets.get(le.phase, 0)
            raise Interrupted(f"phase {le.phase} of the {self.holder.lease.holder.split()[-1]} of {le.what} ran out "
                              f"of time ({budget:.0f}s, the "
                              f"node config's deadline); raise it if the workload needs longer", step=le.phase)
        raise Interrupted(f"interrupted by {signal.Signals(signum).name} during phase {le.phase} of the "
                          f"{self.holder.lease.holder.split()[-1]} of {le.what}", step=le.phase)

    @contextmanager
    def active(self, steps_of: Any) -> Iterator[None]:
        """Hold the lease around the engine's checkpoint: signals roll back; the lease ends with the section."""
        from ..ckpt.errors import CheckpointError
        from ..host.cgroup import freezer_at

        old = {sig: signal.signal(sig, self._signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
        try:
            yield
        except CheckpointError as exc:
            if not exc.rollback_problems:
                self.holder.end()
            raise
        except BaseException:
            if self.holder.written:  # escaped the engine's own rollback: undo what the lease names, here
                res = roll_back(self.holder.lease, steps_of(), freezer_at, "the checkpoint failed")
                log.warning("%s", res.line())
                if not res.problems:
                    self.holder.end()
            raise
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, h in old.items():
                signal.signal(sig, h)
        self.holder.end()

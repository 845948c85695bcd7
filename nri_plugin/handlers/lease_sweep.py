"""The plugin daemon's lease sweep: someone always looks for checkpoints that died holding CUDA locked.

:class:`LeaseSweeper` runs :func:`nri_plugin.ckpt.lease.sweep` over the node's state dir at start, every
``lease_sweep_interval_s`` (node config) and after each container event (:class:`SweepingPolicyPlugin` pokes it), in
a worker thread (driver calls block). It rolls back only leases whose holder is gone or whose phase ran past its
deadline; each rollback is one log line naming the container and what was undone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..nri import Adjustment, pb
from ..policy import NodeConfig
from .nri_policy import PolicyPlugin

__all__ = ["LeaseSweeper", "SweepingPolicyPlugin"]

log = logging.getLogger(__name__)


class LeaseSweeper:
    """Sweeps leases of ``node_of()``'s state dir (the plugin's current node config)."""

    def __init__(self, node_of: Callable[[], NodeConfig]) -> None:
        self.node_of = node_of
        self._poke = asyncio.Event()
        self._steps: Any = None
        self._steps_key: tuple[str, float] | None = None

    def poke(self) -> None:
        self._poke.set()

    def _steps_of(self) -> Any:
        node = self.node_of()
        key = (node.libcuda, node.driver_call_timeout_s)
        if self._steps is None or key != self._steps_key:  # one driver for the daemon's life (cuInit once)
            from ..ckpt.cuda import Driver
            from ..ckpt.cuda_steps import CudaSteps
            from ..host.cgroup import freezer_of

            self._steps = CudaSteps(Driver(node.libcuda or None, call_timeout_s=node.driver_call_timeout_s),
                                    freezer_of)
            self._steps_key = key
        return self._steps

    def sweep_once(self) -> list[Any]:
        """One sweep (blocking); the rollbacks it did."""
        from ..ckpt.lease import LeaseStore, sweep
        from ..errors import GpucrError
        from ..host.cgroup import freezer_at

        try:
            return sweep(LeaseStore(self.node_of().state_dir), self._steps_of, freezer_at)
        except GpucrError as exc:
            log.error("lease sweep: %s", exc)
            return []

    async def run(self) -> None:
        """Sweep at start, then on every poke or interval, until cancelled."""
        while True:
            self._poke.clear()
            await asyncio.to_thread(self.sweep_once)
            try:
                await asyncio.wait_for(self._poke.wait(), self.node_of().lease_sweep_interval_s)
            except TimeoutError:
                pass


class SweepingPolicyPlugin(PolicyPlugin):
    """:class:`PolicyPlugin` whose container events also poke the lease sweep."""

    def __init__(self, node: NodeConfig | None = None) -> None:
        super().__init__(node)
        self.sweeper = LeaseSweeper(lambda: self.node)

    async def create_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> Adjustment | None:
        self.sweeper.poke()
        return await super().create_container(pod, ctr)

    async def remove_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> None:
        self.sweeper.poke()
        await super().remove_container(pod, ctr)

"""Find the processes of a workload that hold CUDA state, and what GPU memory they hold.

A workload is either a process tree (``--pid``: the root and every descendant) or a set of pids (a container's
cgroup, listed by the caller). A process is a CUDA candidate when it maps the CUDA driver library (``libcuda.so``, or
the configured driver's file name, e.g. the tests' fake) or holds a ``/dev/nvidia*`` fd; the driver then confirms it
(get-state answers only for processes with CUDA state). Candidates are checked through the driver's watchdog, so a
frozen process makes discovery fail fast instead of hanging: the engine thaws before it discovers.

GPU UUIDs, chip names and memory come from NVML when it loads; without it they are recorded as unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..host.proc import comm, cuda_candidates, nvidia_minors, tree_pids
from .cuda.driver import Driver, NotCudaProcessError, ProcessState
from .cuda.nvml import Nvml, NvmlError

__all__ = ["CudaProcess", "GpuInventory", "cuda_candidates", "discover", "gpu_inventory", "tree_pids"]

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_S = 10.0


@dataclass
class CudaProcess:
    """One process holding CUDA state: its host pid, state, and GPU memory by GPU UUID."""

    pid: int
    state: ProcessState
    comm: str = ""
    gpus: dict[str, int] = field(default_factory=dict)

    @property
    def gpu_bytes(self) -> int:
        return sum(self.gpus.values())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.name
        return d


@dataclass
class GpuInventory:
    """The node's GPUs (UUID -> chip name) and driver version string, as NVML reports them (empty when unknown)."""

    driver_version: str = ""
    gpus: dict[str, str] = field(default_factory=dict)
    by_index: dict[int, str] = field(default_factory=dict)


def gpu_inventory(nvml: Nvml | None) -> tuple[GpuInventory, dict[int, dict[str, int]]]:
    """The node's GPUs and each pid's GPU memory; empty (with a debug line) when NVML is unavailable."""
    if nvml is None:
        return GpuInventory(), {}
    try:
        gpus = nvml.gpus()
        inv = GpuInventory(nvml.driver_version(), {g.uuid: g.name for g in gpus}, {g.index: g.uuid for g in gpus})
        usage = {pid: dict(u.memory) for pid, u in nvml.usage().items()}
        return inv, usage
    except NvmlError as exc:
        log.debug("no GPU inventory: %s", exc)
        return GpuInventory(), {}


def discover(pids: Iterable[int], driver: Driver, nvml: Nvml | None = None,
             timeout_s: float = DISCOVERY_TIMEOUT_S) -> tuple[list[CudaProcess], GpuInventory]:
    """The CUDA processes among ``pids`` (which must not be frozen) and the node's GPU inventory.

    Raises:
        CudaError: the driver is unusable, or a candidate did not answer in time (CudaTimeoutError).
    """
    cands = cuda_candidates(pids, driver.path)
    if not cands:
        return [], GpuInventory()
    inv, usage = gpu_inventory(nvml)
    found = []
    for pid in cands:
        try:
            state = driver.get_state(pid, timeout_s)
        except NotCudaProcessError:
            continue
        gpus = usage.get(pid) or {inv.by_index[i]: 0 for i in nvidia_minors(pid) if i in inv.by_index}
        found.append(CudaProcess(pid, state, comm(pid), gpus))
    return found, inv

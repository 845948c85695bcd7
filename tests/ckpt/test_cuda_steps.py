"""nri_plugin.ckpt.cuda_steps.CudaSteps, the CUDA half shared by the CLI's engine and the CRIU front's hooks, with a
driver double that has the real state machine: suspend/resume ordering around a caller-frozen cgroup, and rollback of
every failure (every CUDA process RUNNING again, the cgroup as the caller left it). CRIU ordering: test_engine.py."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

from nri_plugin.ckpt import cuda_steps as cuda_steps_mod
from nri_plugin.ckpt.cuda import CudaError, CudaTimeoutError, ProcessState
from nri_plugin.ckpt.cuda_steps import CudaSteps
from nri_plugin.ckpt.discovery import CudaProcess, GpuInventory
from nri_plugin.ckpt.errors import CheckpointError

GIB = 1 << 30
UUID0 = "GPU-00000000-0000-4000-8000-000000000000"
UUID1 = "GPU-00000000-0000-4000-8000-000000000001"


class SMDriver:
    """A CUDA driver double with the real state machine; ``log`` records (call, pid) in order."""

    path = "libcuda.so.1"
    api_version = 13000
    supports_remap = True
    custom_storage = False

    def __init__(self, pids: list[int]) -> None:
        self.state = {p: ProcessState.RUNNING for p in pids}
        self.log: list[tuple[str, int]] = []
        self.fail: dict[tuple[str, int], Exception] = {}
        self.pending: dict[int, threading.Event] = {}
        self.mu = threading.Lock()

    def _do(self, call: str, pid: int, frm: ProcessState, to: ProcessState) -> None:
        with self.mu:
            self.log.append((call, pid))
        exc = self.fail.pop((call, pid), None)
        if isinstance(exc, CudaTimeoutError):
            # the call stays blocked in the "driver" and completes later (when thawed): model it as done-on-wait
            ev = threading.Event()
            self.pending[pid] = ev
            self.state[pid] = to
            raise exc
        if exc is not None:
            raise exc
        if self.state[pid] != frm:
            raise CudaError(f"pid {pid}: CUDA {call} failed: CUDA_ERROR_ILLEGAL_STATE", pid=pid, step=call)
        self.state[pid] = to

    def get_state(self, pid: int, timeout_s: float | None = None) -> ProcessState:
        return self.state[pid]

    def lock(self, pid: int, timeout_ms: int = 0, on_tick: Any = None) -> None:
        self._do("lock", pid, ProcessState.RUNNING, ProcessState.LOCKED)

    def checkpoint(self, pid: int, timeout_s: float | None = None, on_tick: Any = None) -> None:
        self._do("checkpoint", pid, ProcessState.LOCKED, ProcessState.CHECKPOINTED)

    def restore(self, pid: int, gpu_pairs: Any = (), timeout_s: float | None = None, on_tick: Any = None) -> None:
        self._do("restore", pid, ProcessState.CHECKPOINTED, ProcessState.LOCKED)

    def unlock(self, pid: int, timeout_s: float | None = None) -> None:
        self._do("unlock", pid, ProcessState.LOCKED, ProcessState.RUNNING)

    def wait_pending(self, pid: int, timeout_s: float) -> bool:
        with self.mu:
            self.log.append(("wait-pending", pid))
        self.pending.pop(pid, None)
        return True


class MockFreezer:
    def __init__(self, frozen: bool, log: list[tuple[str, int]]) -> None:
        self.path = Path("/sys/fs/cgroup/freezer/test/c1")
        self.is_frozen = frozen
        self.log = log

    def frozen(self) -> bool:
        return self.is_frozen

    def freeze(self) -> None:
        self.log.append(("freeze", 0))
        self.is_frozen = True

    def thaw(self) -> None:
        self.log.append(("thaw", 0))
        self.is_frozen = False

    def pids(self) -> list[int]:
        return []


@pytest.fixture
def procs() -> Iterator[list[int]]:
    ps = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    yield [p.pid for p in ps]
    for p in ps:
        p.kill()
        p.wait()


def steps_for(mocker: MockerFixture, pids: list[int], frozen: bool) -> tuple[CudaSteps, SMDriver, MockFreezer]:
    driver = SMDriver(pids)
    freezer = MockFreezer(frozen, driver.log)
    found = [CudaProcess(p, ProcessState.RUNNING, "python3", {UUID0: GIB}) for p in pids]
    mocker.patch.object(cuda_steps_mod, "discover", side_effect=lambda *a, **k: (
        [CudaProcess(p.pid, driver.state[p.pid], p.comm, dict(p.gpus)) for p in found],
        GpuInventory("580.159.04", {UUID0: "NVIDIA H200"})))
    return CudaSteps(driver, lambda pid: freezer, mem_available=lambda: 64 * GIB), driver, freezer  # type: ignore[arg-type]


def test_suspend_resume_around_a_frozen_cgroup(mocker: MockerFixture, procs: list[int]) -> None:
    steps, driver, freezer = steps_for(mocker, procs, frozen=True)
    s = steps.suspend(procs[0], use_cgroup=False)
    assert s.frozen_before and freezer.is_frozen and steps.last_freezer is freezer
    assert [c for c, _ in driver.log] == ["thaw", "lock", "lock", "checkpoint", "checkpoint", "freeze"]
    steps.resume(s)
    assert [c for c, _ in driver.log][6:] == ["thaw", "restore", "restore", "unlock", "unlock", "freeze"]
    assert all(v == ProcessState.RUNNING for v in driver.state.values()) and freezer.is_frozen
    assert {"thaw", "discover", "cuda-lock", "cuda-checkpoint", "refreeze"} <= set(steps.timings)


def test_rollback_after_a_failed_dump(mocker: MockerFixture, procs: list[int]) -> None:
    steps, driver, freezer = steps_for(mocker, procs, frozen=False)
    s = steps.suspend(procs[0])
    assert all(v == ProcessState.CHECKPOINTED for v in driver.state.values())
    assert steps.rollback(s) == []
    assert all(v == ProcessState.RUNNING for v in driver.state.values()) and not freezer.is_frozen


def test_not_enough_host_memory_is_checked_before_locking(mocker: MockerFixture, procs: list[int]) -> None:
    steps, driver, _ = steps_for(mocker, procs, frozen=False)
    steps.mem_available = lambda: GIB
    with pytest.raises(CheckpointError, match=r"not enough host memory.*2.00 GiB.*only 1.00 GiB") as ei:
        steps.suspend(procs[0], what="container c1")
    assert ei.value.step == "host-memory" and "checkpoint container c1" in str(ei.value)
    assert driver.log == []


@pytest.mark.parametrize("step,exc", [
    ("lock", CudaError("CUDA lock failed: CUDA_ERROR_TIMEOUT", result=909, name="CUDA_ERROR_TIMEOUT", step="lock")),
    ("lock", CudaTimeoutError("CUDA lock did not return within 35.0s", pid=None, step="lock", elapsed_s=35.0)),
    ("checkpoint", CudaError("CUDA checkpoint failed: CUDA_ERROR_UNKNOWN", result=999, step="checkpoint")),
    ("checkpoint", CudaTimeoutError("CUDA checkpoint did not return", pid=None, step="checkpoint", elapsed_s=60)),
])
@pytest.mark.parametrize("frozen", [False, True])
def test_cuda_failure_rolls_back(mocker: MockerFixture, procs: list[int], step: str, exc: Exception,
                                 frozen: bool) -> None:
    steps, driver, freezer = steps_for(mocker, procs, frozen=frozen)
    driver.fail[(step, procs[1])] = exc
    with pytest.raises(CheckpointError) as ei:
        steps.suspend(procs[0])
    e = ei.value
    assert e.step == f"cuda-{step}" and e.pid == procs[1]
    assert f"for pid {procs[1]}" in str(e) and "rolled back" in str(e)
    assert all(v == ProcessState.RUNNING for v in driver.state.values()), driver.state
    if isinstance(exc, CudaTimeoutError):
        assert ("wait-pending", procs[1]) in driver.log
    assert freezer.is_frozen is frozen  # back as the caller left it

"""The CUDA driver wrapper: unit tests over a mocked libcuda (pytest-mock), then the same calls through the real
ctypes path into the fake driver built with gcc (state machine, frozen/stopped hazard, injected failures)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

from nri_plugin.ckpt.cuda import (
    CudaError, CudaTimeoutError, CudaUnavailableError, Driver, NotCudaProcessError, Nvml, ProcessState,
)
from nri_plugin.ckpt.cuda import _lib
from nri_plugin.ckpt.cuda.driver import uuid_bytes
from tests.fakes.cuda import WORKLOAD, FakeCuda, fake_cuda, fake_cuda_lib  # noqa: F401 (fixtures)
from tests.testenv import wait_for


class MockLib:
    """A libcuda stand-in: every symbol is a MagicMock; ``states`` answers get-state."""

    def __init__(self, mocker: MockerFixture, api: int = 13000, missing: tuple[str, ...] = ()) -> None:
        self.path = "mock-libcuda"
        self.missing = missing
        self.states: dict[int, int] = {}
        self.fns: dict[str, Any] = {}
        for name in ("cuInit", "cuDriverGetVersion", "cuCheckpointProcessGetState", "cuCheckpointProcessLock",
                     "cuCheckpointProcessCheckpoint", "cuCheckpointProcessRestore", "cuCheckpointProcessUnlock",
                     "cuCheckpointProcessGetRestoreThreadId"):
            self.fns[name] = mocker.MagicMock(name=name, return_value=0)

        def version(ref: Any) -> int:
            ref._obj.value = api
            return 0

        def get_state(pid: int, ref: Any) -> int:
            if pid not in self.states:
                return 3  # what driver 580 answers for a live non-CUDA pid
            ref._obj.value = self.states[pid]
            return 0

        self.fns["cuDriverGetVersion"].side_effect = version
        self.fns["cuCheckpointProcessGetState"].side_effect = get_state

    def has(self, name: str) -> bool:
        return name in self.fns and name not in self.missing

    def fn(self, name: str) -> Any:
        return self.fns[name]


def test_calls_and_states(mocker: MockerFixture) -> None:
    lib = MockLib(mocker)
    lib.states[os.getpid()] = 1
    d = Driver(lib=lib)
    assert d.api_version == 13000 and d.supports_remap
    assert d.get_state(os.getpid()) is ProcessState.LOCKED
    d.lock(os.getpid(), timeout_ms=1234)
    args = lib.fns["cuCheckpointProcessLock"].call_args.args
    assert args[0] == os.getpid() and args[1]._obj.timeoutMs == 1234
    d.checkpoint(os.getpid())
    d.unlock(os.getpid())
    lib.fns["cuInit"].assert_called_once_with(0)


def test_not_a_cuda_process(mocker: MockerFixture) -> None:
    d = Driver(lib=MockLib(mocker))
    with pytest.raises(NotCudaProcessError, match=f"pid {os.getpid()} holds no CUDA state"):
        d.get_state(os.getpid())
    assert d.is_cuda_process(os.getpid()) is False


def test_lock_timeout_error_is_named(mocker: MockerFixture) -> None:
    lib = MockLib(mocker)
    lib.fns["cuCheckpointProcessLock"].return_value = 909
    with pytest.raises(CudaError) as ei:
        Driver(lib=lib).lock(os.getpid(), timeout_ms=10)
    e = ei.value
    assert (e.name, e.result, e.pid, e.step) == ("CUDA_ERROR_TIMEOUT", 909, os.getpid(), "lock")
    assert "longer timeout" in str(e)


def test_hang_fires_the_watchdog_and_the_call_can_be_awaited(mocker: MockerFixture) -> None:
    lib = MockLib(mocker)
    release = threading.Event()
    lib.fns["cuCheckpointProcessCheckpoint"].side_effect = lambda pid, a: (release.wait(10), 0)[1]
    d = Driver(lib=lib)
    t0 = time.monotonic()
    with pytest.raises(CudaTimeoutError) as ei:
        d.checkpoint(4242 if not os.path.exists("/proc/4242") else os.getpid(), timeout_s=0.3)
    # the watchdog fired (not before its deadline) while the call still hung: the hung call waits up to 10 s
    assert 0.3 <= time.monotonic() - t0 < 10 and not release.is_set()
    assert ei.value.step == "checkpoint" and ei.value.elapsed_s >= 0.3
    assert "frozen or stopped" in str(ei.value)
    pid = ei.value.pid
    assert pid is not None
    assert d.wait_pending(pid, 0.05) is False
    release.set()
    assert d.wait_pending(pid, 5) is True


def test_lock_watchdog_deadline_follows_timeout_ms(mocker: MockerFixture) -> None:
    lib = MockLib(mocker)
    lib.fns["cuCheckpointProcessLock"].side_effect = lambda pid, a: (time.sleep(3), 0)[1]
    d = Driver(lib=lib)
    d.lock_margin_s = 0.1
    with pytest.raises(CudaTimeoutError, match="lock did not return"):
        d.lock(os.getpid(), timeout_ms=100)


def test_progress_ticks_during_long_calls(mocker: MockerFixture) -> None:
    """A long call reports progress: the call returns only after two ticks came (an event, not a time window)."""
    lib = MockLib(mocker)
    two = threading.Event()
    lib.fns["cuCheckpointProcessCheckpoint"].side_effect = lambda pid, a: (two.wait(60), 0)[1]
    ticks: list[float] = []

    def tick(elapsed: float) -> None:
        ticks.append(elapsed)
        if len(ticks) >= 2:
            two.set()

    Driver(lib=lib).checkpoint(os.getpid(), timeout_s=120, on_tick=tick)
    assert two.is_set() and len(ticks) >= 2 and ticks == sorted(ticks)


def test_missing_library_is_a_clear_error() -> None:
    with pytest.raises(CudaUnavailableError, match="cannot load the CUDA driver library '/nonexistent/libcuda.so.1'"):
        Driver("/nonexistent/libcuda.so.1").get_state(1)


def test_too_old_driver(mocker: MockerFixture) -> None:
    with pytest.raises(CudaUnavailableError, match=r"too old: API 12.4 < 12.8 \(driver 570\)"):
        Driver(lib=MockLib(mocker, api=12040)).lock(os.getpid())
    with pytest.raises(CudaUnavailableError, match="lacks the CUDA checkpoint API.*cuCheckpointProcessLock"):
        Driver(lib=MockLib(mocker, missing=("cuCheckpointProcessLock",))).lock(os.getpid())


def test_restore_passes_gpu_pairs(mocker: MockerFixture) -> None:
    lib = MockLib(mocker)
    seen: list[tuple[bytes, bytes, int]] = []

    def restore(pid: int, ref: Any) -> int:
        a = ref._obj
        seen.extend((bytes(a.gpuPairs[i].oldUuid.bytes), bytes(a.gpuPairs[i].newUuid.bytes), a.gpuPairsCount)
                    for i in range(a.gpuPairsCount))
        return 0

    lib.fns["cuCheckpointProcessRestore"].side_effect = restore
    old, new = "GPU-4c0d3cfe-78ac-abba-5992-252c04cba5eb", "GPU-00000000-0000-4000-8000-000000000001"
    Driver(lib=lib).restore(os.getpid(), [(old, new)])
    assert seen == [(uuid_bytes(old), uuid_bytes(new), 1)]
    # the struct is the driver-580 layout from cuda.h: 8 + 4 + 44 + 8 = 64 bytes
    assert ctypes.sizeof(_lib.RestoreArgs) == 64 and ctypes.sizeof(_lib.LockArgs) == 64
    with pytest.raises(CudaError, match="needs driver 580"):
        Driver(lib=MockLib(mocker, api=12080)).restore(os.getpid(), [(old, new)])
    with pytest.raises(CudaError, match="not a GPU UUID"):
        uuid_bytes("GPU-nope")


# -- through ctypes into the fake driver ------------------------------------------------------------------------

def _workload(fc: FakeCuda, tmp_path: Path, gpu_bytes: int = 1 << 30) -> subprocess.Popen[bytes]:
    out = tmp_path / "count.log"
    p = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(out), str(gpu_bytes)], env={**os.environ, **fc.env},
                         start_new_session=True)
    wait_for(lambda: fc.state(p.pid) == "RUNNING" and Path(f"{out}.0").exists(), what="fake CUDA workload")
    return p


def test_fake_driver_state_machine(fake_cuda: FakeCuda, tmp_path: Path) -> None:
    p = _workload(fake_cuda, tmp_path)
    try:
        d = Driver(str(fake_cuda.lib))
        assert d.get_state(p.pid) is ProcessState.RUNNING
        d.lock(p.pid)
        assert fake_cuda.state(p.pid) == "LOCKED"
        with pytest.raises(CudaError, match="CUDA_ERROR_ILLEGAL_STATE"):
            d.restore(p.pid)
        d.checkpoint(p.pid)
        assert d.get_state(p.pid) is ProcessState.CHECKPOINTED
        assert d.restore_thread_id(p.pid) > 0
        d.restore(p.pid, [("GPU-00000000-0000-4000-8000-000000000000", "GPU-00000000-0000-4000-8000-000000000001")])
        d.unlock(p.pid)
        assert fake_cuda.state(p.pid) == "RUNNING"
        uses = Nvml(str(fake_cuda.lib)).usage()
        assert uses[p.pid].memory == {"GPU-00000000-0000-4000-8000-000000000001": 1 << 30}
        assert not d.is_cuda_process(os.getpid())
    finally:
        p.kill()
        p.wait()


def test_fake_driver_blocks_on_a_stopped_process(fake_cuda: FakeCuda, tmp_path: Path) -> None:
    p = _workload(fake_cuda, tmp_path)
    try:
        d = Driver(str(fake_cuda.lib), call_timeout_s=0.5)
        os.kill(p.pid, signal.SIGSTOP)
        wait_for(lambda: Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T", what="stop")
        with pytest.raises(CudaTimeoutError, match=f"pid {p.pid}: CUDA get-state did not return"):
            d.get_state(p.pid)
        assert d.restore_thread_id(p.pid) == p.pid  # the one call that does not block
        os.kill(p.pid, signal.SIGCONT)
        assert d.wait_pending(p.pid, 5)
        assert d.get_state(p.pid) is ProcessState.RUNNING
    finally:
        p.kill()
        p.wait()


def test_fake_driver_injected_failure(fake_cuda: FakeCuda, tmp_path: Path) -> None:
    p = _workload(fake_cuda, tmp_path)
    try:
        d = Driver(str(fake_cuda.lib))
        fake_cuda.fail("lock", 999, once=True)
        with pytest.raises(CudaError, match="CUDA_ERROR_UNKNOWN"):
            d.lock(p.pid)
        d.lock(p.pid)
        d.unlock(p.pid)
        assert fake_cuda.state(p.pid) == "RUNNING"
    finally:
        p.kill()
        p.wait()


def test_fake_driver_too_old(fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CUDA_DRIVER_VERSION", "12040")
    with pytest.raises(CudaUnavailableError, match="too old"):
        Driver(str(fake_cuda.lib)).get_state(os.getpid())

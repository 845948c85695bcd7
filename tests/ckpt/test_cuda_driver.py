"""The CUDA driver wrapper: unit tests over a mocked libcuda (pytest-mock), then the same calls through the real
ctypes path into the fake driver built with gcc (state machine, frozen/stopped hazard, injected failures)."""

from __future__ import annotations

import contextlib
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


def test_get_state_failure_is_not_taken_for_a_non_cuda_process(mocker: MockerFixture) -> None:
    """Only the driver's "not initialised" answers mean no CUDA state; any other failure is an error to report."""
    lib = MockLib(mocker)
    lib.fns["cuCheckpointProcessGetState"].side_effect = lambda pid, ref: 999
    d = Driver(lib=lib)
    with pytest.raises(CudaError) as ei:
        d.get_state(os.getpid())
    assert not isinstance(ei.value, NotCudaProcessError) and "CUDA_ERROR_UNKNOWN" in str(ei.value)


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


def _count(tmp_path: Path) -> int:
    return int((tmp_path / "count.log.0").read_text() or 0)


GPU0, GPU1 = "GPU-00000000-0000-4000-8000-000000000000", "GPU-00000000-0000-4000-8000-000000000001"


def test_fake_driver_state_machine(fake_cuda: FakeCuda, tmp_path: Path) -> None:
    """The teeth: the device is mapped unless CHECKPOINTED; the workload makes no progress unless RUNNING; restore's
    GPU pairs must be one-to-one over every GPU."""
    p = _workload(fake_cuda, tmp_path)
    try:
        d = Driver(str(fake_cuda.lib))
        assert d.get_state(p.pid) is ProcessState.RUNNING and fake_cuda.maps_device(p.pid)
        d.lock(p.pid)
        assert fake_cuda.state(p.pid) == "LOCKED" and fake_cuda.maps_device(p.pid)
        n = _count(tmp_path)
        time.sleep(0.5)  # ten ticks' worth: none may come while locked
        assert _count(tmp_path) == n
        with pytest.raises(CudaError, match="CUDA_ERROR_ILLEGAL_STATE"):
            d.restore(p.pid)
        d.checkpoint(p.pid)
        assert d.get_state(p.pid) is ProcessState.CHECKPOINTED
        assert not fake_cuda.maps_device(p.pid)  # what lets CRIU dump it
        assert not any(os.readlink(f"/proc/{p.pid}/fd/{fd}") == str(fake_cuda.device)
                       for fd in os.listdir(f"/proc/{p.pid}/fd"))
        assert d.restore_thread_id(p.pid) > 0
        for bad in ([(GPU0, GPU1)], [(GPU0, GPU1), (GPU1, GPU1)], [(GPU0, GPU0), (GPU0, GPU1)],
                    [(GPU0, GPU1), (GPU1, "GPU-00000000-0000-4000-8000-000000000007")]):
            with pytest.raises(CudaError, match="CUDA_ERROR_INVALID_VALUE"):
                d.restore(p.pid, bad)
            assert fake_cuda.state(p.pid) == "CHECKPOINTED"
        time.sleep(0.3)
        assert _count(tmp_path) == n  # nor while checkpointed
        d.restore(p.pid, [(GPU0, GPU1), (GPU1, GPU0)])
        assert fake_cuda.state(p.pid) == "LOCKED" and fake_cuda.maps_device(p.pid)
        d.unlock(p.pid)
        assert fake_cuda.state(p.pid) == "RUNNING"
        wait_for(lambda: _count(tmp_path) > n, what="the workload to make progress again")
        uses = Nvml(str(fake_cuda.lib)).usage()
        assert uses[p.pid].memory == {GPU1: 1 << 30}
        assert not d.is_cuda_process(os.getpid())
    finally:
        p.kill()
        p.wait()


#: a process inside a long unit of GPU work (it never reaches a safe point)
BUSY = r"""
import ctypes, os, sys, time
lib = ctypes.CDLL(os.environ["GPUCR_LIBCUDA"])
assert lib.fakeCudaRegister(ctypes.c_ulonglong(1 << 20), 0) == 0
lib.fakeCudaBegin()
open(sys.argv[1], "w").close()
time.sleep(3600)
"""


def test_fake_lock_honours_timeout_ms(fake_cuda: FakeCuda, tmp_path: Path) -> None:
    """A process whose GPU work does not drain: lock answers CUDA_ERROR_TIMEOUT after timeoutMs (not the watchdog),
    and the process stays RUNNING."""
    started = tmp_path / "busy"
    p = subprocess.Popen([sys.executable, "-c", BUSY, str(started)], env={**os.environ, **fake_cuda.env},
                         start_new_session=True)
    try:
        wait_for(started.exists, what="busy fake CUDA process")
        d = Driver(str(fake_cuda.lib))
        t0 = time.monotonic()
        with pytest.raises(CudaError) as ei:
            d.lock(p.pid, timeout_ms=300)
        assert not isinstance(ei.value, CudaTimeoutError) and ei.value.name == "CUDA_ERROR_TIMEOUT"
        assert time.monotonic() - t0 >= 0.3
        assert fake_cuda.state(p.pid) == "RUNNING"
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


def _criu(criu: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([criu, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.criu
def test_fake_has_the_real_drivers_teeth_under_criu(criu_binary: str, fake_cuda: FakeCuda, tmp_path: Path) -> None:
    """CRIU refuses a RUNNING (or LOCKED) fake CUDA process as it refuses one on driver 580 ("Can't handle
    non-regular mapping"); once checkpointed it dumps; the restored process is CHECKPOINTED because its image was,
    even though the original ran on (RUNNING) after the dump, and it makes progress only after restore + unlock."""
    out = tmp_path / "count.log"
    p = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(out), str(1 << 20)], env={**os.environ, **fake_cuda.env},
                         start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    restored = 0
    try:
        wait_for(lambda: fake_cuda.state(p.pid) == "RUNNING" and Path(f"{out}.0").exists(), what="workload")
        d = Driver(str(fake_cuda.lib))
        refused = tmp_path / "refused"
        refused.mkdir()
        r = _criu(criu_binary, "dump", "-t", str(p.pid), "-D", str(refused), "--leave-running", "-o", "dump.log")
        log = (refused / "dump.log").read_text()
        assert r.returncode != 0 and "Can't handle non-regular mapping" in log, log[-2000:]
        d.lock(p.pid)
        images = tmp_path / "images"
        images.mkdir()
        d.checkpoint(p.pid)
        r = _criu(criu_binary, "dump", "-t", str(p.pid), "-D", str(images), "--leave-running", "-o", "dump.log")
        assert r.returncode == 0, (images / "dump.log").read_text()[-2000:]
        d.restore(p.pid)
        d.unlock(p.pid)
        assert fake_cuda.state(p.pid) == "RUNNING"
        n = _count(tmp_path)
        wait_for(lambda: _count(tmp_path) > n, what="the original to run on")
        p.kill()
        p.wait()
        r = _criu(criu_binary, "restore", "-D", str(images), "-d", "-o", "restore.log")
        assert r.returncode == 0, (images / "restore.log").read_text()[-2000:]
        restored = p.pid
        assert d.get_state(restored) is ProcessState.CHECKPOINTED and not fake_cuda.maps_device(restored)
        n = _count(tmp_path)
        time.sleep(0.3)
        assert _count(tmp_path) == n  # checkpointed: no progress
        d.restore(restored, [(GPU0, GPU0), (GPU1, GPU1)])
        d.unlock(restored)
        assert fake_cuda.maps_device(restored)
        wait_for(lambda: _count(tmp_path) > n, what="the restored workload to make progress")
    finally:
        p.kill()
        p.wait()
        if restored:
            with contextlib.suppress(ProcessLookupError):
                os.kill(restored, signal.SIGKILL)

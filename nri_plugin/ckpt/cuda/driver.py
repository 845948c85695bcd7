"""A Pythonic wrapper over the CUDA driver's checkpoint API, with our own watchdog around every call.

Why a watchdog: on driver 580 every checkpoint call (even get-state) blocks while the target process is frozen or
stopped, and ``timeoutMs`` does not bound that. A ctypes call cannot be cancelled, so each call runs in its own daemon
thread and the caller waits with a deadline; past it we raise :class:`CudaTimeoutError` naming the pid, the step and
the time waited, and remember the still-blocked call so that rollback can wait for it (it completes once the process
is thawed) before deciding what to undo.

This module does not decide policy (which processes, in which order, when to thaw): that is ``engine.py``.
Spec: CUDA driver API "CUDA Checkpointing" (states RUNNING 0, LOCKED 1, CHECKPOINTED 2, FAILED 3; restore GPU pairs
since driver 580 / CUDA 13.0).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ...errors import GpucrError
from . import _lib

__all__ = [
    "CUDA_ERROR_NAMES", "MIN_DRIVER_API", "REMAP_DRIVER_API", "CudaError", "CudaTimeoutError", "CudaUnavailableError",
    "Driver", "NotCudaProcessError", "ProcessState", "format_api_version",
]

log = logging.getLogger(__name__)

#: cuDriverGetVersion of driver 570 (CUDA 12.8), the first with the checkpoint API
MIN_DRIVER_API = 12080
#: cuDriverGetVersion of driver 580 (CUDA 13.0): restore takes old->new GPU UUID pairs
REMAP_DRIVER_API = 13000

DEFAULT_CALL_TIMEOUT_S = 30.0
DEFAULT_LOCK_TIMEOUT_MS = 30_000
#: the watchdog gives lock this much longer than the timeoutMs handed to the driver
LOCK_WATCHDOG_MARGIN_S = 5.0
TICK_S = 0.5

CUDA_SUCCESS = 0
#: get-state results for a live process that holds no CUDA state (driver 580: NOT_INITIALIZED; INVALID_VALUE too)
NOT_CUDA_RESULTS = frozenset({1, 3})
CUDA_ERROR_NAMES = {
    0: "CUDA_SUCCESS", 1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY", 3: "CUDA_ERROR_NOT_INITIALIZED",
    4: "CUDA_ERROR_DEINITIALIZED", 100: "CUDA_ERROR_NO_DEVICE", 101: "CUDA_ERROR_INVALID_DEVICE",
    201: "CUDA_ERROR_INVALID_CONTEXT", 304: "CUDA_ERROR_OPERATING_SYSTEM", 400: "CUDA_ERROR_INVALID_HANDLE", 401: "CUDA_ERROR_ILLEGAL_STATE",
    500: "CUDA_ERROR_NOT_FOUND", 700: "CUDA_ERROR_ILLEGAL_ADDRESS", 801: "CUDA_ERROR_NOT_SUPPORTED",
    802: "CUDA_ERROR_SYSTEM_NOT_READY", 804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
    909: "CUDA_ERROR_TIMEOUT", 999: "CUDA_ERROR_UNKNOWN",
}


class ProcessState(IntEnum):
    """``CUprocessState``."""

    RUNNING = 0
    LOCKED = 1
    CHECKPOINTED = 2
    FAILED = 3


class CudaError(GpucrError):
    """A driver call failed. ``result`` is the CUresult (-1 when no call was made), ``name`` its name."""

    def __init__(self, message: str, *, result: int = -1, name: str = "", pid: int | None = None,
                 step: str = "") -> None:
        super().__init__(message)
        self.result, self.name, self.pid, self.step = result, name, pid, step


class CudaUnavailableError(CudaError):
    """libcuda is missing, lacks the checkpoint API, or is older than driver 570."""


class NotCudaProcessError(CudaError):
    """The pid holds no CUDA state (the driver does not know it)."""


class CudaTimeoutError(CudaError):
    """Our watchdog fired: the call did not return within ``elapsed_s`` (it may still be blocked in the driver)."""

    def __init__(self, message: str, *, pid: int | None, step: str, elapsed_s: float) -> None:
        super().__init__(message, pid=pid, step=step, name="GPUCR_WATCHDOG_TIMEOUT")
        self.elapsed_s = elapsed_s


def format_api_version(v: int) -> str:
    """13000 -> '13.0' (cuDriverGetVersion encodes 1000*major + 10*minor)."""
    return f"{v // 1000}.{(v % 1000) // 10}"


@dataclass
class _Pending:
    """A call the watchdog gave up on; ``done`` is set when the driver finally returns."""

    step: str
    started: float
    done: threading.Event
    box: dict[str, Any]


Tick = Callable[[float], None]


class Driver:
    """The CUDA checkpoint API of one libcuda, opened lazily on first use.

    Args:
        path: libcuda to open (default ``libcuda.so.1``); a fake driver's path in tests.
        lib: an already opened :class:`_lib.LibCuda`-like object (unit tests); overrides ``path``.
        call_timeout_s: watchdog deadline for calls that take no explicit one.

    Every public method raises :class:`CudaError` (or a subclass) and never blocks past its deadline.
    """

    def __init__(self, path: str | None = None, *, lib: Any = None,
                 call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        self.path = path or (lib.path if lib is not None else _lib.DEFAULT_LIBCUDA)
        self._lib = lib
        self._ready = False
        self._api_version = 0
        self.call_timeout_s = call_timeout_s
        self.lock_margin_s = LOCK_WATCHDOG_MARGIN_S
        self._pending: dict[int | None, _Pending] = {}
        self._mu = threading.Lock()

    # -- setup ---------------------------------------------------------------------------------------------------
    def _ensure(self) -> Any:
        with self._mu:
            if self._ready:
                return self._lib
            if self._lib is None:
                try:
                    self._lib = _lib.load_libcuda(self.path)
                except OSError as exc:
                    raise CudaUnavailableError(
                        f"cannot load the CUDA driver library {self.path!r}: {exc}; install the NVIDIA driver (>= 570) "
                        f"or point GPUCR_LIBCUDA at libcuda.so.1", step="load") from exc
            missing = [s for s in (*_lib.CHECKPOINT_SYMBOLS, "cuInit", "cuDriverGetVersion") if not self._lib.has(s)]
            if missing:
                raise CudaUnavailableError(
                    f"{self.path} lacks the CUDA checkpoint API ({', '.join(missing)}): the driver is older than 570; "
                    f"upgrade the NVIDIA driver to 570 or newer (580+ to restore onto other GPUs)", step="load")
        rc = self._call_raw("init", None, "cuInit", (0,), self.call_timeout_s)
        if rc != CUDA_SUCCESS:
            raise CudaUnavailableError(f"cuInit failed: {self._describe(rc)}; is an NVIDIA GPU visible to gpucr?",
                                       result=rc, name=self.error_name(rc), step="init")
        v = _lib.new_int()
        rc = self._call_raw("driver-version", None, "cuDriverGetVersion", (_lib.byref(v),), self.call_timeout_s)
        if rc != CUDA_SUCCESS:
            raise CudaUnavailableError(f"cuDriverGetVersion failed: {self._describe(rc)}", result=rc,
                                       name=self.error_name(rc), step="driver-version")
        if v.value < MIN_DRIVER_API:
            raise CudaUnavailableError(
                f"the CUDA driver is too old: API {format_api_version(v.value)} < 12.8 (driver 570); "
                f"upgrade the NVIDIA driver to 570 or newer", step="driver-version")
        with self._mu:
            self._api_version = v.value
            self._ready = True
        return self._lib

    @property
    def api_version(self) -> int:
        """cuDriverGetVersion (e.g. 13000 for driver 580); opens the driver."""
        self._ensure()
        return self._api_version

    @property
    def supports_remap(self) -> bool:
        return self.api_version >= REMAP_DRIVER_API

    @property
    def custom_storage(self) -> bool:
        """Whether the driver exports ``cuCheckpointOperationComplete`` (CUDA 13.4 "CustomStorage", where the caller
        copies GPU memory itself); driver 580 does not. Probed by symbol, so it never calls into a process."""
        lib = self._ensure()
        return bool(lib.has(_lib.CUSTOM_STORAGE_SYMBOL))

    # -- the watchdog --------------------------------------------------------------------------------------------
    def _call_raw(self, step: str, pid: int | None, name: str, args: Sequence[Any], deadline_s: float,
                  on_tick: Tick | None = None, *, behind_pending: bool = True) -> int:
        """Run ``lib.name(*args)`` in a daemon thread; return its result or raise CudaTimeoutError at the deadline.

        A call for a pid whose earlier call is still blocked first waits for that one (``behind_pending``): the
        driver would block it the same way, and the answer must not overtake the earlier step.
        """
        prev = self._pending.get(pid) if behind_pending else None
        if prev is not None and not prev.done.wait(deadline_s):
            elapsed = time.monotonic() - prev.started
            raise CudaTimeoutError(
                f"pid {pid}: an earlier {prev.step} call is still blocked in the CUDA driver after {elapsed:.1f}s "
                f"(is the process frozen or stopped? thaw its cgroup / SIGCONT it)", pid=pid, step=prev.step,
                elapsed_s=elapsed)
        if prev is not None:
            self._pending.pop(pid, None)
        fn = self._lib.fn(name)
        box: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                box["rc"] = fn(*args)
            except BaseException as exc:  # handed to the caller's thread below
                box["exc"] = exc
            finally:
                done.set()

        t0 = time.monotonic()
        threading.Thread(target=target, name=f"cuda-{step}-{pid}", daemon=True).start()
        while not done.wait(TICK_S if on_tick else deadline_s):
            elapsed = time.monotonic() - t0
            if on_tick:
                on_tick(elapsed)
            if elapsed >= deadline_s:
                break
        if not done.is_set():
            elapsed = time.monotonic() - t0
            if behind_pending:
                self._pending[pid] = _Pending(step, t0, done, box)
            log.warning("watchdog: %s of pid %s still blocked after %.1fs", step, pid, elapsed)
            raise CudaTimeoutError(
                f"pid {pid}: CUDA {step} did not return within {elapsed:.1f}s (gpucr's watchdog); the process is "
                f"probably frozen or stopped: thaw its cgroup or SIGCONT it, then retry", pid=pid, step=step,
                elapsed_s=elapsed)
        if "exc" in box:
            raise CudaError(f"pid {pid}: CUDA {step} raised {box['exc']!r}", pid=pid, step=step) from box["exc"]
        return int(box["rc"])

    def wait_pending(self, pid: int, timeout_s: float) -> bool:
        """Wait for a call the watchdog gave up on. True when none is left blocked for ``pid``."""
        p = self._pending.get(pid)
        if p is None:
            return True
        if p.done.wait(timeout_s):
            self._pending.pop(pid, None)
            return True
        return False

    def _check(self, step: str, pid: int, name: str, args: Sequence[Any], deadline_s: float | None = None,
               on_tick: Tick | None = None) -> None:
        self._ensure()
        rc = self._call_raw(step, pid, name, args, deadline_s or self.call_timeout_s, on_tick)
        if rc != CUDA_SUCCESS:
            raise self._error(step, pid, rc)

    def _error(self, step: str, pid: int, rc: int) -> CudaError:
        name = self.error_name(rc)
        if not os.path.exists(f"/proc/{pid}"):
            return CudaError(f"pid {pid}: CUDA {step} failed: no such process", result=rc, name=name, pid=pid,
                             step=step)
        hint = {
            "CUDA_ERROR_ILLEGAL_STATE": "the process is in the wrong checkpoint state for this step",
            "CUDA_ERROR_NOT_SUPPORTED": "the driver refuses this process (MIG, MPS, UVM or an unsupported feature?)",
            "CUDA_ERROR_TIMEOUT": "the GPU work did not drain within the lock timeout; retry with a longer timeout",
            "CUDA_ERROR_NOT_INITIALIZED": "the process has not initialised CUDA",
        }.get(name, "")
        return CudaError(f"pid {pid}: CUDA {step} failed: {self._describe(rc)}" + (f" ({hint})" if hint else ""),
                         result=rc, name=name, pid=pid, step=step)

    # -- errors --------------------------------------------------------------------------------------------------
    def error_name(self, rc: int) -> str:
        """The CUresult's name, from the driver when it can say, else from our table."""
        lib = self._lib
        if lib is not None and lib.has("cuGetErrorName"):
            s = _lib.c_char_p()
            try:
                if lib.fn("cuGetErrorName")(rc, _lib.byref(s)) == CUDA_SUCCESS and s.value:
                    return str(s.value.decode())
            except Exception:  # a broken fake must not hide the real error
                pass
        return CUDA_ERROR_NAMES.get(rc, f"CUresult {rc}")

    def error_string(self, rc: int) -> str:
        lib = self._lib
        if lib is not None and lib.has("cuGetErrorString"):
            s = _lib.c_char_p()
            try:
                if lib.fn("cuGetErrorString")(rc, _lib.byref(s)) == CUDA_SUCCESS and s.value:
                    return str(s.value.decode())
            except Exception:
                pass
        return ""

    def _describe(self, rc: int) -> str:
        text = self.error_string(rc)
        return f"{self.error_name(rc)} ({rc})" + (f": {text}" if text else "")

    # -- the checkpoint API --------------------------------------------------------------------------------------
    def get_state(self, pid: int, timeout_s: float | None = None) -> ProcessState:
        """The process's checkpoint state. Raises NotCudaProcessError when the driver does not know the pid."""
        self._ensure()
        s = _lib.new_int()
        rc = self._call_raw("get-state", pid, "cuCheckpointProcessGetState", (pid, _lib.byref(s)),
                            timeout_s or self.call_timeout_s)
        if rc != CUDA_SUCCESS:
            err = self._error("get-state", pid, rc)
            # only these say "no CUDA state here" for a live pid; any other code is a driver failure, not a process
            # to leave out of the checkpoint (CRIU would then meet its device mappings)
            if rc in NOT_CUDA_RESULTS and os.path.exists(f"/proc/{pid}"):
                raise NotCudaProcessError(f"pid {pid} holds no CUDA state ({err.name})", result=rc, name=err.name,
                                          pid=pid, step="get-state")
            raise err
        try:
            return ProcessState(s.value)
        except ValueError as exc:
            raise CudaError(f"pid {pid}: unknown CUDA process state {s.value}", pid=pid, step="get-state") from exc

    def is_cuda_process(self, pid: int, timeout_s: float | None = None) -> bool:
        try:
            self.get_state(pid, timeout_s)
            return True
        except NotCudaProcessError:
            return False

    def lock(self, pid: int, timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, on_tick: Tick | None = None) -> None:
        """Lock: wait for submitted work to drain and block further CUDA calls. RUNNING -> LOCKED."""
        args = _lib.LockArgs()
        args.timeoutMs = timeout_ms
        self._check("lock", pid, "cuCheckpointProcessLock", (pid, _lib.byref(args)),
                    timeout_ms / 1000 + self.lock_margin_s, on_tick)

    def checkpoint(self, pid: int, timeout_s: float | None = None, on_tick: Tick | None = None) -> None:
        """Copy GPU memory to host and release the GPU. LOCKED -> CHECKPOINTED."""
        self._check("checkpoint", pid, "cuCheckpointProcessCheckpoint", (pid, None), timeout_s, on_tick)

    def restore(self, pid: int, gpu_pairs: Sequence[tuple[str, str]] = (), timeout_s: float | None = None,
                on_tick: Tick | None = None) -> None:
        """Copy GPU memory back. CHECKPOINTED -> LOCKED. ``gpu_pairs``: (old UUID, new UUID), driver >= 580."""
        self._ensure()
        if not gpu_pairs:
            self._check("restore", pid, "cuCheckpointProcessRestore", (pid, None), timeout_s, on_tick)
            return
        if self._api_version < REMAP_DRIVER_API:
            raise CudaError(f"pid {pid}: restoring onto other GPUs needs driver 580 (CUDA 13.0); this driver is "
                            f"CUDA {format_api_version(self._api_version)}", pid=pid, step="restore")
        raw = [(uuid_bytes(a), uuid_bytes(b)) for a, b in gpu_pairs]
        arr = _lib.gpu_pair_array(raw)
        args = _lib.restore_args(arr, len(raw))
        self._check("restore", pid, "cuCheckpointProcessRestore", (pid, _lib.byref(args)), timeout_s, on_tick)

    def unlock(self, pid: int, timeout_s: float | None = None) -> None:
        """Let the process call CUDA again. LOCKED -> RUNNING."""
        self._check("unlock", pid, "cuCheckpointProcessUnlock", (pid, None), timeout_s)

    def restore_thread_id(self, pid: int) -> int:
        """The host tid of the driver's restore thread in the process (CRIU must leave it alone)."""
        self._ensure()
        t = _lib.new_int()
        # the one call that answers for a frozen process: it must not queue behind a blocked call
        rc = self._call_raw("restore-thread-id", pid, "cuCheckpointProcessGetRestoreThreadId", (pid, _lib.byref(t)),
                            self.call_timeout_s, behind_pending=False)
        if rc != CUDA_SUCCESS:
            raise self._error("restore-thread-id", pid, rc)
        return int(t.value)


def uuid_bytes(u: str) -> bytes:
    """'GPU-6f0b…' (NVML form) or a bare UUID -> the 16 raw bytes of a CUuuid."""
    s = u.strip()
    if s.upper().startswith("GPU-"):
        s = s[4:]
    try:
        return uuidlib.UUID(s).bytes
    except ValueError as exc:
        raise CudaError(f"not a GPU UUID: {u!r} (expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
                        step="restore") from exc

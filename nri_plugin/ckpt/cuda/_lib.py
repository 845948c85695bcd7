"""ctypes prototypes for the CUDA driver's checkpoint API and the few NVML calls discovery needs.

This is the only module in gpucr that imports ctypes. It opens ``libcuda.so.1`` (or a configured path, e.g. the fake
driver the tests build) lazily, on first use, so the package imports on a host without a GPU. It declares argument
and result types and nothing else: no policy, no threads, no error translation (see ``driver.py``).

Spec: CUDA driver API, "CUDA Checkpointing" (cuda.h of CUDA 12.8+; the restore GPU-pair struct of CUDA 13.0 /
driver 580) and NVML's ``nvml.h`` (device count, handle, UUID, name, running compute processes).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHECKPOINT_SYMBOLS", "CUSTOM_STORAGE_SYMBOL", "DEFAULT_LIBCUDA", "DEFAULT_LIBNVML", "CheckpointArgs", "GpuPair", "LibCuda", "LibNvml",
    "LockArgs", "NvmlProcessInfo", "RestoreArgs", "UnlockArgs", "load_libcuda", "load_libnvml",
]

DEFAULT_LIBCUDA = "libcuda.so.1"
DEFAULT_LIBNVML = "libnvidia-ml.so.1"

#: the checkpoint entry points; a libcuda lacking any of them predates driver 570 (CUDA 12.8)
CHECKPOINT_SYMBOLS = (
    "cuCheckpointProcessGetState", "cuCheckpointProcessLock", "cuCheckpointProcessCheckpoint",
    "cuCheckpointProcessRestore", "cuCheckpointProcessUnlock", "cuCheckpointProcessGetRestoreThreadId",
)
#: CUDA 13.4's "CustomStorage" completion call (the caller copies GPU memory itself); not exported by driver 580
CUSTOM_STORAGE_SYMBOL = "cuCheckpointOperationComplete"


class LockArgs(ctypes.Structure):
    """``CUcheckpointLockArgs``: timeoutMs, reserved0, reserved1[7] (64 bytes)."""

    _fields_ = [("timeoutMs", ctypes.c_uint), ("reserved0", ctypes.c_uint), ("reserved1", ctypes.c_uint64 * 7)]


class CheckpointArgs(ctypes.Structure):
    """``CUcheckpointCheckpointArgs``: reserved[8] (64 bytes); callers may pass NULL instead."""

    _fields_ = [("reserved", ctypes.c_uint64 * 8)]


class UnlockArgs(ctypes.Structure):
    """``CUcheckpointUnlockArgs``: reserved[8] (64 bytes); callers may pass NULL instead."""

    _fields_ = [("reserved", ctypes.c_uint64 * 8)]


class CUuuid(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_ubyte * 16)]


class GpuPair(ctypes.Structure):
    """``CUcheckpointGpuPair`` (driver 580): the GPU a process used at checkpoint, and the one it restores onto."""

    _fields_ = [("oldUuid", CUuuid), ("newUuid", CUuuid)]


class RestoreArgs(ctypes.Structure):
    """``CUcheckpointRestoreArgs`` (driver 580): gpuPairs, gpuPairsCount, reserved[52 - sizeof(ptr)], reserved1."""

    _fields_ = [("gpuPairs", ctypes.POINTER(GpuPair)), ("gpuPairsCount", ctypes.c_uint),
                ("reserved", ctypes.c_char * (52 - ctypes.sizeof(ctypes.c_void_p))), ("reserved1", ctypes.c_uint64)]


class NvmlProcessInfo(ctypes.Structure):
    """``nvmlProcessInfo_t`` (v2/v3 layout): pid, usedGpuMemory, gpuInstanceId, computeInstanceId."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong), ("gpuInstanceId", ctypes.c_uint),
                ("computeInstanceId", ctypes.c_uint)]


_INT_P = ctypes.POINTER(ctypes.c_int)
_STR_P = ctypes.POINTER(ctypes.c_char_p)
_PROTOS: dict[str, tuple[Any, list[Any]]] = {
    "cuInit": (ctypes.c_int, [ctypes.c_uint]),
    "cuDriverGetVersion": (ctypes.c_int, [_INT_P]),
    "cuGetErrorName": (ctypes.c_int, [ctypes.c_int, _STR_P]),
    "cuGetErrorString": (ctypes.c_int, [ctypes.c_int, _STR_P]),
    "cuCheckpointProcessGetState": (ctypes.c_int, [ctypes.c_int, _INT_P]),
    "cuCheckpointProcessLock": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(LockArgs)]),
    "cuCheckpointProcessCheckpoint": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(CheckpointArgs)]),
    "cuCheckpointProcessRestore": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(RestoreArgs)]),
    "cuCheckpointProcessUnlock": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(UnlockArgs)]),
    "cuCheckpointProcessGetRestoreThreadId": (ctypes.c_int, [ctypes.c_int, _INT_P]),
    CUSTOM_STORAGE_SYMBOL: (ctypes.c_int, [ctypes.c_void_p]),
}
_NVML_PROTOS: dict[str, tuple[Any, list[Any]]] = {
    "nvmlInit_v2": (ctypes.c_int, []),
    "nvmlSystemGetDriverVersion": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint]),
    "nvmlDeviceGetCount_v2": (ctypes.c_int, [ctypes.POINTER(ctypes.c_uint)]),
    "nvmlDeviceGetHandleByIndex_v2": (ctypes.c_int, [ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)]),
    "nvmlDeviceGetUUID": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]),
    "nvmlDeviceGetName": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]),
    "nvmlDeviceGetComputeRunningProcesses_v3": (
        ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(NvmlProcessInfo)]),
}


@dataclass
class LibCuda:
    """An opened libcuda: ``fn(name)`` returns the typed entry point, ``has(name)`` says whether it is exported."""

    path: str
    cdll: ctypes.CDLL

    def has(self, name: str) -> bool:
        return hasattr(self.cdll, name)

    def fn(self, name: str) -> Any:
        return getattr(self.cdll, name)


@dataclass
class LibNvml:
    path: str
    cdll: ctypes.CDLL

    def fn(self, name: str) -> Any:
        return getattr(self.cdll, name)


_lock = threading.Lock()
_cache: dict[str, ctypes.CDLL] = {}


def _open(path: str, protos: dict[str, tuple[Any, list[Any]]]) -> ctypes.CDLL:
    """dlopen once per path (OSError if missing) and set the prototypes of the symbols it exports."""
    with _lock:
        lib = _cache.get(path)
        if lib is None:
            lib = ctypes.CDLL(path)
            for name, (restype, argtypes) in protos.items():
                if hasattr(lib, name):
                    f = getattr(lib, name)
                    f.restype, f.argtypes = restype, argtypes
            _cache[path] = lib
        return lib


def load_libcuda(path: str | None = None) -> LibCuda:
    """Open libcuda (default ``libcuda.so.1``). Raises OSError when it cannot be loaded."""
    p = path or DEFAULT_LIBCUDA
    return LibCuda(p, _open(p, _PROTOS))


def load_libnvml(path: str | None = None) -> LibNvml:
    """Open NVML (default ``libnvidia-ml.so.1``). Raises OSError when it cannot be loaded."""
    p = path or DEFAULT_LIBNVML
    return LibNvml(p, _open(p, _NVML_PROTOS))


def new_int() -> ctypes.c_int:
    return ctypes.c_int(-1)


def byref(obj: Any) -> Any:
    return ctypes.byref(obj)


def c_str_buffer(size: int) -> Any:
    return ctypes.create_string_buffer(size)


def c_char_p() -> ctypes.c_char_p:
    return ctypes.c_char_p()


def c_uint(v: int = 0) -> ctypes.c_uint:
    return ctypes.c_uint(v)


def c_void_p() -> ctypes.c_void_p:
    return ctypes.c_void_p()


def nvml_process_array(n: int) -> Any:
    return (NvmlProcessInfo * n)()


def gpu_pair_array(pairs: list[tuple[bytes, bytes]]) -> Any:
    """A ``CUcheckpointGpuPair[]`` from (old, new) 16-byte UUIDs; keep the result alive for the call."""
    arr = (GpuPair * len(pairs))()
    for i, (old, new) in enumerate(pairs):
        ctypes.memmove(arr[i].oldUuid.bytes, old, 16)
        ctypes.memmove(arr[i].newUuid.bytes, new, 16)
    return arr


def restore_args(pairs_arr: Any, count: int) -> RestoreArgs:
    args = RestoreArgs()
    args.gpuPairs = ctypes.cast(pairs_arr, ctypes.POINTER(GpuPair))
    args.gpuPairsCount = count
    return args

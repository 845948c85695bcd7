"""Which GPUs a process uses, and how much memory, from NVML (``libnvidia-ml.so.1``, or the fake driver's path).

NVML is only used for discovery and metadata: it never touches the target process, so it does not block on a frozen
one. When NVML cannot be loaded, discovery still works and records the GPUs as unknown.
Spec: ``nvml.h`` (nvmlDeviceGetComputeRunningProcesses_v3 reports host pids and used memory per device).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import GpucrError
from . import _lib

__all__ = ["Gpu", "GpuUse", "Nvml", "NvmlError"]

NVML_SUCCESS = 0
NVML_ERROR_INSUFFICIENT_SIZE = 7


class NvmlError(GpucrError):
    """NVML is missing or a call failed."""


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str


@dataclass
class GpuUse:
    """One process's use of the GPUs: UUID -> bytes of GPU memory."""

    pid: int
    memory: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.memory.values())


class Nvml:
    """A thin NVML view: GPUs and per-process memory. Opens the library on first use."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or _lib.DEFAULT_LIBNVML
        self._lib: _lib.LibNvml | None = None

    def _ensure(self) -> _lib.LibNvml:
        if self._lib is None:
            try:
                lib = _lib.load_libnvml(self.path)
            except OSError as exc:
                raise NvmlError(f"cannot load NVML {self.path!r}: {exc}") from exc
            rc = lib.fn("nvmlInit_v2")()
            if rc != NVML_SUCCESS:
                raise NvmlError(f"nvmlInit failed ({rc})")
            self._lib = lib
        return self._lib

    def _ok(self, rc: int, what: str) -> None:
        if rc != NVML_SUCCESS:
            raise NvmlError(f"NVML {what} failed ({rc})")

    def driver_version(self) -> str:
        lib = self._ensure()
        buf = _lib.c_str_buffer(96)
        self._ok(lib.fn("nvmlSystemGetDriverVersion")(buf, 96), "driver version")
        return str(buf.value.decode())

    def gpus(self) -> list[Gpu]:
        lib = self._ensure()
        n = _lib.c_uint()
        self._ok(lib.fn("nvmlDeviceGetCount_v2")(_lib.byref(n)), "device count")
        out = []
        for i in range(n.value):
            h = self._handle(i)
            ub, nb = _lib.c_str_buffer(96), _lib.c_str_buffer(96)
            self._ok(lib.fn("nvmlDeviceGetUUID")(h, ub, 96), f"uuid of GPU {i}")
            self._ok(lib.fn("nvmlDeviceGetName")(h, nb, 96), f"name of GPU {i}")
            out.append(Gpu(i, ub.value.decode(), nb.value.decode()))
        return out

    def _handle(self, index: int) -> object:
        h = _lib.c_void_p()
        self._ok(self._ensure().fn("nvmlDeviceGetHandleByIndex_v2")(index, _lib.byref(h)), f"handle of GPU {index}")
        return h

    def usage(self) -> dict[int, GpuUse]:
        """pid -> its GPU memory per GPU UUID, over every GPU."""
        lib = self._ensure()
        out: dict[int, GpuUse] = {}
        for g in self.gpus():
            h = self._handle(g.index)
            cap = 64
            while True:
                n = _lib.c_uint(cap)
                arr = _lib.nvml_process_array(cap)
                rc = lib.fn("nvmlDeviceGetComputeRunningProcesses_v3")(h, _lib.byref(n), arr)
                if rc == NVML_ERROR_INSUFFICIENT_SIZE and cap < 65536:
                    cap *= 4
                    continue
                self._ok(rc, f"processes of GPU {g.index}")
                break
            for i in range(n.value):
                p = arr[i]
                use = out.setdefault(int(p.pid), GpuUse(int(p.pid)))
                use.memory[g.uuid] = use.memory.get(g.uuid, 0) + int(p.usedGpuMemory)
        return out

"""The CUDA driver's checkpoint API (``driver``) and NVML's process view (``nvml``), over ctypes in ``_lib``."""

from .driver import (
    CudaError, CudaTimeoutError, CudaUnavailableError, Driver, NotCudaProcessError, ProcessState, format_api_version,
)
from .nvml import Gpu, GpuUse, Nvml, NvmlError

__all__ = [
    "CudaError", "CudaTimeoutError", "CudaUnavailableError", "Driver", "Gpu", "GpuUse", "NotCudaProcessError",
    "Nvml", "NvmlError", "ProcessState", "format_api_version",
]

"""Is this a GPU container? Detected from what the runtime will give it, before it runs.

Signals (any one is enough): the NVIDIA container toolkit's env (``NVIDIA_VISIBLE_DEVICES`` other than
``void``/``none``/empty), ``/dev/nvidia*`` device nodes or mounts in the spec, or CDI device names of the
``nvidia.com/`` vendor. Pure: plain strings in, a :class:`GpuRequest` out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["GpuRequest", "detect_gpus"]


@dataclass(frozen=True)
class GpuRequest:
    """What the container asked for; ``visible`` is the NVIDIA_VISIBLE_DEVICES value (indices, UUIDs or 'all')."""

    is_gpu: bool
    reasons: tuple[str, ...] = ()
    visible: str = ""
    devices: tuple[str, ...] = ()
    cdi: tuple[str, ...] = ()


def detect_gpus(env: Iterable[str], device_paths: Iterable[str] = (), cdi_devices: Iterable[str] = (),
                mount_destinations: Iterable[str] = ()) -> GpuRequest:
    """Args: env as "K=V" strings, device node paths, CDI names ("nvidia.com/gpu=0"), mount destinations."""
    reasons: list[str] = []
    visible = ""
    for kv in env:
        k, _, v = kv.partition("=")
        if k == "NVIDIA_VISIBLE_DEVICES":
            visible = v
            if v.strip().lower() not in ("", "void", "none"):
                reasons.append(f"env NVIDIA_VISIBLE_DEVICES={v}")
    devs = tuple(sorted({p for p in [*device_paths, *mount_destinations] if p.startswith("/dev/nvidia")}))
    if devs:
        reasons.append(f"devices {', '.join(devs)}")
    cdi = tuple(sorted(n for n in cdi_devices if n.startswith("nvidia.com/")))
    if cdi:
        reasons.append(f"CDI {', '.join(cdi)}")
    return GpuRequest(bool(reasons), tuple(reasons), visible, devs, cdi)

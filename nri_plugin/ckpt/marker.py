"""gpucr's marker in CRIU's images dir, ``gpucr-cuda.json``: the CUDA processes and GPUs of a dump made through the
CRIU front, for the restore (containerd packs the images dir into its checkpoint, so ``ctr c restore`` and CRI
restores bring it back), and for ``gpucr checkpoint --via-runtime``'s summary.

The one owner of that format. Cheap to import (the front asks for :data:`MARKER` on every RESTORE): no dataclasses,
and json is imported inside :func:`read`/:func:`write`.
"""

from __future__ import annotations

import os

from ..errors import GpucrError

TYPE_CHECKING = False  # not typing's: start-up cost on the front's path
if TYPE_CHECKING:
    from typing import Any

__all__ = ["MARKER", "MARKER_FORMAT", "CudaMarker", "MarkerError", "parse", "read", "write"]

MARKER = "gpucr-cuda.json"
MARKER_FORMAT = 1


class MarkerError(GpucrError):
    """The marker is unreadable or of another format (the message names the file)."""


class CudaMarker:
    """What the front recorded at dump time. ``processes``: ``{"pid", "gpus": {uuid: bytes}, ...}`` per CUDA
    process; ``gpus``: the node's GPUs, UUID -> chip; ``gpu_map``: the container's ``[old, new]`` pairs."""

    __slots__ = ("container_id", "managed", "pid", "processes", "gpus", "driver_version", "gpu_map")

    def __init__(self, container_id: str, managed: bool, pid: int, processes: list[dict[str, Any]],
                 gpus: dict[str, str], driver_version: str = "", gpu_map: list[list[str]] | None = None) -> None:
        self.container_id, self.managed, self.pid = container_id, managed, pid
        self.processes, self.gpus, self.driver_version = processes, gpus, driver_version
        self.gpu_map = gpu_map or []

    def to_json(self) -> dict[str, Any]:
        return {"format": MARKER_FORMAT, **{k: getattr(self, k) for k in self.__slots__}}


def parse(data: object, where: str) -> CudaMarker:
    """A marker from its decoded JSON. Raises MarkerError naming ``where`` when the format is not ours."""
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
        raise MarkerError(f"gpucr's marker {where} has an unknown format; restore it with the gpucr version that "
                          "made it")
    try:
        return CudaMarker(str(data.get("container_id") or ""), bool(data.get("managed")), int(data.get("pid") or 0),
                          list(data.get("processes") or []), dict(data.get("gpus") or {}),
                          str(data.get("driver_version") or ""), [list(p) for p in data.get("gpu_map") or []])
    except (TypeError, ValueError) as exc:
        raise MarkerError(f"gpucr's marker {where} is corrupt ({exc})") from exc


def read(images_dir: str) -> CudaMarker:
    """The marker of ``images_dir``.

    Raises:
        MarkerError: it is missing, unreadable or of another format.
    """
    import json
    path = os.path.join(images_dir, MARKER)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise MarkerError(f"gpucr's marker {path} is unreadable ({exc})") from exc
    return parse(data, path)


def write(images_dir: str, marker: CudaMarker) -> None:
    """Write the marker into ``images_dir``, private (0600), never through a symlink. Raises OSError."""
    import json
    path = os.path.join(images_dir, MARKER)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(marker.to_json(), f, indent=1, sort_keys=True)

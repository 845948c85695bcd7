"""The engine's view of a checkpoint directory, over ``layout.py`` (the criu engineer's layout module).

The engine works with a plain metadata dict; this adapter maps it onto :class:`layout.Metadata` (GPU processes,
driver version, container id, CRIU options, timings) and keeps the CUDA details (GPU inventory, per-process memory
by UUID, the cgroup freezer the workload lived in) under ``extra``, which layout round-trips unchanged.
CRIU's images live in ``DIR/images``; the manifest (size + sha256 of every file) is checked before CRIU restores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .layout import CheckpointDir, GpuProcess, Metadata

__all__ = ["CheckpointStore"]

#: metadata keys that layout.Metadata models itself; everything else of the engine's dict goes to ``extra``
_OWN = {"pid", "container_id", "timings_s", "image_bytes"}


class CheckpointStore:
    """Checkpoint directories, optionally confined to ``root`` (the daemon's configured checkpoint root).

    Args:
        root: refuse dirs outside it.
        verify_sha256: on restore check every file's sha256 (True) or only its size (False, faster on big images).
    """

    def __init__(self, root: Path | None = None, *, verify_sha256: bool = True) -> None:
        self.root = root
        self.verify_sha256 = verify_sha256

    def prepare(self, images_dir: Path, *, force: bool) -> Path:
        """Create the checkpoint dir (0700, refusing an existing checkpoint unless ``force``); return CRIU's dir."""
        return CheckpointDir.create(images_dir, force=force, root=self.root).images_dir

    def write_metadata(self, images_dir: Path, meta: dict[str, Any]) -> None:
        cuda = meta.get("cuda") or {}
        gpus: dict[str, str] = cuda.get("gpus") or {}
        procs = [GpuProcess(int(p["pid"]), list(p.get("gpus") or {}), [gpus.get(u, "") for u in p.get("gpus") or {}],
                            sum((p.get("gpus") or {}).values())) for p in cuda.get("processes") or []]
        md = Metadata(root_pid=int(meta["pid"]), container_id=meta.get("container_id") or None,
                      driver_version=cuda.get("driver_version") or None, processes=procs,
                      timings=dict(meta.get("timings_s") or {}),
                      sizes={"image_bytes": int(meta.get("image_bytes") or 0)},
                      extra={k: v for k, v in meta.items() if k not in _OWN})
        CheckpointDir(images_dir).finalize(md)

    def read_metadata(self, images_dir: Path) -> tuple[dict[str, Any], Path]:
        """The engine's metadata dict and CRIU's images dir. Raises LayoutError for a corrupt/truncated checkpoint."""
        cp, md = CheckpointDir.open(images_dir, root=self.root, verify=self.verify_sha256)
        meta = dict(md.extra)
        meta.update(pid=md.root_pid, container_id=md.container_id or "", timings_s=md.timings,
                    image_bytes=md.sizes.get("image_bytes", 0))
        return meta, cp.images_dir

"""One gpucr checkpoint of a container at a time: ``gpucr checkpoint CONTAINER`` and the daemon's periodic checkpoints
take ``<state_dir>/checkpoint-locks/<container id>.lock`` (an exclusive, non-blocking ``flock``) for the whole
checkpoint. The kernel drops it when the holder dies, so a killed checkpoint never leaves the container locked.

A checkpoint that another tool starts (``ctr``, the kubelet) takes no such lock; while its CUDA section runs, the
CRIU front's lease names the container (:mod:`.lease`), which :func:`busy_reason` also reports.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import GpucrError

__all__ = ["LOCKS", "CheckpointBusy", "busy_reason", "held"]

LOCKS = "checkpoint-locks"


class CheckpointBusy(GpucrError):
    """Another checkpoint of the same container is in progress."""


def _path(state_dir: Path, container_id: str) -> Path:
    if not container_id or "/" in container_id or container_id.startswith("."):
        raise GpucrError(f"container id {container_id!r} is not usable as a file name")
    return state_dir / LOCKS / f"{container_id}.lock"


@contextmanager
def held(state_dir: Path, container_id: str, what: str = "") -> Iterator[None]:
    """Hold the container's checkpoint lock for the ``with`` block.

    Raises:
        CheckpointBusy: another gpucr process holds it now (names its pid when it wrote one).
        GpucrError: the lock file cannot be created (the state dir is unusable).
    """
    p = _path(state_dir, container_id)
    try:
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise GpucrError(f"cannot create the checkpoint lock {p}: {exc.strerror}; check the node config's "
                         "state_dir (run as root)") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise CheckpointBusy(f"{what or f'container {container_id}'} is being checkpointed now"
                                 f"{f' by gpucr pid {holder}' if holder.isdigit() else ''}: one checkpoint of a "
                                 "container at a time; retry when it is done") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # drops the flock


def busy_reason(state_dir: Path, container_id: str) -> str:
    """Why a checkpoint of the container would have to wait now ("" when none runs): a gpucr checkpoint holding its
    lock, or a CRIU front's lease on it (``ctr``/kubelet checkpoints, in their CUDA section)."""
    p = _path(state_dir, container_id)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return f"a gpucr checkpoint{f' (pid {holder})' if holder.isdigit() else ''} holds its checkpoint lock"
        finally:
            os.close(fd)
    from .lease import LeaseStore
    store = LeaseStore(state_dir)
    try:
        entries = store.entries()
    except GpucrError:
        entries = []  # an unsafe lease dir: the sweep reports it
    for entry in entries:
        try:
            le = store.read(entry)
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if le.container_id == container_id and le.holder_alive():
            return f"{le.holder} (pid {le.holder_pid}) is in phase {le.phase} of a checkpoint"
    return ""

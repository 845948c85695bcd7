"""A private tmpfs a dump goes into first, so the workload runs again before its images reach the disk.

CRIU dumps into a tmpfs mounted ``huge=always`` (measured fastest on the H200: bench/NOTES.md), the CUDA processes
are restored and unlocked, and only then are the images copied to the checkpoint's staging dir at disk rate
(:class:`.layout.ImageCopier`) and the checkpoint sealed. The tmpfs is mounted with the ``mount(2)`` syscall (no
process spawned) at ``BASE/mem-<pid>``, opened, and at once detached (``umount2(MNT_DETACH)``) and its mount point
removed: from then on it is reachable only through gpucr's descriptor (``/proc/self/fd/N``, which the CRIU client
hands to CRIU as a descriptor too), invisible to every other process, and the kernel frees it when the last
descriptor closes, on every exit path, SIGKILL included. Only a gpucr killed in the microseconds between ``mount``
and ``umount2`` leaves a mount point, which :func:`sweep` (run by every ``gpucr checkpoint``) removes.

Only when the node can hold it: the images' size plus :data:`MEMORY_MARGIN_FRACTION` and
:data:`MEMORY_MARGIN_BYTES` must be available (``MemAvailable``) once the GPU data is already in host memory;
otherwise the dump goes straight to disk and the summary says why.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..host import _mount
from ..host.proc import alive
from .durable import DIR_MODE

__all__ = ["MEMORY_MARGIN_BYTES", "MEMORY_MARGIN_FRACTION", "MemStage", "open_stage", "sweep"]

log = logging.getLogger(__name__)

#: memory left free beyond the images while they sit in the tmpfs: a tenth of them, plus this much
MEMORY_MARGIN_FRACTION = 0.1
MEMORY_MARGIN_BYTES = 2 << 30
_PREFIX = "mem-"


def _mount_tmpfs(path: Path, size: int, huge: bool) -> None:
    data = f"size={size},mode=0700,uid=0,gid=0" + (",huge=always" if huge else "")
    _mount.mount("gpucr-mem", str(path), "tmpfs", _mount.MS_NOSUID | _mount.MS_NODEV | _mount.MS_NOEXEC, data)


def _umount(path: Path) -> None:
    _mount.umount2(str(path), _mount.MNT_DETACH)


@dataclass
class MemStage:
    """A detached private tmpfs held by the descriptor ``fd``; ``images`` is the dir CRIU dumps into. :meth:`close`
    drops it (the kernel frees its memory once no descriptor into it is left)."""

    fd: int
    huge: bool

    @property
    def images(self) -> Path:
        return Path(f"/proc/self/fd/{self.fd}") / "images"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _need(image_bytes: int) -> int:
    return int(image_bytes * (1 + MEMORY_MARGIN_FRACTION)) + MEMORY_MARGIN_BYTES


def open_stage(base: Path, image_bytes: int, mem_available: int) -> tuple[MemStage | None, str]:
    """Mount a tmpfs for ``image_bytes`` of images under ``base`` when ``mem_available`` can hold it, detached at
    once; return it, or None and the reason the dump goes straight to disk."""
    need = _need(image_bytes)
    if mem_available < need:
        return None, (f"host memory: {mem_available / 2**30:.1f} GiB available, the dump in memory needs "
                      f"{need / 2**30:.1f} GiB")
    path = base / f"{_PREFIX}{os.getpid()}"
    try:
        os.makedirs(base, mode=DIR_MODE, exist_ok=True)
        if os.path.lexists(path):
            _umount(path)
            shutil.rmtree(path)
        os.mkdir(path, DIR_MODE)
    except OSError as exc:
        return None, f"cannot create {path}: {exc.strerror or exc}"
    size = int(image_bytes * (1 + MEMORY_MARGIN_FRACTION)) + (64 << 20)
    huge, fd = True, -1
    try:
        try:
            _mount_tmpfs(path, size, huge=True)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this kernel's tmpfs has no huge= option
                raise
            huge = False
            _mount_tmpfs(path, size, huge=False)
        try:
            os.mkdir(path / "images", DIR_MODE)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        finally:
            _umount(path)  # detached: only our descriptor reaches it from now on
        path.rmdir()
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        try:
            _umount(path)
            path.rmdir()
        except OSError:
            pass
        return None, f"cannot mount a tmpfs at {path}: {exc.strerror or exc}"
    return MemStage(fd, huge), ""


def sweep(base: Path) -> list[Path]:
    """Unmount and remove the mount points of memory stages under ``base`` whose gpucr is gone (killed between
    mounting and detaching one)."""
    done: list[Path] = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return done
    for p in entries:
        tail = p.name[len(_PREFIX):] if p.name.startswith(_PREFIX) else ""
        if not tail.isdigit() or int(tail) == os.getpid() or alive(int(tail)):
            continue
        log.warning("removing the memory stage %s left by gpucr (pid %s) killed mid-checkpoint", p, tail)
        try:
            _umount(p)
            shutil.rmtree(p)
            done.append(p)
        except OSError as exc:
            log.warning("could not remove %s: %s", p, exc)
    return done

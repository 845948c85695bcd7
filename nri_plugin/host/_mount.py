"""``mount(2)``, ``umount2(2)`` and ``fallocate(2)``, which Python lacks: the memory stage of a dump mounts its tmpfs
without spawning ``mount`` (:mod:`nri_plugin.ckpt.memstage`), and the image copier allocates a file's blocks before
writing them (:class:`nri_plugin.ckpt.layout.ImageCopier`; ``os.posix_fallocate`` would write zeros where the
filesystem has no ``fallocate``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

__all__ = ["MNT_DETACH", "MS_NODEV", "MS_NOEXEC", "MS_NOSUID", "fallocate", "mount", "umount2"]

MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """Raises OSError (errno of the call, naming ``target``)."""
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), target)


def umount2(target: str, flags: int) -> None:
    """Raises OSError, except EINVAL (``target`` is not a mount point: already gone)."""
    if _libc.umount2(target.encode(), flags) != 0:
        e = ctypes.get_errno()
        if e != errno.EINVAL:
            raise OSError(e, os.strerror(e), target)


def fallocate(fd: int, offset: int, length: int) -> bool:
    """Allocate ``length`` bytes at ``offset`` of ``fd`` (mode 0: the file grows to ``offset + length`` if shorter).
    Returns False where the filesystem cannot (EOPNOTSUPP); raises OSError otherwise (ENOSPC, EIO, ...)."""
    if _libc.fallocate(fd, 0, offset, length) != 0:
        e = ctypes.get_errno()
        if e in (errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        raise OSError(e, os.strerror(e))
    return True

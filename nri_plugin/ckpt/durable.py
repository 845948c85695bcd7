"""fsync of a checkpoint's files and directories: a checkpoint is called done only once they are on disk.

Shared by ``gpucr checkpoint`` (:mod:`.layout`, at CRIU's ``post-dump`` and before ``gpucr.json``) and the CRIU
front's hooks (:mod:`nri_plugin.handlers.front_cuda`, before CRIU's answer reaches the runtime). Only ``os``: the
front imports it on its dump path, where every module costs start-up time.
"""

from __future__ import annotations

import os

__all__ = ["DIR_MODE", "FILE_MODE", "fsync_path", "fsync_tree"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def fsync_path(path: str | os.PathLike[str], *, directory: bool = False, mode: int | None = None) -> None:
    """fsync one file or directory (never through a symlink), first setting its ``mode`` when given.

    Raises:
        OSError: it cannot be opened, or the data did not reach the disk (EIO, ENOSPC).
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike[str], *, tighten: bool = False) -> int:
    """fsync every regular file under ``path``, then every directory bottom-up (``path`` last), never following a
    symlink; with ``tighten`` also make them private (0600/0700). Returns the number of files.

    Raises:
        OSError: EIO, or ENOSPC of delayed allocation: the data is not safe on disk.
    """
    n = 0
    for dirpath, _dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            fsync_path(p, mode=FILE_MODE if tighten else None)
            n += 1
        fsync_path(dirpath, directory=True, mode=DIR_MODE if tighten else None)
    return n

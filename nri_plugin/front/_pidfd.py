"""``pidfd_getfd(2)``: take a copy of another process's fd, as CRIU itself takes ``pidfd_store_sk`` from its peer.

The front needs it for the one fd-number option that is a socket (``pidfd_store_sk``): a socket cannot be reopened
through ``/proc/<pid>/fd/N``. Python has no binding for this system call, hence ctypes; the module is imported only
for a request that sets ``pidfd_store_sk`` (runc never does), so the front's start-up path does not pay for ctypes.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["pidfd_getfd"]

_SYS_PIDFD_GETFD = 438  # the same number on every architecture Linux added it for (5.6)


def pidfd_getfd(pid: int, fd: int) -> int:
    """A new fd (close-on-exec) for process ``pid``'s fd ``fd``.

    Raises:
        OSError: the process is gone, the fd is not open there, or ptrace access to it is denied.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(got)

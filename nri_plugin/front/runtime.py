"""The runtime's end of ``criu swrk N``: what the front needs before deciding to relay or to hand over.

Identify the swrk socket, the runtime's pid (SO_PEERCRED), peek at its first request without consuming it (so the
real criu can still read it after an ``exec``), answer it when the front refuses, and know the real criu's version.
Kept apart from :mod:`.swrk` (the relay loop) so that the hand-over path, taken by every session gpucr has no work
in, imports as little as possible. ``_socket`` rather than ``socket`` for the same reason (enum, ~14 ms).
"""

from __future__ import annotations

import _signal
import _socket
import os
import struct

from .errors import FrontError

__all__ = ["CHILD_DEFAULT_SIGNALS", "MAX_FDS", "MAX_MESSAGE_BYTES", "VERSION_CACHE", "VERSION_REQUEST", "answer",
           "criu_version_answer",
           "exec_real", "peek_request", "peer_pid", "runtime_paths", "swrk_socket"]

#: larger than any CRIU RPC message runc sends or receives (runc reads answers into 10 * 4096 bytes)
MAX_MESSAGE_BYTES = 1 << 20
MAX_FDS = 64
#: criu_req{type: VERSION}
VERSION_REQUEST = b"\x08\x0a"
#: the cache file (in the front's cache dir) of the real criu's VERSION answer
VERSION_CACHE = "criu-version.cache"
_INT = struct.Struct("i")
_UCRED = struct.Struct("3i")
#: Python ignores these at start-up and an ignored signal survives exec: criu must get them at their defaults, as
#: it would from runc directly (``_signal``, not ``signal``, whose import pulls in enum)
CHILD_DEFAULT_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


def exec_real(path: str, argv: list[str], env: dict[str, str]) -> None:
    """Become the real criu (same pid, same fds), with default signal dispositions. Returns only by raising OSError."""
    for sig in CHILD_DEFAULT_SIGNALS:
        _signal.signal(sig, _signal.SIG_DFL)
    try:
        os.execve(path, argv, env)
    finally:
        for sig in CHILD_DEFAULT_SIGNALS:
            _signal.signal(sig, _signal.SIG_IGN)


def swrk_socket(fd: int) -> _socket.socket | None:
    """The runtime's socket at ``fd`` if it is an AF_UNIX SOCK_SEQPACKET socket, else None (not a swrk call)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    if (st.st_mode & 0o170000) != 0o140000:  # S_IFSOCK
        return None
    try:
        s = _socket.socket(fileno=fd)
    except OSError:
        return None
    if s.family != _socket.AF_UNIX or s.type != _socket.SOCK_SEQPACKET:
        s.detach()
        return None
    return s


def peer_pid(sock: _socket.socket) -> int:
    pid, _uid, _gid = _UCRED.unpack(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED.size))
    return int(pid)


def peek_request(sock: _socket.socket) -> bytes:
    """The runtime's first message, left in the socket (MSG_PEEK, no fds taken), so that the real criu can still
    read it when the front hands the session over by exec."""
    return sock.recv(MAX_MESSAGE_BYTES, _socket.MSG_PEEK)


def answer(sock: _socket.socket, data: bytes) -> None:
    """Consume the runtime's pending request (closing any fds it carried) and send the front's own answer."""
    try:
        sock.setblocking(False)
        _, fds = _recv(sock, "the runtime")
        for fd in fds:
            os.close(fd)
    except (BlockingIOError, FrontError):
        pass
    finally:
        sock.setblocking(True)
    sock.sendmsg([data])


def runtime_paths(pid: int, fds: dict[str, int]) -> dict[str, str]:
    """What the runtime's fd options point at (readlink of /proc/<pid>/fd/N), for the hooks' decision; best effort."""
    out: dict[str, str] = {}
    for name, n in fds.items():
        try:
            out[name] = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            pass
    return out


def criu_version_answer(real_criu: str, cache_dir: str | None) -> bytes | None:
    """The real criu's own answer to a VERSION request (raw ``criu_resp`` bytes), cached in the root-only
    ``cache_dir`` (:mod:`.trust`) by the binary's path, mtime and size: one real ``criu swrk`` exchange per installed
    binary, then a file read per call. The front answers runc's VERSION call with these bytes (saving a criu start
    per checkpoint) and checks the version in them. None when it cannot be had (no criu, no answer): the caller
    then goes to the real criu.

    Raises:
        FrontError: the cache dir or file is not root's alone (one line naming it and the fix).
    """
    from .trust import read_cache, write_cache
    try:
        st = os.stat(real_criu)
    except OSError:
        return None
    key = f"{os.path.realpath(real_criu)} {st.st_mtime_ns} {st.st_size}"
    text = read_cache(cache_dir, VERSION_CACHE)
    if text:
        k, _, v = text.strip().rpartition(" ")
        if k == key:
            try:
                return bytes.fromhex(v)
            except ValueError:
                pass
    data = _ask_version(real_criu)
    if data:
        write_cache(cache_dir, VERSION_CACHE, f"{key} {data.hex()}\n")
    return data


def _ask_version(real_criu: str) -> bytes | None:
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    try:
        os.set_inheritable(theirs.fileno(), True)
        env = dict(os.environ)
        env["GPUCR_FRONT_ACTIVE"] = "1"
        try:
            pid = os.posix_spawn(real_criu, [real_criu, "swrk", str(theirs.fileno())], env,
                                 file_actions=[(os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)],
                                 setsigdef=CHILD_DEFAULT_SIGNALS)
        except OSError:
            return None
        theirs.close()
        try:
            ours.settimeout(30)
            ours.send(VERSION_REQUEST)
            data = ours.recv(MAX_MESSAGE_BYTES)
            ours.shutdown(_socket.SHUT_WR)
            while ours.recv(MAX_MESSAGE_BYTES):
                pass
        except OSError:
            data = b""
        finally:
            _, status = os.waitpid(pid, 0)
        return data if data and status == 0 else None
    finally:
        ours.close()
        theirs.close()


def _recv(sock: _socket.socket, side: str) -> tuple[bytes, list[int]]:
    """One message and the fds that came with it; (b"", []) is EOF."""
    data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE_BYTES, _socket.CMSG_SPACE(MAX_FDS * _INT.size))
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _INT.size
            fds.extend(struct.unpack(f"{usable // _INT.size}i", payload[:usable]))
    if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise FrontError(f"message from {side} truncated (over {MAX_MESSAGE_BYTES} bytes or {MAX_FDS} fds)")
    return data, fds


def _send(sock: _socket.socket, data: bytes, fds: list[int]) -> None:
    anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    try:
        sock.sendmsg([data], anc)
    finally:
        for fd in fds:
            os.close(fd)



"""The front's I/O: relay one ``criu swrk N`` session between the runtime and the real criu.

What it does, in order (criu-front.md sections 3 and 5):

1. read the runtime's first request (with any SCM_RIGHTS fds) from fd N, a SOCK_SEQPACKET socket;
2. take the runtime's pid from SO_PEERCRED and reopen ``images_dir_fd``/``work_dir_fd``/``status_fd`` as
   ``/proc/<runtime>/fd/<n>`` into fds of its own, because CRIU resolves these numbers in its peer, which is now
   the front (pitfall 1); the numbers in the request are rewritten, every other byte kept;
3. run the before-dump hook (a failure answers the runtime and CRIU never runs);
4. only now start the real criu as ``criu swrk N`` on a fresh socketpair placed at the same fd number, so it
   inherits every other fd as the front did, and sits in the cgroups runc moved the front into on RESTORE (pitfall 3);
5. relay both ways, with fds (the orphan-pts master on RESTORE, inherit_fd), routing CRIU's messages through
   :class:`~.relay.Relay`; a half-close on one side becomes a half-close on the other (pitfall 5);
6. wait for criu's exit through a pidfd and ``waitpid`` of criu's pid only (never ``wait(-1)``: the restored init is
   the front's child through ``rst_sibling`` and must go to the runtime's subreaper, pitfall 4); then return criu's
   exit status so the front exits with it at once.

Uses ``_socket`` rather than ``socket``: the latter imports enum and costs ~14 ms of start-up per call. The
runtime-side helpers that the hand-over path needs too live in :mod:`.runtime`.
"""

from __future__ import annotations

import _socket
import os
import select

from . import messages as m
from ._log import FrontLog
from .errors import FrontError
from .relay import TO_CRIU, Relay
from .runtime import CHILD_DEFAULT_SIGNALS, _recv, _send, peer_pid

__all__ = ["relay_swrk", "reopen_fds"]


def reopen_fds(pid: int, fds: dict[str, int]) -> dict[str, int]:
    """Open ``/proc/<pid>/fd/<n>`` for each named fd option; returns the front's own fd numbers.

    Raises:
        FrontError: naming the option, the runtime's fd and why (closed, gone, no permission).
    """
    out: dict[str, int] = {}
    try:
        for name, n in fds.items():
            flags = (os.O_WRONLY if name == "status_fd" else os.O_RDONLY | os.O_DIRECTORY) | os.O_CLOEXEC
            path = f"/proc/{pid}/fd/{n}"
            try:
                out[name] = os.open(path, flags)
            except OSError as exc:
                raise FrontError(f"cannot open the runtime's {name} {n} as {path}: {exc.strerror}; the runtime "
                                 f"(pid {pid}) must keep it open until criu answers") from exc
    except FrontError:
        for fd in out.values():
            os.close(fd)
        raise
    return out


def _write_work_log(work_fd: int | None, log_file: str | None, text: str) -> None:
    """Leave gpucr's explanation where the runtime points people: the CRIU log file in the work dir
    (containerd copies it to criu-dump.log in the bundle). CRIU never ran, so nothing else would be there."""
    if work_fd is None or not log_file or "/" in log_file:
        return
    try:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600, dir_fd=work_fd)
        try:
            # CRIU's own line shape, with "Error" in it: runc >= 1.2 echoes such lines of this log in its error
            line = "(00.000000) Error (" + text.replace("gpucr criu front: ", "gpucr criu front): ", 1) + "\n"
            os.write(fd, line.encode("utf-8", "replace"))
        finally:
            os.close(fd)
    except OSError:
        pass


def _own_cgroup() -> str:
    """The front's freezer (v1) or unified cgroup: on RESTORE runc has moved it into the container's (pitfall 3)."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return "?"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            # a hybrid kernel lists v1 lines even with cgroup2 on /sys/fs/cgroup, where runc uses v2
            v1_freezer = not any(ln.split()[4] == "/sys/fs/cgroup" and " - cgroup2 " in ln for ln in f)
    except OSError:
        v1_freezer = True
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if v1_freezer and "freezer" in ctrls.split(","):
            return path
    return next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), "?")


def _status_text(status: int) -> tuple[int, str]:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return 128 - code, f"was killed by signal {-code}"
    return code, f"exited with status {code}"


def relay_swrk(rt: _socket.socket, swrk_fd: int, real_criu: str, relay: Relay, log: FrontLog,
               env: dict[str, str]) -> int:
    """Relay one swrk session; returns the exit status the front must exit with (criu's, or 1 for the front's
    own refusals). The caller owns ``rt``; every fd this function opens is closed before it returns."""
    peer = peer_pid(rt)
    data, fds = _recv(rt, "the runtime")
    if not data and not fds:
        log.warning(f"runtime pid {peer} closed the swrk socket before sending a request; nothing to do")
        return 1
    try:
        req = relay.accept_request(data)
    except m.MessageError as exc:
        for fd in fds:
            os.close(fd)
        log.error(f"garbage from runtime pid {peer} on swrk fd {swrk_fd} ({len(data)} bytes: {data[:32].hex()}): {exc}")
        rt.sendmsg([relay.garbage_answer(exc)])
        return 1
    req.peer_pid = peer
    log.info(f"request {req.type_name} from runtime pid {peer}: pid={req.pid} leave_running={req.leave_running} "
             f"freeze_cgroup={req.freeze_cgroup} fds={req.fds} passed_fds={len(fds)} front_cgroup={_own_cgroup()}")
    own: dict[str, int] = {}
    try:
        try:
            own = reopen_fds(peer, req.fds)
        except FrontError as exc:
            log.error(str(exc))
            rt.sendmsg([m.encode_failure(req.type, f"gpucr criu front: {exc}", 9)])  # EBADF
            return 1
        if "images_dir_fd" in own:
            req.images_dir = os.readlink(f"/proc/self/fd/{own['images_dir_fd']}")
        pid = peer if req.type == m.DUMP and req.has_opts and req.pid is None else None
        forward = relay.forward_request(own, pid)
        answer = relay.before_forward()
        if answer is not None:
            log.error(f"{req.type_name} refused before criu ran: {relay.explanation}")
            _write_work_log(own.get("work_dir_fd"), req.log_file, relay.explanation or "")
            for fd in fds:
                os.close(fd)
            rt.sendmsg([answer])
            return 1
        code = _run_criu(rt, swrk_fd, real_criu, relay, log, env, forward, fds)
        if relay.explanation:  # a hook failed mid-way or after CRIU: say so in the log the runtime points at
            _write_work_log(own.get("work_dir_fd"), req.log_file, relay.explanation)
        return code
    finally:
        for fd in own.values():
            os.close(fd)


def _run_criu(rt: _socket.socket, swrk_fd: int, real_criu: str, relay: Relay, log: FrontLog, env: dict[str, str],
              first: bytes, first_fds: list[int]) -> int:
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    try:
        try:
            pid = os.posix_spawn(real_criu, [real_criu, "swrk", str(swrk_fd)], env,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), swrk_fd)],
                                 setsigdef=CHILD_DEFAULT_SIGNALS)
        except OSError as exc:
            msg = (f"gpucr criu front: cannot run the real criu {real_criu}: {exc.strerror}; install CRIU >= 4.1 "
                   "or set real_criu in /etc/gpucr/front.conf (or GPUCR_REAL_CRIU)")
            log.error(msg)
            for fd in first_fds:
                os.close(fd)
            req = relay.request
            rt.sendmsg([m.encode_failure(req.type if req else m.EMPTY, msg, 2)])  # ENOENT
            return 1
        theirs.close()
        log.debug(f"started {real_criu} swrk {swrk_fd} as pid {pid}")
        pidfd = os.pidfd_open(pid)
        try:
            return _pump(rt, ours, pid, pidfd, relay, log, first, first_fds)
        finally:
            os.close(pidfd)
    finally:
        ours.close()
        theirs.close()


def _pump(rt: _socket.socket, criu: _socket.socket, pid: int, pidfd: int, relay: Relay, log: FrontLog,
          first: bytes, first_fds: list[int]) -> int:
    _send(criu, first, first_fds)
    poll = select.poll()
    ev = select.POLLIN | select.POLLHUP | select.POLLERR
    poll.register(rt.fileno(), ev)
    poll.register(criu.fileno(), ev)
    poll.register(pidfd, select.POLLIN)
    rt_open = criu_open = True      # still reading from each side
    rt_writable = True              # the runtime still takes messages
    status: int | None = None

    def runtime_eof() -> None:
        # the runtime will send nothing more (runc's CloseWrite); it may still read, so only criu hears of it
        nonlocal rt_open
        if rt_open:
            poll.unregister(rt.fileno())
            rt_open = False
        try:
            criu.shutdown(_socket.SHUT_WR)
        except OSError:
            pass

    def runtime_gone() -> None:
        nonlocal rt_writable
        runtime_eof()
        rt_writable = False

    def criu_done(why: str) -> None:
        nonlocal criu_open, rt_writable
        if criu_open:
            poll.unregister(criu.fileno())
            criu_open = False
        if rt_writable:
            if relay.final is None:
                rt.sendmsg([relay.missing_answer(why)])
            try:
                rt.shutdown(_socket.SHUT_WR)
            except OSError:
                pass
            rt_writable = False

    while criu_open or status is None:
        for fd, _events in poll.poll():
            if fd == pidfd:
                _, status = os.waitpid(pid, 0)
                poll.unregister(pidfd)
                # criu is gone: whatever it sent is already queued; drain it without blocking, then finish
                criu.setblocking(False)
            elif fd == criu.fileno() and criu_open:
                try:
                    data, fds = _recv(criu, "criu")
                except BlockingIOError:
                    criu_done(_status_text(status)[1] if status is not None else "closed its socket")
                    continue
                except OSError as exc:
                    log.error(f"reading from criu pid {pid}: {exc}")
                    criu_done("failed")
                    continue
                if not data and not fds:
                    log.debug("criu closed its end (EOF), passing the half-close to the runtime")
                    criu_done(_status_text(status)[1] if status is not None else "closed its socket")
                    continue
                route = relay.from_criu(data)
                if route.note:
                    log.info(route.note)
                if route.to == TO_CRIU:
                    _send(criu, route.data, fds)
                elif rt_writable:
                    try:
                        _send(rt, route.data, fds)
                    except OSError as exc:
                        log.error(f"the runtime went away while criu answered ({exc}); telling criu")
                        runtime_gone()
                else:
                    for f in fds:
                        os.close(f)
            elif fd == rt.fileno() and rt_open:
                try:
                    data, fds = _recv(rt, "the runtime")
                except OSError as exc:
                    log.error(f"reading from the runtime: {exc}")
                    runtime_gone()
                    continue
                if not data and not fds:
                    log.debug("runtime closed its end (EOF), passing the half-close to criu")
                    runtime_eof()
                    continue
                try:
                    _send(criu, data, fds)
                except OSError as exc:
                    log.error(f"forwarding the runtime's message to criu pid {pid}: {exc}")
        if status is not None and criu_open and not _has_input(criu):
            criu_done(_status_text(status)[1])
    code, text = _status_text(status)
    log.info(f"criu pid {pid} {text}")
    return code


def _has_input(sock: _socket.socket) -> bool:
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN)
    return bool(p.poll(0))

"""The front's I/O: relay one ``criu swrk N`` session between the runtime and the real criu.

The real criu must be the process the runtime started, as it would be without the front: with ``rst_sibling`` (runc
sets it on every restore) CRIU creates the restored tree with CLONE_PARENT, so the tree becomes the children of
criu's parent. A relaying front that started criu as its own child would adopt the tree itself, and a caller that is
not a subreaper would get ECHILD from ``waitpid``. So the front process *becomes* the real criu (exec, same pid),
and a detached helper process relays:

1. the front (the process the runtime started, pid F) reopens every fd-number option of the runtime's first request
   from the runtime (``/proc/<runtime>/fd/N`` for the images/work dirs and ``status_fd``, ``pidfd_getfd`` for
   ``pidfd_store_sk``: CRIU resolves them in its peer) into inheritable fds of its own;
2. it makes a fresh socketpair. SO_PEERCRED of a socketpair names its creator, F, which after the exec *is* criu:
   so CRIU resolves the rewritten numbers in its own fd table, where the reopened fds are;
3. it forks the helper (twice, so the helper is not criu's child: CRIU treats an unexpected child's exit as a
   failed restore; the helper is adopted by the nearest subreaper or init, which reap it). The helper takes the
   runtime's socket and one end of the pair, reads the first request (with its SCM_RIGHTS fds), runs the
   before-dump hook and, if the hook lets the dump happen, queues the rewritten request on the pair and tells F to
   go (one byte on a pipe; any other answer: F exits 1, the helper has answered the runtime);
4. F puts the other end of the pair at fd N in place of the runtime's socket and execs ``criu swrk N``. criu
   inherits every other fd as the front had them (the fds of ``inherit_fd``, runc's extra files) and sits in
   the cgroups runc moved F into on RESTORE (runc does that after starting it, before the request). Its exit
   status is the front's, for free (runc fails a non-zero one);
5. the helper relays both ways with fds (:class:`_Pump`), routing CRIU's messages through :class:`~.relay.Relay`
   (hooks at each notify and the final answer), mirrors half-closes, and ends when criu has exited and its socket
   is drained. It never waits for any process: the restored tree belongs to the runtime.

Uses ``_socket`` rather than ``socket``: the latter imports enum and costs ~14 ms of start-up per call.
"""

from __future__ import annotations

import _socket
import os
import select

from . import messages as m
from ._log import FrontLog
from .errors import FrontError
from .relay import TO_CRIU, Relay
from .runtime import _recv, _send, answer, exec_real

TYPE_CHECKING = False  # not typing's (start-up cost, see _wire)
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["relay_swrk", "reopen_fds"]

_GO, _STOP = b"g", b"n"


def reopen_fds(pid: int, fds: dict[str, int]) -> dict[str, int]:
    """The runtime's fd for each fd-number option, as an inheritable fd of this process (criu inherits it).

    Raises:
        FrontError: naming the option, the runtime's fd and why (closed, gone, no permission).
    """
    out: dict[str, int] = {}
    try:
        for name, n in fds.items():
            path = f"/proc/{pid}/fd/{n}"
            try:
                if name == "pidfd_store_sk":  # a socket: /proc cannot reopen it
                    from ._pidfd import pidfd_getfd
                    out[name] = pidfd_getfd(pid, n)
                else:
                    flags = os.O_WRONLY if name == "status_fd" else os.O_RDONLY | os.O_DIRECTORY
                    out[name] = os.open(path, flags | os.O_CLOEXEC)
            except OSError as exc:
                raise FrontError(f"cannot open the runtime's {name} {n} as {path}: {exc.strerror}; the runtime "
                                 f"(pid {pid}) must keep it open until criu answers") from exc
            os.set_inheritable(out[name], True)
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
    """The front's freezer (v1) or unified cgroup: on RESTORE runc has moved it into the container's."""
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


def _exit_text(pid: int) -> str:
    """How criu ended, read from its zombie (the runtime reaps it, not us); best effort."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rpartition(")")[2].split()
        if fields[0] == "Z":
            code = os.waitstatus_to_exitcode(int(fields[49]))
            return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    except (OSError, ValueError, IndexError):
        pass
    return "exited"


def relay_swrk(rt: _socket.socket, swrk_fd: int, real_criu: str, relay: Relay, log: FrontLog,
               env: dict[str, str], first: m.Request | None, peer: int) -> int:
    """Relay one swrk session whose first request (peeked, not consumed) is ``first`` (None: undecodable) from
    runtime pid ``peer``. Returns only when criu does not run (the front's refusals: 1); otherwise this process
    becomes criu."""
    if first is None:
        data, fds = _recv(rt, "the runtime")
        for fd in fds:
            os.close(fd)
        try:
            relay.accept_request(data)
        except m.MessageError as exc:
            log.error(f"garbage from runtime pid {peer} on swrk fd {swrk_fd} ({len(data)} bytes: {data[:32].hex()}): "
                      f"{exc}")
            rt.sendmsg([relay.garbage_answer(exc)])
            return 1
        first = relay.request  # the runtime replaced its message after the peek: use what it sent
        assert first is not None
    relay.request = first
    log.info(f"request {first.type_name} from runtime pid {peer}: pid={first.pid} leave_running="
             f"{first.leave_running} freeze_cgroup={first.freeze_cgroup} fds={first.fds} front_cgroup={_own_cgroup()}")
    try:
        own = reopen_fds(peer, first.fds)
    except FrontError as exc:
        log.error(str(exc))
        answer(rt, m.encode_failure(first.type, f"gpucr criu front: {exc}", 9))  # EBADF
        return 1
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    ctl_r, ctl_w = os.pipe()
    me = os.getpid()
    child = os.fork()
    if child == 0:  # the intermediate: fork the helper and go, so the helper is not criu's child
        code = 0
        try:
            if os.fork() == 0:
                os.close(ctl_r)
                theirs.close()
                code = _helper(rt, ours, me, swrk_fd, relay, log, own, peer, ctl_w)
        finally:
            os._exit(code)
    os.waitpid(child, 0)
    os.close(ctl_w)
    ours.close()
    try:
        go = os.read(ctl_r, 1)
    finally:
        os.close(ctl_r)
    if go != _GO:
        theirs.close()
        for fd in own.values():
            os.close(fd)
        return 1
    os.dup2(theirs.fileno(), swrk_fd)  # replaces this process's copy of the runtime's socket: the helper has it
    theirs.close()
    try:
        exec_real(real_criu, [real_criu, "swrk", str(swrk_fd)], env)
    except OSError as exc:  # the helper relays this as criu's answer
        msg = (f"gpucr criu front: cannot run the real criu {real_criu}: {exc.strerror}; install CRIU >= 4.1 "
               "or set real_criu in /etc/gpucr/front.conf (or GPUCR_REAL_CRIU)")
        log.error(msg)
        s = _socket.socket(fileno=swrk_fd)
        try:
            s.setblocking(False)
            _, fds = _recv(s, "the relay")  # take the queued request: closing on unread data would reset the pair
            for f in fds:
                os.close(f)
            s.sendmsg([m.encode_failure(first.type, msg, 2)])  # ENOENT
        finally:
            s.detach()
    return 1


def _helper(rt: _socket.socket, criu: _socket.socket, criu_pid: int, swrk_fd: int, relay: Relay, log: FrontLog,
            own: dict[str, int], peer: int, ctl: int) -> int:
    """The relaying process: consume the first request, run the before-dump hook, release criu, then pump."""
    told = False
    try:
        pidfd = os.pidfd_open(criu_pid)
        req = relay.request
        assert req is not None
        data, fds = _recv(rt, "the runtime")  # the request peeked by the front, now taken with its fds
        pid = peer if req.type == m.DUMP and req.has_opts and req.pid is None else None
        forward = relay.forward_request(own, pid)
        refusal = relay.before_forward()
        if refusal is not None:
            log.error(f"{req.type_name} refused before criu ran: {relay.explanation}")
            _write_work_log(own.get("work_dir_fd"), req.log_file, relay.explanation or "")
            for fd in fds:
                os.close(fd)
            rt.sendmsg([refusal])
            return 1
        _send(criu, forward, fds)
        os.write(ctl, _GO)
        told = True
        os.close(ctl)
        log.debug(f"criu swrk {swrk_fd} runs as pid {criu_pid} (the front's own pid, the runtime's child)")
        def explain() -> None:  # a hook failed mid-way or after CRIU: say so in the log the runtime points at
            if relay.explanation:
                _write_work_log(own.get("work_dir_fd"), req.log_file, relay.explanation)

        _Pump(rt, criu, criu_pid, pidfd, relay, log, explain).run()
        return 0
    except Exception as exc:  # the helper's stderr is usually /dev/null: the log is the only witness
        log.error(f"relay helper: {type(exc).__name__}: {exc}")
        if not told:
            try:
                rt.sendmsg([m.encode_failure(relay.request.type if relay.request else m.EMPTY,
                                             f"gpucr criu front: relay failed: {exc}", 5)])  # EIO
            except OSError:
                pass
        return 1
    finally:
        if not told:
            try:
                os.write(ctl, _STOP)
            except OSError:
                pass


class _Pump:
    """Moves messages (and their SCM_RIGHTS fds) between the runtime and criu until criu has exited and its
    socket is drained. One method per poll source; half-closes pass through."""

    def __init__(self, rt: _socket.socket, criu: _socket.socket, pid: int, pidfd: int, relay: Relay,
                 log: FrontLog, before_final: Callable[[], None] = lambda: None) -> None:
        self.rt, self.criu, self.pid, self.pidfd, self.relay, self.log = rt, criu, pid, pidfd, relay, log
        #: runs just before the runtime gets the final answer (which it may act on at once, e.g. copy CRIU's log)
        self.before_final = before_final
        self.rt_open = self.criu_open = True  # still reading from each side
        self.rt_writable = True                # the runtime still takes messages
        self.exited = False
        self.poll = select.poll()
        ev = select.POLLIN | select.POLLHUP | select.POLLERR
        self.poll.register(rt.fileno(), ev)
        self.poll.register(criu.fileno(), ev)
        self.poll.register(pidfd, select.POLLIN)

    def run(self) -> None:
        try:
            while self.criu_open or not self.exited:
                for fd, _events in self.poll.poll():
                    if fd == self.pidfd:
                        self.on_criu_exit()
                    elif fd == self.criu.fileno() and self.criu_open:
                        self.on_criu()
                    elif fd == self.rt.fileno() and self.rt_open:
                        self.on_runtime()
                if self.exited and self.criu_open and not _has_input(self.criu):
                    self.criu_done(_exit_text(self.pid))
        finally:
            os.close(self.pidfd)
        self.log.info(f"criu pid {self.pid} {_exit_text(self.pid)}")

    def on_criu_exit(self) -> None:
        # whatever criu sent is already queued: drain it without blocking, then finish
        self.exited = True
        self.poll.unregister(self.pidfd)
        self.criu.setblocking(False)

    def on_criu(self) -> None:
        try:
            data, fds = _recv(self.criu, "criu")
        except BlockingIOError:
            self.criu_done(_exit_text(self.pid))
            return
        except ConnectionResetError:  # criu left a message of ours unread; what it sent is still queued
            return
        except OSError as exc:
            self.log.error(f"reading from criu pid {self.pid}: {exc}")
            self.criu_done("failed")
            return
        if not data and not fds:
            self.log.debug("criu closed its end (EOF), passing the half-close to the runtime")
            self.criu_done(_exit_text(self.pid) if self.exited else "closed its socket")
            return
        route = self.relay.from_criu(data)
        if route.note:
            self.log.info(route.note)
        if self.relay.final is not None and route.to != TO_CRIU:
            self.before_final()
        if route.to == TO_CRIU:
            _send(self.criu, route.data, fds)
        elif self.rt_writable:
            try:
                _send(self.rt, route.data, fds)
            except OSError as exc:
                self.log.error(f"the runtime went away while criu answered ({exc}); telling criu")
                self.runtime_gone()
        else:
            for f in fds:
                os.close(f)

    def on_runtime(self) -> None:
        try:
            data, fds = _recv(self.rt, "the runtime")
        except OSError as exc:
            self.log.error(f"reading from the runtime: {exc}")
            self.runtime_gone()
            return
        if not data and not fds:
            self.log.debug("runtime closed its end (EOF), passing the half-close to criu")
            self.runtime_eof()
            return
        try:
            _send(self.criu, data, fds)
        except OSError as exc:
            self.log.error(f"forwarding the runtime's message to criu pid {self.pid}: {exc}")

    def runtime_eof(self) -> None:
        # the runtime will send nothing more (runc's CloseWrite); it may still read, so only criu hears of it
        if self.rt_open:
            self.poll.unregister(self.rt.fileno())
            self.rt_open = False
        try:
            self.criu.shutdown(_socket.SHUT_WR)
        except OSError:
            pass

    def runtime_gone(self) -> None:
        self.runtime_eof()
        self.rt_writable = False

    def criu_done(self, why: str) -> None:
        if self.criu_open:
            self.poll.unregister(self.criu.fileno())
            self.criu_open = False
        if self.rt_writable:
            if self.relay.final is None:
                self.before_final()
                self.rt.sendmsg([self.relay.missing_answer(why)])
            try:
                self.rt.shutdown(_socket.SHUT_WR)
            except OSError:
                pass
            self.rt_writable = False


def _has_input(sock: _socket.socket) -> bool:
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN)
    return bool(p.poll(0))

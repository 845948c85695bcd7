"""Run CRIU requests over ``criu swrk FD`` on a SOCK_SEQPACKET socketpair.

One criu process per request: spawn ``criu swrk <fd>``, send the request, answer each NOTIFY (calling the caller's
callback first), read the final response, close, and wait for criu only (never ``wait(-1)``: with ``rst_sibling`` the
restored root is our child and belongs to the caller). CRIU opens the images and work directories as
``/proc/<our pid>/fd/N`` (SO_PEERCRED), so we hold those fds open until criu exits; ``inherit_fds`` are passed on to
criu because CRIU reads them from its own fd table.

CRIU's plugins (its CUDA plugin in particular, which hangs on frozen cgroups before CRIU 4.2 and would fight gpucr
for the CUDA lock) are disabled for every request: criu runs with ``CRIU_LIBS_DIR`` and a ``CRIU_CONFIG_FILE`` whose
``libdir`` point at an empty private directory. That config file beats /etc/criu/default.conf and ~/.criu/default.conf
(CRIU parses global, user, then env config) and keeps the caller's own ``$CRIU_CONFIG_FILE`` lines before ours; only an
RPC ``config_file`` (``DumpOptions.config_file``, parsed last) could still name another ``libdir``.

CRIU's log (``dump.log`` / ``restore.log``) is written next to the images; on failure its tail (and criu's stderr,
which holds the errors CRIU prints before it opens its log) is part of the CriuError.

Deliberately not here: building requests (``rpc.py``), freezing cgroups, CUDA.
"""

from __future__ import annotations

import array
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from . import rpc
from .errors import CriuError
from .options import DumpOptions, RestoreOptions

__all__ = ["Criu", "DumpResult", "NotifyCallback", "RestoreResult"]

log = logging.getLogger(__name__)

NotifyCallback = Callable[[str, int], None]
"""``cb(name, pid)``: called for every NOTIFY before criu is answered; raising makes the answer a failure (CRIU then
aborts, up to ``network-unlock``/``pre-resume``). ``pid`` is the restored root on ``setup-namespaces`` and
``post-restore``, 0 otherwise."""

MAX_MESSAGE_BYTES = 1 << 20
LOG_TAIL_LINES = 25
CLOSE_WAIT_S = 10.0      # how long criu may take to exit after the last message before it is killed
MAX_RECV_FDS = 8


@dataclass
class DumpResult:
    """A finished dump: where its log is, how long it took, which notifications came (in order)."""

    images_dir: Path
    log_file: Path
    duration_s: float
    notifications: list[str] = field(default_factory=list)


@dataclass
class RestoreResult:
    """A finished restore. ``pid`` is the restored root (host pid namespace of the caller).

    ``pty_master_fd`` is the fd received with ``orphan-pts-master`` (restores with ``orphan_pts_master``); the caller
    owns and closes it.
    """

    images_dir: Path
    pid: int
    log_file: Path
    duration_s: float
    notifications: list[str] = field(default_factory=list)
    pty_master_fd: int | None = None


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Outcome:
    reply: rpc.Reply
    seen: list[str]
    fds: list[int]
    failure: tuple[str, BaseException] | None


def _last_error(log_text: str) -> str:
    for line in reversed(log_text.splitlines()):
        if "Error (" in line and "Restoring FAILED" not in line and "Dumping FAILED" not in line:
            return line[line.index("Error ("):].strip()
    return ""


class _Swrk:
    """One ``criu swrk`` process and our end of its socket. Closing is idempotent and always reaps criu."""

    def __init__(self, binary: str, env: dict[str, str], pass_fds: tuple[int, ...], stderr: IO[bytes],
                 timeout_s: float | None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen([binary, "swrk", str(theirs.fileno())], pass_fds=(theirs.fileno(), *pass_fds),
                                         stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env)
        except OSError as exc:
            ours.close()
            raise CriuError(f"cannot start {binary} swrk: {exc}; {rpc.INSTALL_HINT}") from exc
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(timeout_s)
        self.binary = binary
        self.received_fds: list[int] = []

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError as exc:
            raise CriuError(f"cannot send to criu (pid {self.proc.pid}): {exc}") from exc

    def recv(self) -> bytes:
        """The next message; b"" when criu closed its end."""
        fds = array.array("i")
        try:
            data, anc, flags, _ = self.sock.recvmsg(MAX_MESSAGE_BYTES, socket.CMSG_SPACE(MAX_RECV_FDS * fds.itemsize))
        except TimeoutError as exc:
            raise CriuError(f"criu (pid {self.proc.pid}) sent nothing for {self.sock.gettimeout()} s; it was "
                            "stopped (raise the timeout for large images)") from exc
        except OSError as exc:
            raise CriuError(f"cannot read from criu (pid {self.proc.pid}): {exc}") from exc
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        self.received_fds.extend(fds)
        if flags & socket.MSG_TRUNC:
            raise CriuError(f"criu (pid {self.proc.pid}) sent a message larger than {MAX_MESSAGE_BYTES} bytes")
        return data

    def close(self) -> int:
        """Close our end (criu sees EOF: a request in progress is aborted and rolled back) and reap criu."""
        self.sock.close()
        try:
            return self.proc.wait(CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("criu (pid %d) did not exit %.0f s after its socket closed; killing it",
                        self.proc.pid, CLOSE_WAIT_S)
            self.proc.kill()
            return self.proc.wait()


class Criu:
    """CRIU >= 4.1 driven over RPC.

    Args:
        binary: path, or a name looked up on PATH.
        plugins_dir: CRIU plugin directory to use; None (default) runs criu with no plugins at all.
        timeout_s: the longest criu may stay silent (between messages) before it is stopped; None waits forever.
            Time spent in a notify callback does not count.
    """

    def __init__(self, binary: str = "criu", *, plugins_dir: Path | None = None,
                 timeout_s: float | None = None) -> None:
        self.binary = binary
        self.plugins_dir = plugins_dir
        self.timeout_s = timeout_s
        self._version: tuple[int, int, int] | None = None

    # -- public ---------------------------------------------------------------------------------------------------

    def version(self) -> tuple[int, int, int]:
        """(major, minor, sublevel) of the criu binary (asked once, then cached).

        Raises:
            CriuError: criu is missing, broken, or older than 4.1 (names the version found and the fix).
        """
        if self._version is None:
            with self._session(work_dir=None, log_name=None, pass_fds=()) as sw:
                sw.send(rpc.version_request())
                data = sw.recv()
                if not data:
                    raise CriuError(f"criu at {self._path()} closed the connection without answering VERSION; "
                                    f"{rpc.INSTALL_HINT}")
                self._version = rpc.check_version(rpc.parse_reply(data), self._path())
                log.debug("criu %s is version %s", self._path(), self._version)
        return self._version

    def dump(self, opts: DumpOptions, on_notify: NotifyCallback | None = None) -> DumpResult:
        """Dump the tree rooted at ``opts.pid`` into ``opts.images_dir`` (which must exist).

        A failed dump leaves the tree running (CRIU rolls back); so does a callback that raises before ``post-dump``.

        Raises:
            CriuError: with CRIU's errno and the tail of ``dump.log``.
        """
        log_name = opts.log_file or "dump.log"
        what = f"dump of pid {opts.pid}"
        with ExitStack() as stack:
            img_fd, work_fd, work_dir = self._open_dirs(stack, opts.images_dir, opts.work_dir, what)
            req = rpc.dump_request(opts, images_dir_fd=img_fd, work_dir_fd=work_fd, log_file=log_name)
            self.version()  # after the cheap checks: bad input fails without starting criu
            start = time.monotonic()
            out = self._run(req, "DUMP", what, work_dir, log_name, (), on_notify)
            result = DumpResult(opts.images_dir, work_dir / log_name, time.monotonic() - start, out.seen)
            self._raise_late(out, result, what)
        log.info("criu dump of pid %d done in %.2f s (%s)", opts.pid, result.duration_s, opts.images_dir)
        return result

    def restore(self, opts: RestoreOptions, on_notify: NotifyCallback | None = None) -> RestoreResult:
        """Restore the tree in ``opts.images_dir``; returns once the tasks run again (after ``post-resume``).

        Raises:
            CriuError: with CRIU's errno and the tail of ``restore.log``.
        """
        log_name = opts.log_file or "restore.log"
        what = f"restore from {opts.images_dir}"
        with ExitStack() as stack:
            img_fd, work_fd, work_dir = self._open_dirs(stack, opts.images_dir, opts.work_dir, what)
            inherit = dict(opts.inherit_fds)
            req = rpc.restore_request(opts, images_dir_fd=img_fd, work_dir_fd=work_fd, log_file=log_name,
                                      inherit_fds=inherit)
            self.version()
            start = time.monotonic()
            out = self._run(req, "RESTORE", what, work_dir, log_name, tuple(inherit.values()), on_notify)
            if out.reply.restored_pid is None or out.reply.restored_pid <= 0:
                raise CriuError(f"{what}: criu reported success without a restored pid "
                                f"({out.reply.restored_pid!r}): protocol error", log_file=work_dir / log_name)
            pid = out.reply.restored_pid
            result = RestoreResult(opts.images_dir, pid, work_dir / log_name, time.monotonic() - start, out.seen,
                                   out.fds[0] if out.fds else None)
            for extra in out.fds[1:]:
                os.close(extra)
            self._raise_late(out, result, what)
        log.info("criu restore of %s done in %.2f s: pid %d", opts.images_dir, result.duration_s, result.pid)
        return result

    # -- internals ------------------------------------------------------------------------------------------------

    def _path(self) -> str:
        if "/" in self.binary:
            if not os.access(self.binary, os.X_OK):
                raise CriuError(f"criu binary {self.binary} does not exist or is not executable; {rpc.INSTALL_HINT}")
            return self.binary
        found = shutil.which(self.binary)
        if found is None:
            raise CriuError(f"criu binary {self.binary!r} not found on PATH; {rpc.INSTALL_HINT}")
        return found

    @staticmethod
    def _open_dirs(stack: ExitStack, images_dir: Path, work_dir: Path | None, what: str) -> tuple[int, int | None, Path]:
        def opendir(path: Path, role: str) -> int:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise CriuError(f"{what}: cannot open the {role} directory {path}: {exc.strerror}; "
                                "create it first (mode 0700)") from exc
            stack.callback(os.close, fd)
            return fd

        img_fd = opendir(images_dir, "images")
        if work_dir is None:
            return img_fd, None, images_dir
        return img_fd, opendir(work_dir, "work"), work_dir

    def _env(self, private: Path) -> dict[str, str]:
        env = dict(os.environ)
        libdir = self.plugins_dir
        if libdir is None:
            libdir = private / "no-plugins"
            libdir.mkdir()
        env["CRIU_LIBS_DIR"] = str(libdir)
        # CRIU parses /etc/criu/default.conf, ~/.criu/default.conf, then $CRIU_CONFIG_FILE, later lines winning:
        # our file carries the caller's $CRIU_CONFIG_FILE (if any) and then our libdir, which beats all three
        user = ""
        if os.environ.get("CRIU_CONFIG_FILE"):
            try:
                user = Path(os.environ["CRIU_CONFIG_FILE"]).read_text()
            except OSError as exc:
                raise CriuError(f"cannot read $CRIU_CONFIG_FILE {os.environ['CRIU_CONFIG_FILE']}: {exc.strerror}; "
                                "fix or unset it") from exc
        conf = private / "gpucr-criu.conf"
        conf.write_text(f"{user.rstrip()}\nlibdir {libdir}\n".lstrip())
        env["CRIU_CONFIG_FILE"] = str(conf)
        return env

    @contextmanager
    def _session(self, *, work_dir: Path | None, log_name: str | None,
                 pass_fds: tuple[int, ...]) -> Iterator[_Swrk]:
        binary = self._path()
        with tempfile.TemporaryDirectory(prefix="gpucr-criu-") as tmp, \
                tempfile.TemporaryFile(prefix="gpucr-criu-stderr-") as stderr:
            sw = _Swrk(binary, self._env(Path(tmp)), pass_fds, stderr, self.timeout_s)
            try:
                yield sw
            except CriuError as exc:
                status = sw.close()
                raise self._with_logs(exc, status, stderr, work_dir, log_name) from exc.__cause__
            except BaseException:
                sw.close()
                for fd in sw.received_fds:
                    os.close(fd)
                raise
            status = sw.close()
            if status != 0:
                log.warning("criu %s exited with status %d after a successful request", binary, status)

    @staticmethod
    def _with_logs(exc: CriuError, status: int, stderr: IO[bytes], work_dir: Path | None,
                   log_name: str | None) -> CriuError:
        log_file = work_dir / log_name if work_dir is not None and log_name else None
        tail = _tail(log_file) if log_file is not None else ""
        stderr.seek(0)
        err = stderr.read()[-4096:].decode("utf-8", "replace").strip()
        if err:
            tail = f"{tail}\n--- criu stderr (exit status {status}) ---\n{err}" if tail else err
        elif not tail and log_file is not None:
            tail = f"(no log at {log_file}: criu failed before opening it; exit status {status})"
        message = str(exc)
        # the cause may lie above the tail (CRIU logs one line per task it lets go after a failure)
        window = _tail(log_file, lines=1 << 20) if log_file is not None else ""
        last = _last_error(tail) or _last_error(window)
        if last and exc.criu_errmsg and last not in message:
            # cr_errmsg is CRIU's *first* error, often a harmless one (rlimit); the log's last error is the cause
            message = message.replace(exc.criu_errmsg.strip(), last)
        if "Can't get 1:16 opt: Operation not supported" in f"{window}\n{tail}":
            # kernels >= 6.16 refuse SO_PASSCRED on inet sockets; CRIU < 4.2 treats that as fatal
            message += ("; this CRIU cannot dump TCP/UDP sockets on kernels >= 6.16 (they refuse SO_PASSCRED on "
                        "them; CRIU 4.2 no longer asks): install CRIU >= 4.2, or checkpoint a process without "
                        "TCP/UDP sockets")
        if "Can't fork for" in last and "File exists" in last:
            message += ("; that pid is still in use here (a process, or an unreaped zombie that still holds it as its "
                        "process-group or session id): wait until it is gone, or restore into a new pid namespace")
        return CriuError(message, errno=exc.errno, log_file=log_file, log_tail=tail, result=exc.result,
                         criu_errmsg=exc.criu_errmsg)

    def _run(self, req: bytes, expected: str, what: str, work_dir: Path, log_name: str, pass_fds: tuple[int, ...],
             on_notify: NotifyCallback | None) -> _Outcome:
        seen: list[str] = []
        failure: tuple[str, BaseException] | None = None
        with self._session(work_dir=work_dir, log_name=log_name, pass_fds=pass_fds) as sw:
            sw.send(req)
            while True:
                data = sw.recv()
                if not data:
                    raise CriuError(f"{what}: criu (pid {sw.proc.pid}) exited without a final answer"
                                    + (f" after {seen[-1]}" if seen else ""))
                reply = rpc.parse_reply(data)
                if reply.notify is None:
                    break
                seen.append(reply.notify)
                ok = True
                if on_notify is not None and failure is None:
                    try:
                        on_notify(reply.notify, reply.notify_pid or 0)
                    except Exception as exc:  # the callback is the caller's code: any failure aborts CRIU
                        failure, ok = (reply.notify, exc), False
                        log.debug("%s: notify callback failed at %s: %s", what, reply.notify, exc)
                sw.send(rpc.notify_answer(ok))
            try:
                if failure is not None and not reply.success:
                    stage, exc = failure
                    raise CriuError(f"{what} aborted at {stage}: {exc}", errno=reply.errno) from exc
                rpc.check_final(reply, expected, what)
            except CriuError:
                fds = sw.received_fds
                for fd in fds:
                    os.close(fd)
                raise
            return _Outcome(reply, seen, list(sw.received_fds), failure)

    @staticmethod
    def _raise_late(out: _Outcome, result: DumpResult | RestoreResult, what: str) -> None:
        """A callback failed at a stage CRIU cannot abort (it reported success): raise with the result attached."""
        if out.failure is not None:
            stage, exc = out.failure
            raise CriuError(f"{what} succeeded, but the {stage} step failed afterwards: {exc}",
                            log_file=result.log_file, result=result) from exc

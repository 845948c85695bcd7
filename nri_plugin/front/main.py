"""The front's session driver: what ``criu ARGS`` does when the runtime runs gpucr's CRIU front.

``criu swrk N`` on a SOCK_SEQPACKET socket: the runtime's pid (SO_PEERCRED), its first request (peeked, not
consumed) and the images dir behind it are read once, :func:`~.relay.first_move` decides, and the session is
answered from the cached VERSION answer, refused, handed to the real criu (exec on the runtime's own socket) or
relayed (:mod:`.swrk`: this process becomes the real criu, a detached helper relays). Every other invocation
(``criu check``, ``criu --version``, ``criu dump ...`` from a shell) becomes the real criu at once (exec, same pid,
same argv). The real criu comes from the configuration (:mod:`.config`), never from PATH.

Before anything else the front checks that only root can change its code, its configuration and its caches
(:mod:`.trust`); if not, it says which path and how to fix it in one line and exits 1, touching nothing.

Start-up is the whole cost of the front (runc runs it twice per operation), hence ``-S -E`` in the launcher's
shebang (no site, no PYTHON* env), the hand-written wire codec instead of protobuf, and no logging, typing,
dataclasses, enum or socket imports on these paths (``bench/front_latency.py`` measures the added time).
"""

from __future__ import annotations

import os
import sys

from . import trust

TYPE_CHECKING = False  # not typing's (start-up cost, see _wire)
if TYPE_CHECKING:
    import _socket

    from ._log import FrontLog
    from .config import FrontConfig
    from .hooks import FrontHooks
    from .messages import Request

__all__ = ["main"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # nri_plugin/


def _die(msg: str, log_dir: str | None = None) -> int:
    sys.stderr.write(msg + "\n")
    if log_dir:
        from ._log import FrontLog
        log = FrontLog(log_dir)
        if log.fd >= 0:
            log.error(msg)
    return 1


def _refuse_start(msg: str, argv: list[str], log_dir: str | None = None) -> int:
    """One line on stderr (and in the log when the configuration is trusted); the runtime of a swrk session also
    gets it as CRIU's failed answer. Nothing else is touched."""
    if len(argv) == 3 and argv[1] == "swrk" and argv[2].isdigit():
        from . import messages, runtime
        rt = runtime.swrk_socket(int(argv[2]))
        if rt is not None:
            try:
                runtime.answer(rt, messages.encode_failure(messages.EMPTY, msg, 1))  # EPERM
            except OSError:
                pass
            finally:
                rt.detach()
    return _die(msg, log_dir)


def _env() -> dict[str, str]:
    from .config import ACTIVE_ENV
    env = dict(os.environ)
    env[ACTIVE_ENV] = "1"  # a real_criu that leads back here fails at once instead of looping
    return env


def _exec_real(real: str, argv: list[str], log_dir: str | None) -> int:
    from .config import SYSTEM_CONF
    from .runtime import exec_real
    try:
        exec_real(real, [real, *argv[1:]], _env())
    except OSError as exc:
        return _die(f"gpucr criu front: cannot run the real criu {real}: {exc.strerror}; install CRIU >= 4.1 or set "
                    f"real_criu in {SYSTEM_CONF} (or GPUCR_REAL_CRIU)", log_dir)
    return 1  # not reached


def main(argv: list[str]) -> int:
    """Run as ``criu ARGS``; returns the exit status (the process becomes the real criu on most paths)."""
    problem = trust.code_problem(argv[0], _PACKAGE)
    if problem:
        return _refuse_start(problem, argv)
    from . import config
    from .errors import FrontError
    try:
        cfg = config.load(os.environ, argv[0])
    except FrontError as exc:
        msg = str(exc) if str(exc).startswith("gpucr criu front") else f"gpucr criu front: {exc}"
        return _refuse_start(msg, argv)
    if not (len(argv) == 3 and argv[1] == "swrk" and argv[2].isdigit()):
        return _exec_real(cfg.real_criu, argv, cfg.log_dir)
    fd = int(argv[2])
    from . import runtime
    rt = runtime.swrk_socket(fd)
    if rt is None:  # not a SEQPACKET socket: let criu itself say what is wrong
        return _exec_real(cfg.real_criu, argv, cfg.log_dir)
    try:
        return _session(cfg, rt, fd)
    except FrontError as exc:  # a cache the front must not trust: one line, the runtime told, nothing touched
        from . import messages
        try:
            runtime.answer(rt, messages.encode_failure(messages.EMPTY, str(exc), 1))
        except OSError:
            pass
        return _die(str(exc), cfg.log_dir)
    except Exception as exc:  # the root: one log line and a failed answer, not a traceback lost on /dev/null
        import traceback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        msg = (f"gpucr criu front: internal error ({type(exc).__name__}: {exc} at {os.path.basename(where.filename)}:"
               f"{where.lineno}); please report it with {cfg.log_dir}/criu-front.log")
        from . import messages
        from ._log import FrontLog
        FrontLog(cfg.log_dir).error(msg)
        try:
            rt.sendmsg([messages.encode_failure(messages.EMPTY, msg, 5)])  # EIO
        except OSError:
            pass
        return 1
    finally:
        rt.detach()


def _session(cfg: FrontConfig, rt: _socket.socket, fd: int) -> int:
    """Read the peer, the first request and the images dir once; then do what :func:`~.relay.first_move` says."""
    from . import messages, runtime
    from ._log import FrontLog
    from .errors import FrontError
    from .relay import ANSWER_VERSION, HAND_OVER, REFUSE, first_move
    log = FrontLog(cfg.log_dir)
    peer = runtime.peer_pid(rt)
    try:
        raw = runtime.peek_request(rt)
    except OSError as exc:
        log.error(f"swrk fd {fd}: reading the runtime's request: {exc}")
        return 1
    if not raw:
        log.warning(f"runtime pid {peer} closed the swrk socket before sending a request; nothing to do")
        return 1
    req: Request | None
    try:
        req = messages.decode_request(raw)
    except messages.MessageError:
        req = None  # garbage: the relay answers it with a clear error
    version_answer = version = None
    hooks: FrontHooks | None = None
    if req is not None:
        req.peer_pid = peer
        req.images_dir = runtime.runtime_paths(peer, {k: v for k, v in req.fds.items() if k == "images_dir_fd"}
                                               ).get("images_dir_fd")
        version_answer = runtime.criu_version_answer(cfg.real_criu, cfg.cache_dir)
        try:
            version = messages.decode_response(version_answer).version if version_answer else None
        except messages.MessageError:
            version_answer = None
        if cfg.hooks and not req.is_plain_version:
            try:
                hooks = config_hooks(cfg)
            except FrontError as exc:
                log.error(str(exc))
                runtime.answer(rt, messages.encode_failure(req.type, f"gpucr criu front: {exc}", 22))
                return 1
    move, problem = first_move(req, version, hooks, cfg.relay_always, cfg.real_criu)
    if move == REFUSE:
        assert req is not None
        log.error(f"{req.type_name} from runtime pid {peer} refused: {problem}")
        runtime.answer(rt, messages.encode_failure(req.type, problem or "", 95))  # EOPNOTSUPP
        return 1
    if move == ANSWER_VERSION:
        assert version_answer is not None
        return _answer_version(cfg, rt, fd, version_answer, peer, log)
    if move == HAND_OVER:
        assert req is not None
        log.info(f"{req.type_name} from runtime pid {peer}: no gpucr work, handing swrk {fd} to {cfg.real_criu} "
                 f"(pid={req.pid})")
        return _hand_over(cfg, rt, fd, req.type, log)
    from . import swrk
    from .relay import Relay
    try:
        return swrk.relay_swrk(rt, fd, cfg.real_criu, Relay(hooks, cfg.real_criu), log, _env(), req, peer)
    except FrontError as exc:
        log.error(str(exc))
        return 1
    except OSError as exc:
        log.error(f"swrk fd {fd}: {type(exc).__name__}: {exc}")
        return 1


def config_hooks(cfg: FrontConfig) -> FrontHooks:
    from .config import load_hooks
    assert cfg.hooks
    where = cfg.conf_file if cfg.conf_file and cfg.values.get("hooks") == cfg.hooks else "GPUCR_FRONT_HOOKS"
    return load_hooks(cfg.hooks, cfg.values, where=where)  # type: ignore[return-value]


def _hand_over(cfg: FrontConfig, sock: _socket.socket, fd: int, req_type: int, log: FrontLog) -> int:
    """exec the real criu on the runtime's own socket: same pid, runc stays its peer, nothing relayed."""
    from . import messages, runtime
    from .config import SYSTEM_CONF
    try:
        runtime.exec_real(cfg.real_criu, [cfg.real_criu, "swrk", str(fd)], _env())
    except OSError as exc:
        msg = (f"gpucr criu front: cannot run the real criu {cfg.real_criu}: {exc.strerror}; install CRIU >= 4.1 "
               f"or set real_criu in {SYSTEM_CONF} (or GPUCR_REAL_CRIU)")
        log.error(msg)
        runtime.answer(sock, messages.encode_failure(req_type, msg, 2))
    return 1


def _answer_version(cfg: FrontConfig, sock: _socket.socket, fd: int, version: bytes, peer: int,
                    log: FrontLog) -> int:
    """runc's VERSION call: give the real criu's own (cached) answer, byte for byte, without starting criu. If the
    runtime sends another request afterwards, the real criu takes the session over from there."""
    from . import messages, runtime
    runtime.answer(sock, version)
    log.info(f"VERSION from runtime pid {peer}: answered with {cfg.real_criu}'s cached answer")
    try:
        nxt = runtime.peek_request(sock)
    except OSError:
        return 0
    if not nxt:
        return 0
    try:
        t = messages.decode_request(nxt).type_name
    except messages.MessageError:
        t = "undecodable"
    log.info(f"{t} after VERSION from runtime pid {peer}: handing swrk {fd} to {cfg.real_criu}")
    return _hand_over(cfg, sock, fd, messages.EMPTY, log)

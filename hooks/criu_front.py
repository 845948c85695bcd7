#!/usr/bin/python3 -SE
"""The CRIU front: the executable a runtime runs as ``criu`` (install/front.sh puts it first on runc's PATH).

``criu swrk N`` on a SOCK_SEQPACKET socket is relayed to the real criu through :mod:`nri_plugin.front.swrk`, with
gpucr's hooks at the DUMP request, each notification and the final answer. Every other invocation (``criu check``,
``criu --version``, ``criu dump ...`` from a shell) becomes the real criu at once (exec, same pid, same argv).
The real criu comes from the configuration (:mod:`nri_plugin.front.config`), never from PATH.

Start-up is the whole cost of the front (criu-front.md Q6: runc runs it twice per operation), hence ``-S -E`` in
the shebang (no site, no PYTHON* env), the hand-written wire codec instead of protobuf, and no logging, typing,
dataclasses, enum or socket imports on the relay path. ``python3 -X importtime`` keeps this honest
(bench/front_latency.py measures the added time per checkpoint).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's (start-up cost, see nri_plugin/front/_wire.py)
if TYPE_CHECKING:
    import _socket

    from nri_plugin.front._log import FrontLog

# hooks/ and nri_plugin/ sit side by side both in a checkout and when installed; with -S nothing else is on sys.path
_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from nri_plugin.front import config as _config  # noqa: E402
from nri_plugin.front.errors import FrontError  # noqa: E402


def _die(msg: str, log_dir: str | None = None) -> int:
    sys.stderr.write(msg + "\n")
    if log_dir:
        from nri_plugin.front._log import FrontLog
        log = FrontLog(log_dir)
        if log.fd >= 0:
            log.error(msg)
    return 1


def _exec_real(real: str, argv: list[str], log_dir: str | None) -> int:
    env = dict(os.environ)
    env[_config.ACTIVE_ENV] = "1"  # a real_criu that leads back here fails at once instead of looping
    from nri_plugin.front.runtime import exec_real
    try:
        exec_real(real, [real, *argv[1:]], env)
    except OSError as exc:
        return _die(f"gpucr criu front: cannot run the real criu {real}: {exc.strerror}; install CRIU >= 4.1 or set "
                    f"real_criu in {_config.SYSTEM_CONF} (or GPUCR_REAL_CRIU)", log_dir)
    return 1  # not reached


def main(argv: list[str]) -> int:
    """Run as ``criu ARGS``; returns the exit status (criu's, when relayed)."""
    try:
        cfg = _config.load(os.environ, argv[0])
    except FrontError as exc:
        return _die(f"gpucr criu front: {exc}")
    if not (len(argv) == 3 and argv[1] == "swrk" and argv[2].isdigit()):
        return _exec_real(cfg.real_criu, argv, cfg.log_dir)
    fd = int(argv[2])
    from nri_plugin.front import runtime
    rt = runtime.swrk_socket(fd)
    if rt is None:  # not a SEQPACKET socket: let criu itself say what is wrong
        return _exec_real(cfg.real_criu, argv, cfg.log_dir)
    try:
        return _swrk(cfg, rt, fd)
    except Exception as exc:  # the root: one log line and a failed answer, not a traceback lost on /dev/null
        import traceback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        msg = (f"gpucr criu front: internal error ({type(exc).__name__}: {exc} at {os.path.basename(where.filename)}:"
               f"{where.lineno}); please report it with {cfg.log_dir}/criu-front.log")
        from nri_plugin.front import messages
        from nri_plugin.front._log import FrontLog
        FrontLog(cfg.log_dir).error(msg)
        try:
            rt.sendmsg([messages.encode_failure(messages.EMPTY, msg, 5)])  # EIO
        except OSError:
            pass
        return 1
    finally:
        rt.detach()


def _swrk(cfg: _config.FrontConfig, sock: _socket.socket, fd: int) -> int:
    """Answer VERSION from the real criu's cached answer, hand sessions without gpucr work to the real criu, and
    relay the rest."""
    from nri_plugin.front import messages, runtime
    from nri_plugin.front._log import FrontLog
    from nri_plugin.front.relay import needs_relay, version_problem
    log = FrontLog(cfg.log_dir)
    peer = runtime.peer_pid(sock)
    env = dict(os.environ)
    env[_config.ACTIVE_ENV] = "1"
    hooks = None
    try:
        req = messages.decode_request(runtime.peek_request(sock))
    except messages.MessageError:
        req = None  # garbage: the relay answers it with a clear error
    except OSError as exc:
        log.error(f"swrk fd {fd}: reading the runtime's request: {exc}")
        return 1
    if req is not None:
        req.peer_pid = peer
        version = runtime.criu_version_answer(cfg.real_criu, cfg.log_dir)
        problem = version_problem(messages.decode_response(version).version if version else None, cfg.real_criu)
        if problem:
            log.error(f"{req.type_name} from runtime pid {peer} refused: {problem}")
            runtime.answer(sock, messages.encode_failure(req.type, problem, 95))  # EOPNOTSUPP
            return 1
        if req.type == messages.VERSION and version and not req.has_opts and not cfg.relay_always:
            return _answer_version(cfg, sock, fd, version, peer, log, env)
        if cfg.hooks:
            try:
                hooks = _config.load_hooks(cfg.hooks, cfg.values)
            except FrontError as exc:
                log.error(str(exc))
                runtime.answer(sock, messages.encode_failure(req.type, f"gpucr criu front: {exc}", 22))
                return 1
            req.images_dir = runtime.runtime_paths(peer, req.fds).get("images_dir_fd")
        if not needs_relay(req, hooks, cfg.relay_always):
            log.info(f"{req.type_name} from runtime pid {peer}: no gpucr work, handing swrk {fd} to {cfg.real_criu} "
                     f"(pid={req.pid})")
            return _hand_over(cfg, sock, fd, req.type, env, log)
    from nri_plugin.front import swrk
    from nri_plugin.front.relay import Relay
    try:
        return swrk.relay_swrk(sock, fd, cfg.real_criu, Relay(hooks, cfg.real_criu), log, env)
    except FrontError as exc:
        log.error(str(exc))
        return 1
    except OSError as exc:
        log.error(f"swrk fd {fd}: {type(exc).__name__}: {exc}")
        return 1


def _hand_over(cfg: _config.FrontConfig, sock: _socket.socket, fd: int, req_type: int, env: dict[str, str],
               log: FrontLog) -> int:
    """exec the real criu on the runtime's own socket: same pid, runc stays its peer, nothing relayed."""
    from nri_plugin.front import messages, runtime
    try:
        runtime.exec_real(cfg.real_criu, [cfg.real_criu, "swrk", str(fd)], env)
    except OSError as exc:
        msg = (f"gpucr criu front: cannot run the real criu {cfg.real_criu}: {exc.strerror}; install CRIU >= 4.1 "
               f"or set real_criu in {_config.SYSTEM_CONF} (or GPUCR_REAL_CRIU)")
        log.error(msg)
        runtime.answer(sock, messages.encode_failure(req_type, msg, 2))
    return 1


def _answer_version(cfg: _config.FrontConfig, sock: _socket.socket, fd: int, version: bytes, peer: int,
                    log: FrontLog, env: dict[str, str]) -> int:
    """runc's VERSION call: give the real criu's own (cached) answer, byte for byte, without starting criu. If the
    runtime sends another request afterwards, the real criu takes the session over from there."""
    from nri_plugin.front import messages, runtime
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
    return _hand_over(cfg, sock, fd, messages.EMPTY, env, log)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

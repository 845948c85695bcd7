"""The front's decisions, message by message, without I/O (the h11 shape: bytes in, what-to-send out).

:func:`first_move` decides from the runtime's first request what the session is: handed over to the real criu,
answered from the cached VERSION answer, refused, or relayed.
:class:`Relay` sees the runtime's first request, every message CRIU sends, and every later message from the runtime,
and says where each goes and in what form. It calls the hooks (:mod:`.hooks`) at their points and turns a hook's
failure into gpucr's explanation in front of CRIU's error. It never touches a socket, fd or process: the I/O side
(:mod:`.swrk`) reopens fds, starts CRIU and moves bytes and SCM_RIGHTS fds.

Contract with the I/O side: call :meth:`Relay.accept_request` once with the runtime's first message; if it returns,
call :meth:`Relay.before_forward`; if that returns an answer, send it to the runtime and stop (CRIU never runs);
otherwise start CRIU and forward :meth:`Relay.forward_request`'s bytes. Then route each CRIU message through
:meth:`Relay.from_criu` and forward runtime messages untouched. Unknown request types, undecodable CRIU messages
and anything after the first runtime message are relayed as they are.
"""

from __future__ import annotations

from . import messages as m
from .errors import HookError

TYPE_CHECKING = False  # not typing's: importing typing costs ~26 ms of start-up (see _wire)
if TYPE_CHECKING:
    from .hooks import FrontHooks

__all__ = ["ANSWER_VERSION", "HAND_OVER", "MIN_CRIU_VERSION", "REFUSE", "RELAY", "Relay", "Route", "TO_CRIU",
           "TO_RUNTIME", "first_move", "version_problem"]

TO_RUNTIME, TO_CRIU = "runtime", "criu"
#: the front's first move in a swrk session (:func:`first_move`)
HAND_OVER, ANSWER_VERSION, REFUSE, RELAY = "hand-over", "answer-version", "refuse", "relay"
#: CRIU older than this fails on current kernels (vDSO) and lacks RPC action-script support
MIN_CRIU_VERSION = (4, 1)
_ECANCELED, _EBADMSG, _ENOEXEC = 125, 74, 8
PREFIX = "gpucr criu front"


class Route:
    """Where a message goes (:data:`TO_RUNTIME` or :data:`TO_CRIU`), its bytes, and a line for the log (or None)."""

    __slots__ = ("to", "data", "note")

    def __init__(self, to: str, data: bytes, note: str | None = None) -> None:
        self.to, self.data, self.note = to, data, note

    def __repr__(self) -> str:
        return f"Route({self.to}, {len(self.data)} bytes, {self.note!r})"


def first_move(req: m.Request | None, criu_version: tuple[int, int] | None, hooks: FrontHooks | None,
               relay_always: bool, real_criu: str = "criu") -> tuple[str, str | None]:
    """What the front does with a swrk session, from the runtime's first request alone: (move, problem text).

    :data:`RELAY` for garbage (the relay answers it with a clear error) and whenever the configuration says
    ``relay = always`` or the hooks want the session (a ``wants`` that raises counts as wanting: the hooks meet the
    request again in the relay and can fail it with an explanation); :data:`REFUSE` with gpucr's explanation when
    the real criu is too old; :data:`ANSWER_VERSION` for go-criu's plain VERSION call when the real criu's answer is
    known; :data:`HAND_OVER` (exec the real criu on the runtime's socket) otherwise.
    """
    if req is None:
        return RELAY, None
    problem = version_problem(criu_version, real_criu)
    if problem:
        return REFUSE, problem
    if relay_always:
        return RELAY, None
    if req.is_plain_version and criu_version is not None:
        return ANSWER_VERSION, None
    if hooks is None:
        return HAND_OVER, None
    try:
        wants = bool(hooks.wants(req))
    except Exception:  # see above: the safe side is to relay
        wants = True
    return (RELAY if wants else HAND_OVER), None


def version_problem(version: tuple[int, int] | None, real_criu: str) -> str | None:
    """gpucr's explanation when the real criu is older than :data:`MIN_CRIU_VERSION`, else None."""
    if version is None or version >= MIN_CRIU_VERSION:
        return None
    return (f"{PREFIX}: the real criu ({real_criu}) is version {version[0]}.{version[1]}; gpucr needs CRIU >= "
            f"{MIN_CRIU_VERSION[0]}.{MIN_CRIU_VERSION[1]} (install a newer criu and point real_criu in "
            "/etc/gpucr/front.conf at it)")


def _explain(point: str, exc: Exception) -> str:
    detail = str(exc) if isinstance(exc, HookError) else f"{type(exc).__name__}: {exc}"
    return f"{PREFIX}: {point}: {detail}"


class Relay:
    """One relayed swrk session (one runtime request). Not reusable."""

    def __init__(self, hooks: FrontHooks | None = None, real_criu: str = "criu") -> None:
        if hooks is None:
            from .hooks import NoHooks
            hooks = NoHooks()
        self.hooks = hooks
        self.real_criu = real_criu
        self.request: m.Request | None = None
        #: gpucr's explanation waiting to be put in front of CRIU's final answer
        self.explanation: str | None = None
        self.final: m.Response | None = None
        self.notifies: list[str] = []

    def accept_request(self, data: bytes) -> m.Request:
        """Decode the runtime's first message.

        Raises:
            MessageError: garbage; answer the runtime with :meth:`garbage_answer` and stop.
        """
        self.request = m.decode_request(data)
        return self.request

    @staticmethod
    def garbage_answer(exc: Exception) -> bytes:
        return m.encode_failure(m.EMPTY, f"{PREFIX}: cannot decode the runtime's request: {exc}; the caller must speak "
                                         "CRIU RPC on the swrk socket (criu swrk FD)", _EBADMSG)

    def forward_request(self, reopened: dict[str, int], pid: int | None = None) -> bytes:
        """The first request as CRIU must see it: fd numbers replaced by the front's own (CRIU resolves them in its
        peer), and the pid of a pid-less DUMP made explicit (CRIU would otherwise dump its peer, which is no longer
        the runtime)."""
        assert self.request is not None
        return m.rewrite_request(self.request.raw, reopened, pid)

    def before_forward(self) -> bytes | None:
        """Run the before-dump hook on DUMP/PRE_DUMP; a failure gives the runtime's answer (CRIU must not run)."""
        req = self.request
        assert req is not None
        if req.type not in (m.DUMP, m.PRE_DUMP):
            return None
        try:
            self.hooks.before_dump(req)
        except Exception as exc:  # any hook failure aborts the dump: it must reach the runtime, not kill the front
            self.explanation = _explain(f"before {req.type_name} of pid {req.pid}", exc)
            return m.encode_failure(req.type, self.explanation, _ECANCELED)
        return None

    def from_criu(self, data: bytes) -> Route:
        """Route one message from CRIU: notifications go to the hooks then the runtime; the final answer gets
        gpucr's explanation when a hook failed or CRIU is too old."""
        req = self.request
        assert req is not None
        try:
            resp = m.decode_response(data)
        except m.MessageError as exc:
            return Route(TO_RUNTIME, data, f"undecodable message from criu relayed as is: {exc}")
        if resp.is_notify:
            name = resp.notify_script or ""
            self.notifies.append(name)
            try:
                self.hooks.on_notify(req, name, resp.notify_pid)
            except Exception as exc:  # see before_forward
                self.explanation = _explain(f"at {name} of {req.type_name}", exc)
                return Route(TO_CRIU, m.encode_notify_answer(False), f"notify {name} failed: {self.explanation}")
            return Route(TO_RUNTIME, data, f"notify {name} pid={resp.notify_pid}")
        self.final = resp
        note = (f"{resp.type_name} success={resp.success}" + (f" restore.pid={resp.restore_pid}" if resp.restore_pid
                else "") + (f" version={resp.version[0]}.{resp.version[1]}" if resp.version else ""))
        self.explanation = version_problem(resp.version, self.real_criu) or self.explanation
        try:
            self.hooks.after_response(req, resp.success)
        except Exception as exc:  # see before_forward
            self.explanation = _explain(f"after {req.type_name}", exc)
        if self.explanation:
            return Route(TO_RUNTIME, m.explain_failure(data, self.explanation, _ECANCELED),
                         f"{note}; turned into a failure: {self.explanation}")
        return Route(TO_RUNTIME, data, note)

    def missing_answer(self, status: str) -> bytes:
        """What the runtime gets when CRIU went away without a final answer."""
        req = self.request
        assert req is not None
        msg = f"{PREFIX}: criu ({self.real_criu}) {status} before answering the {req.type_name} request"
        if self.explanation:
            msg = f"{self.explanation}; {msg}"
        return m.encode_failure(req.type, msg, _ENOEXEC)

"""CRIU RPC messages as the CRIU front sees them: summaries of ``criu_req``/``criu_resp`` and byte-exact patches.

The front reads only what it needs to decide (request type, pid, leave_running, freeze_cgroup, fd numbers; response
type, success, notify script and pid, errors, version) and rewrites only fd numbers, the pid of a pid-less DUMP and,
when gpucr must explain a failure, ``success``/``cr_errno``/``cr_errmsg``. All other bytes pass through untouched, so
fields newer than this module (a newer runc or CRIU) survive. Field numbers are those of CRIU 4.1.1's
``images/rpc.proto`` (the same numbers as gpucr's subset in ``nri_plugin/ckpt/criu/proto/rpc.proto``; the tests
cross-check both). Pure: bytes in, objects out; no I/O, no logging, no protobuf import (see ``_wire``).
"""

from __future__ import annotations

from . import _wire
from ._wire import LEN, VARINT, Field, WireError

__all__ = [
    "CHECK", "DUMP", "EMPTY", "FD_OPTIONS", "FEATURE_CHECK", "MessageError", "NOTIFY", "PRE_DUMP", "REQ_TYPE_NAMES",
    "RESTORE", "Request", "Response", "VERSION", "decode_request", "decode_response", "encode_failure",
    "encode_notify_answer", "explain_failure", "rewrite_request", "type_name",
]

# criu_req_type (plain ints: the enum module would cost ~7 ms of start-up on every runc call, see _wire)
EMPTY, DUMP, RESTORE, CHECK, PRE_DUMP, PAGE_SERVER, NOTIFY = 0, 1, 2, 3, 4, 5, 6
CPUINFO_DUMP, CPUINFO_CHECK, FEATURE_CHECK, VERSION = 7, 8, 9, 10
WAIT_PID, PAGE_SERVER_CHLD, SINGLE_PRE_DUMP = 11, 12, 13
REQ_TYPE_NAMES = {
    EMPTY: "EMPTY", DUMP: "DUMP", RESTORE: "RESTORE", CHECK: "CHECK", PRE_DUMP: "PRE_DUMP", PAGE_SERVER: "PAGE_SERVER",
    NOTIFY: "NOTIFY", CPUINFO_DUMP: "CPUINFO_DUMP", CPUINFO_CHECK: "CPUINFO_CHECK", FEATURE_CHECK: "FEATURE_CHECK",
    VERSION: "VERSION", WAIT_PID: "WAIT_PID", PAGE_SERVER_CHLD: "PAGE_SERVER_CHLD", SINGLE_PRE_DUMP: "SINGLE_PRE_DUMP",
}

# criu_req
_REQ_TYPE, _REQ_OPTS, _REQ_NOTIFY_SUCCESS = 1, 2, 3
# criu_opts
_OPT_IMAGES_DIR_FD, _OPT_PID, _OPT_LEAVE_RUNNING, _OPT_LOG_FILE = 1, 2, 3, 10
_OPT_WORK_DIR_FD, _OPT_FREEZE_CGROUP, _OPT_STATUS_FD, _OPT_PIDFD_STORE_SK = 17, 44, 49, 62
#: criu_opts fields that carry an fd number CRIU resolves in its peer's fd table, by name: the dirs and status_fd
#: as /proc/<peer>/fd/N, pidfd_store_sk with pidfd_getfd(<peer>, N) (cr-service.c, pidfd-store.c)
FD_OPTIONS = {"images_dir_fd": _OPT_IMAGES_DIR_FD, "work_dir_fd": _OPT_WORK_DIR_FD, "status_fd": _OPT_STATUS_FD,
              "pidfd_store_sk": _OPT_PIDFD_STORE_SK}
# criu_resp
_RESP_TYPE, _RESP_SUCCESS, _RESP_RESTORE, _RESP_NOTIFY, _RESP_ERRNO, _RESP_ERRMSG, _RESP_VERSION = 1, 2, 4, 5, 7, 9, 10
# criu_notify, criu_restore_resp, criu_version
_NOTIFY_SCRIPT, _NOTIFY_PID, _RESTORE_PID, _VERSION_MAJOR, _VERSION_MINOR = 1, 2, 1, 1, 2


class MessageError(WireError):
    """A message that is not a CRIU RPC message (garbage on the socket); says which side sent it."""


def type_name(t: int) -> str:
    return REQ_TYPE_NAMES.get(t, f"UNKNOWN({t})")


def _decode(data: bytes, what: str) -> list[Field]:
    try:
        return _wire.decode(data)
    except WireError as exc:
        raise MessageError(f"{what} is not a protobuf message ({len(data)} bytes): {exc}") from exc


def _first(fields: list[Field], number: int, wire_type: int) -> Field | None:
    # protobuf semantics for a repeated scalar key: the last occurrence wins
    found = None
    for f in fields:
        if f.number == number and f.wire_type == wire_type:
            found = f
    return found


def _int(fields: list[Field], number: int) -> int | None:
    f = _first(fields, number, VARINT)
    return None if f is None else _wire.to_int32(f.value)  # type: ignore[arg-type]


def _str(fields: list[Field], number: int) -> str | None:
    f = _first(fields, number, LEN)
    return None if f is None else f.value.decode("utf-8", "replace")  # type: ignore[union-attr]


class Request:
    """What the front needs from a ``criu_req``; ``raw`` keeps the original bytes.

    ``peer_pid`` (the runtime, from SO_PEERCRED) and ``images_dir`` (the path behind ``images_dir_fd``) are filled in
    by the I/O side for the hooks; decoding leaves them None.
    """

    __slots__ = ("type", "pid", "leave_running", "freeze_cgroup", "log_file", "fds", "has_opts", "raw",
                 "peer_pid", "images_dir")

    def __init__(self, raw: bytes, type: int, pid: int | None = None, leave_running: bool = False,
                 freeze_cgroup: str | None = None, log_file: str | None = None, fds: dict[str, int] | None = None,
                 has_opts: bool = False) -> None:
        self.raw = raw
        self.type = type
        self.pid = pid
        self.leave_running = leave_running
        self.freeze_cgroup = freeze_cgroup
        self.log_file = log_file
        self.fds = fds or {}
        self.has_opts = has_opts
        self.peer_pid: int | None = None
        self.images_dir: str | None = None

    @property
    def type_name(self) -> str:
        return type_name(self.type)

    @property
    def is_plain_version(self) -> bool:
        """go-criu's version check: a VERSION request without options, which the cached answer can serve."""
        return self.type == VERSION and not self.has_opts

    def __repr__(self) -> str:
        return (f"Request({self.type_name}, pid={self.pid}, leave_running={self.leave_running}, "
                f"freeze_cgroup={self.freeze_cgroup!r}, fds={self.fds})")


def decode_request(data: bytes) -> Request:
    """Summarise a ``criu_req`` from the runtime.

    Raises:
        MessageError: not a protobuf message, or no varint ``type`` (a required field).
    """
    fields = _decode(data, "request from the runtime")
    t = _int(fields, _REQ_TYPE)
    if t is None:
        raise MessageError(f"request from the runtime has no type field ({len(data)} bytes): not a criu_req")
    opts_f = _first(fields, _REQ_OPTS, LEN)
    req = Request(data, t)
    if opts_f is None:
        return req
    opts = _decode(opts_f.value, "criu_opts in the request from the runtime")  # type: ignore[arg-type]
    req.has_opts = True
    req.pid = _int(opts, _OPT_PID)
    req.leave_running = bool(_int(opts, _OPT_LEAVE_RUNNING))
    req.freeze_cgroup = _str(opts, _OPT_FREEZE_CGROUP)
    req.log_file = _str(opts, _OPT_LOG_FILE)
    for name, number in FD_OPTIONS.items():
        n = _int(opts, number)
        if n is not None and n >= 0:
            req.fds[name] = n
    return req


def rewrite_request(data: bytes, fds: dict[str, int], pid: int | None = None) -> bytes:
    """Return ``data`` with the named fd options replaced and, if given, ``opts.pid`` set where it is absent.

    Every other field keeps its bytes and its position; a request without ``opts`` comes back unchanged.
    """
    if not fds and pid is None:
        return data
    fields = _decode(data, "request from the runtime")
    out: list[Field] = []
    for f in fields:
        if f.number == _REQ_OPTS and f.wire_type == LEN:
            opts = _decode(f.value, "criu_opts in the request from the runtime")  # type: ignore[arg-type]
            numbers = {FD_OPTIONS[k]: v for k, v in fds.items()}
            new = [_wire.varint_field(o.number, numbers[o.number])
                   if o.number in numbers and o.wire_type == VARINT else o for o in opts]
            if pid is not None and not any(o.number == _OPT_PID for o in opts):
                new.append(_wire.varint_field(_OPT_PID, pid))
            f = Field(f.number, LEN, _wire.encode(new))
        out.append(f)
    return _wire.encode(out)


class Response:
    """What the front needs from a ``criu_resp`` (a final answer or a NOTIFY); ``raw`` keeps the bytes."""

    __slots__ = ("type", "success", "notify_script", "notify_pid", "cr_errno", "cr_errmsg", "restore_pid",
                 "version", "raw")

    def __init__(self, raw: bytes, type: int, success: bool) -> None:
        self.raw = raw
        self.type = type
        self.success = success
        self.notify_script: str | None = None
        self.notify_pid: int | None = None
        self.cr_errno: int | None = None
        self.cr_errmsg: str | None = None
        self.restore_pid: int | None = None
        self.version: tuple[int, int] | None = None

    @property
    def type_name(self) -> str:
        return type_name(self.type)

    @property
    def is_notify(self) -> bool:
        return self.type == NOTIFY


def decode_response(data: bytes) -> Response:
    """Summarise a ``criu_resp`` from CRIU.

    Raises:
        MessageError: not a protobuf message, or no ``type``.
    """
    fields = _decode(data, "message from criu")
    t = _int(fields, _RESP_TYPE)
    if t is None:
        raise MessageError(f"message from criu has no type field ({len(data)} bytes): not a criu_resp")
    r = Response(data, t, bool(_int(fields, _RESP_SUCCESS)))
    r.cr_errno = _int(fields, _RESP_ERRNO)
    r.cr_errmsg = _str(fields, _RESP_ERRMSG)
    n = _first(fields, _RESP_NOTIFY, LEN)
    if n is not None:
        nf = _decode(n.value, "criu_notify from criu")  # type: ignore[arg-type]
        r.notify_script = _str(nf, _NOTIFY_SCRIPT)
        r.notify_pid = _int(nf, _NOTIFY_PID)
    rs = _first(fields, _RESP_RESTORE, LEN)
    if rs is not None:
        r.restore_pid = _int(_decode(rs.value, "criu_restore_resp from criu"), _RESTORE_PID)  # type: ignore[arg-type]
    v = _first(fields, _RESP_VERSION, LEN)
    if v is not None:
        vf = _decode(v.value, "criu_version from criu")  # type: ignore[arg-type]
        major, minor = _int(vf, _VERSION_MAJOR), _int(vf, _VERSION_MINOR)
        if major is not None and minor is not None:
            r.version = (major, minor)
    return r


def _str_field(number: int, text: str) -> Field:
    return Field(number, LEN, text.encode("utf-8", "replace"))


def encode_failure(req_type: int, errmsg: str, errno: int) -> bytes:
    """A ``criu_resp`` saying the request failed, for answers the front gives itself (CRIU never ran)."""
    return _wire.encode([_wire.varint_field(_RESP_TYPE, req_type), _wire.varint_field(_RESP_SUCCESS, 0),
                         _wire.varint_field(_RESP_ERRNO, errno), _str_field(_RESP_ERRMSG, errmsg)])


def explain_failure(data: bytes, explanation: str, errno: int) -> bytes:
    """CRIU's final response turned into a failure with gpucr's ``explanation`` in front of CRIU's own message.

    ``success`` becomes false, ``cr_errno`` is set if CRIU gave none, and ``cr_errmsg`` reads
    ``"<explanation>; criu: <criu's message>"``; every other field keeps its bytes.
    """
    fields = _decode(data, "message from criu")
    old_msg = _str(fields, _RESP_ERRMSG)
    old_errno = _int(fields, _RESP_ERRNO)
    msg = f"{explanation}; criu: {old_msg}" if old_msg else explanation
    out = [f for f in fields if f.number not in (_RESP_SUCCESS, _RESP_ERRMSG, _RESP_ERRNO)]
    out.insert(1 if out and out[0].number == _RESP_TYPE else 0, _wire.varint_field(_RESP_SUCCESS, 0))
    out.append(_wire.varint_field(_RESP_ERRNO, old_errno or errno))
    out.append(_str_field(_RESP_ERRMSG, msg))
    return _wire.encode(out)


def encode_notify_answer(success: bool) -> bytes:
    """The runtime's answer to a NOTIFY (``criu_req{type=NOTIFY, notify_success}``), when the front answers itself."""
    return _wire.encode([_wire.varint_field(_REQ_TYPE, NOTIFY), _wire.varint_field(_REQ_NOTIFY_SUCCESS, int(success))])

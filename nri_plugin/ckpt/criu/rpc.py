"""CRIU's RPC protocol without I/O: build requests, classify and check responses.

Follows CRIU 4.1's ``images/rpc.proto`` and ``criu/cr-service.c``: one request per connection (``criu swrk``), then a
stream of responses in which every ``NOTIFY`` (one per action-script stage, when ``notify_scripts`` is set) must be
answered with ``NOTIFY notify_success=…`` before CRIU continues, and a final response of the request's own type.
CRIU fills ``cr_errmsg`` even on success (a harmless rlimit error), so results are judged by ``success`` only.

Deliberately not here: sockets, processes, file descriptors, reading logs (``client.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ._pb import rpc_pb2 as pb
from .errors import CriuError
from .options import DumpOptions, RestoreOptions, _Common

__all__ = [
    "MIN_VERSION", "Notify", "Reply", "check_final", "check_version", "dump_request", "notify_answer",
    "parse_reply", "parse_request", "restore_request", "version_request",
]

MIN_VERSION = (4, 1)
INSTALL_HINT = ("install CRIU >= 4.1 (>= 4.2 for processes with TCP/UDP sockets on kernels >= 6.16; Debian sid has 4.2.x) "
                "or point gpucr at it")


class Notify(StrEnum):
    """Action-script stage names CRIU sends as NOTIFY (``criu/action-scripts.c``), in the order they occur."""

    PRE_STREAM = "pre-stream"
    PRE_DUMP = "pre-dump"                  # before CRIU freezes/seizes: the tree runs as the caller left it
    NETWORK_LOCK = "network-lock"          # tasks seized
    QUERY_EXT_FILES = "query-ext-files"
    POST_DUMP = "post-dump"                # images written
    PRE_RESTORE = "pre-restore"
    SETUP_NAMESPACES = "setup-namespaces"  # carries the restored root's pid
    POST_SETUP_NAMESPACES = "post-setup-namespaces"
    ORPHAN_PTS_MASTER = "orphan-pts-master"  # comes with a pty master fd (SCM_RIGHTS)
    POST_RESTORE = "post-restore"          # carries the restored root's pid; tasks still inside CRIU's restorer
    NETWORK_UNLOCK = "network-unlock"
    PRE_RESUME = "pre-resume"
    POST_RESUME = "post-resume"            # tasks detached and running again; CRIU ignores a failed answer
    STATUS_READY = "status-ready"


@dataclass(frozen=True)
class Reply:
    """One message from CRIU, decoded. ``notify`` is set for NOTIFY messages, and only then."""

    type: str                  # criu_req_type name: "DUMP", "RESTORE", "VERSION", "NOTIFY", ...
    success: bool
    notify: str | None = None
    notify_pid: int | None = None
    errno: int | None = None
    errmsg: str | None = None
    restored_pid: int | None = None
    dump_restored: bool | None = None
    version: tuple[int, int, int] | None = None
    version_text: str | None = None


def version_request() -> bytes:
    """A VERSION request (no options)."""
    return pb.criu_req(type=pb.VERSION).SerializeToString()


def notify_answer(success: bool) -> bytes:
    """The answer to a NOTIFY: ``success=False`` makes CRIU abort (at any stage before ``pre-resume``)."""
    return pb.criu_req(type=pb.NOTIFY, notify_success=success).SerializeToString()


def _fail(what: str, problem: str, fix: str) -> CriuError:
    return CriuError(f"invalid {what} options: {problem}; {fix}")


def _common(o: _Common, what: str, images_dir_fd: int, work_dir_fd: int | None, log_file: str) -> pb.criu_opts:
    if images_dir_fd < 0:
        raise _fail(what, f"images_dir_fd {images_dir_fd} is negative", "open the images directory first")
    if not log_file or "/" in log_file:
        raise _fail(what, f"log file {log_file!r} must be a bare file name", "CRIU writes it inside the work dir")
    if not 0 <= o.log_level <= 4:
        raise _fail(what, f"log level {o.log_level} is outside 0..4", "use 0 (none) to 4 (debug)")
    ext: list[str] = []
    for key, val in o.external_mounts.items():
        if not key or not val or "]" in key:
            raise _fail(what, f"external mount {key!r}:{val!r} is malformed",
                        "give a mountpoint (dump) or key (restore) and a non-empty value")
        ext.append(f"mnt[{key}]:{val}")
    ext.extend(o.external)
    opts = pb.criu_opts(
        images_dir_fd=images_dir_fd, log_file=log_file, log_level=o.log_level, notify_scripts=True,
        external=ext, tcp_established=o.tcp_established, ext_unix_sk=o.ext_unix_sk, file_locks=o.file_locks,
        shell_job=o.shell_job, orphan_pts_master=o.orphan_pts_master, evasive_devices=o.evasive_devices,
        tcp_close=o.tcp_close,
    )
    if work_dir_fd is not None:
        opts.work_dir_fd = work_dir_fd
    if o.manage_cgroups or o.cgroups_mode is not None:
        opts.manage_cgroups = True
    if o.cgroups_mode is not None:
        opts.manage_cgroups_mode = int(o.cgroups_mode)
    if o.root is not None:
        opts.root = o.root
    if o.empty_ns:
        opts.empty_ns = o.empty_ns
    if o.network_lock is not None:
        opts.network_lock = int(o.network_lock)
    if o.config_file is not None:
        opts.config_file = o.config_file
    return opts


def dump_request(o: DumpOptions, *, images_dir_fd: int, work_dir_fd: int | None = None,
                 log_file: str = "dump.log") -> bytes:
    """A DUMP request for ``o``; the fds are numbers in the process that will talk to criu.

    Raises:
        CriuError: the options are invalid (names the option and the fix).
    """
    if o.pid <= 0:
        raise _fail("dump", f"pid {o.pid} is not a process id", "pass the pid of the tree's root (DumpOptions.pid)")
    opts = _common(o, "dump", images_dir_fd, work_dir_fd, log_file)
    opts.pid = o.pid
    opts.leave_running = o.leave_running
    opts.link_remap = o.link_remap
    opts.force_irmap = o.force_irmap
    opts.irmap_scan_paths.extend(o.irmap_scan_paths)
    opts.tcp_skip_in_flight = o.tcp_skip_in_flight
    opts.skip_mnt.extend(o.skip_mounts)
    if o.ghost_limit is not None:
        if not 0 <= o.ghost_limit < 2**32:
            raise _fail("dump", f"ghost limit {o.ghost_limit} is outside 0..4 GiB", "give a size in bytes")
        opts.ghost_limit = o.ghost_limit
    if o.freeze_cgroup is not None:
        opts.freeze_cgroup = o.freeze_cgroup
    if o.timeout_s is not None:
        if o.timeout_s <= 0:
            raise _fail("dump", f"timeout {o.timeout_s} s is not positive", "give seconds > 0 or None")
        opts.timeout = o.timeout_s
    return pb.criu_req(type=pb.DUMP, opts=opts).SerializeToString()


def restore_request(o: RestoreOptions, *, images_dir_fd: int, work_dir_fd: int | None = None,
                    log_file: str = "restore.log", inherit_fds: dict[str, int] | None = None) -> bytes:
    """A RESTORE request for ``o``.

    Args:
        inherit_fds: key -> fd number *as criu will see it* (the client passes the fds on); defaults to
            ``o.inherit_fds`` unchanged.

    Raises:
        CriuError: the options are invalid.
    """
    opts = _common(o, "restore", images_dir_fd, work_dir_fd, log_file)
    opts.rst_sibling = o.rst_sibling
    for key, fd in (o.inherit_fds if inherit_fds is None else inherit_fds).items():
        if not key or fd < 0:
            raise _fail("restore", f"inherit fd {key!r}:{fd} is malformed", "map a file key to an open fd")
        opts.inherit_fd.add(key=key, fd=fd)
    for ctrl, path in o.cgroup_roots.items():
        root = opts.cg_root.add(path=path)
        if ctrl is not None:
            root.ctrl = ctrl
    for j in o.join_ns:
        jn = opts.join_ns.add(ns=j.ns, ns_file=j.ns_file)
        if j.extra_opt is not None:
            jn.extra_opt = j.extra_opt
    if o.lsm_profile is not None:
        opts.lsm_profile = o.lsm_profile
    return pb.criu_req(type=pb.RESTORE, opts=opts).SerializeToString()


def parse_request(data: bytes) -> pb.criu_req:
    """Decode a request as a runtime (runc, go-criu) sends it, for a CRIU front that inspects or rewrites it.

    Fields this subset does not define are kept and re-encoded untouched by ``SerializeToString()``.

    Raises:
        CriuError: the bytes are not a criu_req (the runtime's fault, or a wrong peer).
    """
    msg = pb.criu_req()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # DecodeError, or RuntimeError/ValueError depending on the protobuf backend
        raise CriuError(f"the runtime sent a message that is not a criu_req ({len(data)} bytes)") from exc
    if not msg.IsInitialized():
        raise CriuError(f"the runtime sent a criu_req without {', '.join(msg.FindInitializationErrors())}")
    return msg


def parse_reply(data: bytes) -> Reply:
    """Decode one message from CRIU.

    Raises:
        CriuError: the bytes are not a criu_resp (CRIU's fault, or a wrong peer).
    """
    msg = pb.criu_resp()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, or a RuntimeError/ValueError on some backends
        raise CriuError(f"criu sent a message that is not a criu_resp ({len(data)} bytes: {data[:32]!r}…)") from exc
    if not msg.IsInitialized():  # python protobuf parses partial messages; CRIU always sets type and success
        missing = ", ".join(msg.FindInitializationErrors())
        raise CriuError(f"criu sent a message that is not a criu_resp (missing {missing}; {len(data)} bytes)")
    try:
        kind = pb.criu_req_type.Name(msg.type)
    except ValueError:
        kind = f"type {msg.type}"
    version = text = None
    if msg.HasField("version"):
        v = msg.version
        version = (v.major_number, v.minor_number, v.sublevel)
        text = ".".join(map(str, version if v.sublevel else version[:2])) + (f" ({v.gitid})" if v.gitid else "")
    return Reply(
        type=kind, success=msg.success,
        notify=msg.notify.script if msg.HasField("notify") else None,
        notify_pid=msg.notify.pid if msg.HasField("notify") and msg.notify.HasField("pid") else None,
        errno=msg.cr_errno if msg.HasField("cr_errno") else None,
        errmsg=msg.cr_errmsg if msg.HasField("cr_errmsg") else None,
        restored_pid=msg.restore.pid if msg.HasField("restore") else None,
        dump_restored=msg.dump.restored if msg.HasField("dump") else None,
        version=version, version_text=text,
    )


def check_final(reply: Reply, expected: str, what: str) -> Reply:
    """Check CRIU's final response to a request of type ``expected`` ("DUMP", "RESTORE", "VERSION").

    Args:
        what: the object, for the message ("dump of pid 42").

    Raises:
        CriuError: CRIU reported failure (with its errno and last error line), or answered with another type.
    """
    if not reply.success:
        detail = f": {reply.errmsg.strip()}" if reply.errmsg else ""
        errno = f" (errno {reply.errno})" if reply.errno else ""
        raise CriuError(f"criu failed the {what}{errno}{detail}", errno=reply.errno, criu_errmsg=reply.errmsg)
    if reply.type != expected:
        raise CriuError(f"criu answered the {what} with a {reply.type} response instead of {expected} "
                        "(protocol error: a criu that does not speak gpucr's RPC subset?)")
    return reply


def check_version(reply: Reply, binary: str) -> tuple[int, int, int]:
    """The version from a VERSION response, refused when older than :data:`MIN_VERSION`.

    Raises:
        CriuError: no version in the answer, or too old (names the version found and the fix).
    """
    check_final(reply, "VERSION", f"version query of {binary}")
    if reply.version is None:
        raise CriuError(f"criu at {binary} answered VERSION without a version; {INSTALL_HINT}")
    if reply.version[:2] < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise CriuError(f"criu at {binary} is version {reply.version_text}, gpucr needs CRIU >= {need}: {INSTALL_HINT}")
    return reply.version

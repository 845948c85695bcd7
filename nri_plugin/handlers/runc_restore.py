"""gpucr's runc wrapper, restore half: ``runc create`` of a container the plugin ticketed for a restore becomes
``runc restore --detach`` (``gpucr.io/restore-from``; the plugin's half: :mod:`.nri_restore`; why: docs/design.md).

The route's ``bin/runc`` (install/front.sh) calls :func:`main` only for a ``create`` whose bundle's config.json
names ``gpucr.io/restore-from``; everything else goes straight to the runtime it wraps. Here the plugin's ticket is
the authority (an annotation alone, e.g. passed through while the plugin was down, restores nothing: the create
fails with the reason). The shim's create options map onto restore's (``--pid-file``, ``--console-socket``,
``--no-pivot``); runc's stdio are the container's new stdio, which runc restore hands to the restored tree in place
of the checkpointed pipes (``descriptors.json``). After a successful restore the wrapper leaves ``gpucr-restored``
in runc's state dir of the container, so containerd's following ``runc start`` (which would fail on a running
container) is answered by the wrapper as done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["RESTORED_MARK", "CreateArgs", "RuncArgsError", "main", "parse_create", "restore_argv"]

#: left in ``<runc root>/<id>/`` after a restore: the wrapper then answers ``runc start`` itself
RESTORED_MARK = "gpucr-restored"
_GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}


class RuncArgsError(Exception):
    """A ``runc create`` command line the restore cannot map."""


@dataclass
class CreateArgs:
    globals_: list[str] = field(default_factory=list)
    root: str = "/run/runc"
    bundle: str = "."
    pid_file: str | None = None
    console_socket: str | None = None
    no_pivot: bool = False
    log: str | None = None
    container_id: str = ""


def _opt(args: Sequence[str], i: int, a: str) -> tuple[str, int]:
    if "=" in a:
        return a.split("=", 1)[1], i + 1
    if i + 1 >= len(args):
        raise RuncArgsError(f"{a} needs a value")
    return args[i + 1], i + 2


def parse_create(args: Sequence[str]) -> CreateArgs:
    """runc's argv (without the program) for ``create``. Raises RuncArgsError for what restore cannot take."""
    out = CreateArgs()
    i = 0
    while i < len(args) and args[i] != "create":
        a = args[i]
        name = a.split("=", 1)[0]
        if name in _GLOBAL_WITH_VALUE:
            v, j = _opt(args, i, a)
            out.globals_ += args[i:j]
            if name == "--root":
                out.root = v
            elif name == "--log":
                out.log = v
            i = j
        elif a.startswith("-"):
            out.globals_.append(a)
            i += 1
        else:
            raise RuncArgsError(f"expected the create command, found {a!r}")
    if i >= len(args):
        raise RuncArgsError("not a create command")
    i += 1
    positional: list[str] = []
    while i < len(args):
        a = args[i]
        name = a.split("=", 1)[0]
        if name in ("--bundle", "-b"):
            out.bundle, i = _opt(args, i, a)
        elif name == "--pid-file":
            out.pid_file, i = _opt(args, i, a)
        elif name == "--console-socket":
            out.console_socket, i = _opt(args, i, a)
        elif name == "--preserve-fds":
            v, i = _opt(args, i, a)
            if v != "0":
                raise RuncArgsError(f"--preserve-fds {v}: a restored container cannot take extra fds")
        elif a == "--no-pivot":
            out.no_pivot, i = True, i + 1
        elif a in ("--no-new-keyring", "--detach", "-d"):
            i += 1  # the restored processes keep their keyring; restore is always detached here
        elif a.startswith("-"):
            raise RuncArgsError(f"runc create option {a} has no runc restore counterpart")
        else:
            positional.append(a)
            i += 1
    if len(positional) != 1:
        raise RuncArgsError(f"expected one container id, got {positional}")
    out.container_id = positional[0]
    return out


def restore_argv(runc: str, c: CreateArgs, images: str, work: str) -> list[str]:
    """The ``runc restore`` command standing in for ``c``'s create (detached, no subreaper: the shim reaps)."""
    argv = [runc, *c.globals_, "restore", "--detach", "--no-subreaper", "--bundle", c.bundle, "--image-path", images,
            "--work-path", work]
    if c.pid_file:
        argv += ["--pid-file", c.pid_file]
    if c.console_socket:
        argv += ["--console-socket", c.console_socket]
    if c.no_pivot:
        argv.append("--no-pivot")
    return [*argv, c.container_id]


def _fail(c: CreateArgs | None, msg: str) -> int:
    line = f"gpucr: {msg}"
    print(line, file=sys.stderr, flush=True)
    if c is not None and c.log:  # the shim shows runc's last error from its log
        try:
            with open(c.log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"level": "error", "msg": line,
                                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        except OSError:
            pass
    return 1


def _criu_errors(work: str) -> str:
    """CRIU's own error lines of the restore (its RLIMIT_NOFILE complaint is harmless), for the runtime's error."""
    try:
        with open(os.path.join(work, "restore.log"), encoding="utf-8", errors="replace") as f:
            errs = [ln.strip() for ln in f if "Error (" in ln and "RLIMIT_NOFILE" not in ln]
    except OSError:
        return ""
    return f": CRIU says: {' | '.join(errs[:3])}" if errs else ""


def _shared_pid_ns(c: CreateArgs, images: str) -> str:
    """A restore into the pod's shared pid namespace (the bundle's spec names one by path): its pids checked free
    there and the namespace's pid cursor moved above them (:mod:`nri_plugin.ckpt.pidns`). Returns an error, or ""."""
    try:
        with open(os.path.join(c.bundle, "config.json"), encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as exc:
        return f"container {c.container_id}: cannot read the bundle's config.json ({exc})"
    ns = next((n.get("path") for n in (spec.get("linux") or {}).get("namespaces") or []
               if n.get("type") == "pid"), None)
    if not ns:
        return ""
    from pathlib import Path

    from ..ckpt.pidns import PidNsError, prepare
    try:
        prepare(Path(images), ns, f"container {c.container_id}")
    except PidNsError as exc:
        return str(exc)
    return ""


def main(argv: Sequence[str]) -> int:
    """``runc_restore.py --criu PATH/criu -- RUNC ARGS...`` (from the route's wrapper). Returns runc's status."""
    args = list(argv[1:])
    if len(args) < 4 or args[0] != "--criu" or args[2] != "--":
        return _fail(None, f"runc wrapper: bad restore call {args!r}")
    criu, runc, rest = args[1], args[3], args[4:]
    try:
        c = parse_create(rest)
    except RuncArgsError as exc:
        return _fail(None, f"restore of a container from gpucr.io/restore-from: {exc}")
    from pathlib import Path

    from ..ckpt.restore_source import RestoreSourceError
    from ..errors import GpucrError
    from ..front.config import load
    from ..policy.config import load_config
    from .nri_restore import finish, load_ticket
    try:
        values = load({}, criu).values
        node = load_config(Path(values["node_config"]) if values.get("node_config") else None)
        ticket = load_ticket(node.state_dir, c.container_id)
    except (GpucrError, RestoreSourceError) as exc:
        return _fail(c, f"container {c.container_id}: restore from gpucr.io/restore-from failed at step ticket: {exc}")
    if ticket is None:
        return _fail(c, f"container {c.container_id} names gpucr.io/restore-from but gpucr's plugin did not check "
                        f"it (no ticket in {node.state_dir}/restore): was `gpucr plugin` running when it was "
                        "created? Recreate the container with the plugin running")
    try:
        if not os.path.isdir(ticket.images):
            return _fail(c, f"container {c.container_id}: the staged images {ticket.images} of checkpoint "
                            f"{ticket.checkpoint!r} are gone; recreate the container")
        problem = "" if os.environ.get("GPUCR_AB_NOFIX") else _shared_pid_ns(c, ticket.images)
        if problem:
            return _fail(c, f"restore from checkpoint {ticket.checkpoint!r} refused: {problem}")
        r = subprocess.run(restore_argv(runc, c, ticket.images, ticket.work), check=False)
        if r.returncode == 0:
            mark = os.path.join(c.root, c.container_id, RESTORED_MARK)
            with open(mark, "w", encoding="utf-8") as f:
                f.write(ticket.checkpoint + "\n")
        else:
            _fail(c, f"container {c.container_id}: runc restore from checkpoint {ticket.checkpoint!r} failed "
                     f"(status {r.returncode}){_criu_errors(ticket.work)}; CRIU's log: {ticket.work}/restore.log "
                     "(kept until the container is removed)")
        return r.returncode
    finally:
        finish(node, c.container_id, keep_work=True)

"""gpucr's runc wrapper, restore half: ``runc create`` of a container the plugin ticketed for a restore becomes
``runc restore --detach`` (``gpucr.io/restore-from``; the plugin's half: :mod:`.nri_restore`; why: docs/design.md).

The route's ``bin/runc`` (install/front.sh) calls :func:`main` only for a ``create`` whose bundle's config.json
names ``gpucr.io/restore-from`` or for which gpucr's plugin left a ticket in its state dir; everything else goes
straight to the runtime it wraps. Here the plugin's ticket is the authority (an annotation alone, e.g. passed through
while the plugin was down, restores nothing), and the ticket without the plugin's annotation in the spec means
containerd dropped the plugin's answer (its NRI request timeout): the create fails with the reason, never starts
fresh. The slow half of the restore runs here, where no NRI timeout applies: the manifest's digests, staging (hard
links of a gpucr images dir, or CRI's archive extracted), the archive's rootfs changes applied to the bundle's rootfs
(``ckpt.rootfs_diff``); any failure fails the create with one line, drops the lock and the staged files. The shim's create options map onto restore's (``--pid-file``, ``--console-socket``,
``--no-pivot``); runc's stdio are the container's new stdio, which runc restore hands to the restored tree in place
of the checkpointed pipes (``descriptors.json``). After a successful restore the wrapper leaves ``gpucr-restored``
in runc's state dir of the container, so containerd's following ``runc start`` (which would fail on a running
container) is answered by the wrapper as done.

A chaining runtime in front of runc (``nvidia-container-runtime``: it edits config.json only for ``create``, adding
the driver's device nodes, library mounts and hooks, then execs the first ``runc`` on PATH; its ``restore`` passes
through unedited) would restore into a spec without the mounts and devices the checkpoint holds as CRIU's external
mounts. So when the wrapper's target is not runc itself (front.conf ``restore_route``: ``auto``, ``direct``,
``chain``), the create is handed to the target unchanged with the route's ``chain/`` dir first on PATH: the target
edits the spec and execs ``chain/runc`` (:func:`inner_main`), which restores with the real runc into the edited spec.
A target that creates the container without running ``runc`` from PATH is caught (no restore mark), the created
container deleted, the create failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GpucrError

__all__ = ["CHAIN_ENV", "DEFAULT_RESTORE_FLAGS", "RESTORED_MARK", "CreateArgs", "RuncArgsError", "inner_main", "main",
           "legacy_nvidia_hook", "parse_create", "real_runc", "resolve_bind_sources", "restore_argv", "restore_flags",
           "restore_route"]

#: left in ``<runc root>/<id>/`` after a restore: the wrapper then answers ``runc start`` itself
RESTORED_MARK = "gpucr-restored"
_GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}
#: set for the target's create in a chained restore: the id of the container the route's chain/runc restores
CHAIN_ENV = "GPUCR_RESTORE_CHAIN_ID"
#: where a runtime without PATH looks (nvidia-container-toolkit pkg/lookup/path.go: the same list after PATH)
_DEFAULT_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


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


#: for a checkpoint that records none (a runtime's own dump, kubelet's archive, an older gpucr): each of these only
#: lets CRIU restore what the images hold (established connections, external unix sockets, file locks) and changes
#: nothing for images without them; --shell-job, which changes the restored tree's session, only when recorded
DEFAULT_RESTORE_FLAGS = ("--tcp-established", "--ext-unix-sk", "--file-locks")


def restore_flags(meta_extra: dict[str, Any]) -> list[str]:
    """runc restore's flags matching the checkpoint's dump (its ``criu_dump`` record, ckpt.layout.DUMP_FLAGS: runc
    names each option as CRIU does, ``tcp_established`` -> ``--tcp-established``), else the defaults."""
    from ..ckpt.layout import CRIU_DUMP, DUMP_FLAGS
    rec = meta_extra.get(CRIU_DUMP)
    if not isinstance(rec, dict):
        return list(DEFAULT_RESTORE_FLAGS)
    return ["--" + key.replace("_", "-") for key in DUMP_FLAGS if rec.get(key) is True]


def restore_argv(runc: str, c: CreateArgs, images: str, work: str, flags: Sequence[str] = ()) -> list[str]:
    """The ``runc restore`` command standing in for ``c``'s create (detached, no subreaper: the shim reaps), with
    the CRIU ``flags`` of :func:`restore_flags`."""
    argv = [runc, *c.globals_, "restore", "--detach", "--no-subreaper", "--bundle", c.bundle, "--image-path", images,
            "--work-path", work, *flags]
    if c.pid_file:
        argv += ["--pid-file", c.pid_file]
    if c.console_socket:
        argv += ["--console-socket", c.console_socket]
    if c.no_pivot:
        argv.append("--no-pivot")
    return [*argv, c.container_id]


def restore_route(target: str, values: dict[str, str]) -> str:
    """``direct`` (``TARGET restore``) or ``chain`` (``TARGET create`` whose ``runc`` restores): front.conf's
    ``restore_route``, where ``auto`` (the default) means direct only for a target named ``runc``."""
    v = values.get("restore_route") or "auto"
    if v not in ("auto", "direct", "chain"):
        raise RuncArgsError(f"front.conf restore_route = {v!r}: expected auto, direct or chain")
    if v == "auto":
        return "direct" if os.path.basename(target) == "runc" else "chain"
    return v


def route_dirs(criu: str) -> tuple[str, str]:
    """The route's ``chain/`` and ``bin/`` dirs, beside ``path/`` where the front (``criu``) is."""
    top = os.path.dirname(os.path.dirname(os.path.abspath(criu)))
    return os.path.join(top, "chain"), os.path.join(top, "bin")


def real_runc(path: str, skip: Sequence[str]) -> str | None:
    """The first executable ``runc`` on ``path`` (then the usual system dirs) outside ``skip`` (gpucr's own)."""
    skipped = {os.path.realpath(d) for d in skip}
    for d in [*path.split(":"), *_DEFAULT_PATH]:
        if not d or not os.path.isabs(d) or os.path.realpath(d) in skipped:
            continue
        f = os.path.join(d, "runc")
        if os.path.isfile(f) and os.access(f, os.X_OK):
            return f
    return None


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


def _spec(bundle: str) -> dict[str, Any]:
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as exc:
        raise RuncArgsError(f"cannot read the bundle's config.json in {bundle}: {exc}") from exc
    if not isinstance(spec, dict):
        raise RuncArgsError(f"the bundle's config.json in {bundle} is not an object")
    return spec


def resolve_bind_sources(bundle: str, spec: dict[str, Any]) -> list[str]:
    """Point each bind mount whose source is a symlink at the file it names, in the bundle's config.json.

    ``runc create`` follows a symlinked source when it mounts; ``runc restore`` hands the source to CRIU as the
    external mount's path, and CRIU's mount engine clones it without following the last link, then fails ("Can't
    remount ... with MS_PRIVATE: Invalid argument"). NVIDIA's CDI specs name such sources (e.g. a driver's
    ``nvidia_icd.json`` linked into /usr/share/vulkan; bench/results/gpu_nvidia_runtime.md). Returns what was
    changed (``destination: old -> new``)."""
    changed = []
    for m in spec.get("mounts") or []:
        if not isinstance(m, dict):
            continue
        src, opts = m.get("source"), m.get("options") or []
        if not isinstance(src, str) or not os.path.isabs(src):
            continue
        if (m.get("type") == "bind" or "bind" in opts or "rbind" in opts) and os.path.islink(src):
            real = os.path.realpath(src)
            changed.append(f"{m.get('destination')}: {src} -> {real}")
            m["source"] = real
    if changed:
        path = os.path.join(bundle, "config.json")
        tmp = f"{path}.gpucr-tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        os.replace(tmp, path)
    return changed


#: NVIDIA's legacy-mode hook (nvidia-container-runtime in mode "legacy", Docker's --gpus): at create it mounts the
#: driver's files and /proc/driver/nvidia into the container and allows the devices in its cgroup, none of it in the
#: spec; runc restore runs prestart hooks while CRIU restores those same mounts
LEGACY_NVIDIA_HOOKS = frozenset({"nvidia-container-runtime-hook", "nvidia-container-toolkit"})


def legacy_nvidia_hook(spec: dict[str, Any]) -> str | None:
    """The path of NVIDIA's legacy prestart/createRuntime hook in ``spec``, or None."""
    hooks = spec.get("hooks") or {}
    for kind in ("prestart", "createRuntime"):
        for h in hooks.get(kind) or [] if isinstance(hooks, dict) else []:
            path = h.get("path") if isinstance(h, dict) else None
            if isinstance(path, str) and os.path.basename(path) in LEGACY_NVIDIA_HOOKS:
                return path
    return None


def _stage_delay(values: dict[str, str]) -> None:
    """Test-only: ``test_restore_stage_delay_s`` in front.conf makes staging that much slower (tests showing that a
    slow staging no longer meets containerd's NRI timeout). A product config never sets it."""
    if values.get("test_restore_stage_delay_s"):
        time.sleep(float(values["test_restore_stage_delay_s"]))


def _restore(runc: str, c: CreateArgs, node: Any, ticket: Any, spec: dict[str, Any], values: dict[str, str]) -> int:
    """The slow half of a restore, where no NRI timeout runs: the manifest's digests, staging, the rootfs changes,
    then ``runc restore``. Raises GpucrError naming the step."""
    from ..ckpt.restore_source import RestoreSourceError, open_source, stage
    from ..ckpt.rootfs_diff import apply
    from .nri_restore import stage_gpu_map

    what = f"container {c.container_id}: restore from checkpoint {ticket.checkpoint!r}"
    hook = legacy_nvidia_hook(spec)
    if hook is not None:
        raise RestoreSourceError(
            f"{what} refused at step nvidia-hook: the container's spec runs NVIDIA's legacy-mode hook {hook}, which "
            "mounts the driver into the container and allows its devices outside the spec, while runc restore runs it "
            "as CRIU restores those mounts: gpucr restores GPU containers only through CDI (the spec names the "
            "driver's devices and mounts). Fix: set the NVIDIA runtime's mode to \"cdi\" or \"jit-cdi\" (in "
            "/etc/nvidia-container-runtime/config.toml; its default \"auto\" picks jit-cdi from toolkit 1.18), or "
            "use CDI devices (nvidia.com/gpu=...), then recreate the container")
    try:
        src = open_source(node.checkpoint_root, ticket.checkpoint, verify_sha256=True)
    except RestoreSourceError as exc:
        raise RestoreSourceError(f"{what} refused at step verify: {exc}") from exc
    if str(src.path) != ticket.path or src.kind != ticket.kind:
        raise RestoreSourceError(f"{what} refused at step verify: it is now {src.path} ({src.kind}), gpucr's plugin "
                                 f"checked {ticket.path} ({ticket.kind}); recreate the container")
    _stage_delay(values)
    staged = stage(src, node.checkpoint_root, c.container_id)
    if ticket.gpu_map and src.marker is not None:
        stage_gpu_map(staged.images, src.marker, ticket.gpu_map)
    if staged.rootfs_diff is not None or staged.deleted:
        root = str((spec.get("root") or {}).get("path") or "rootfs")
        rootfs = Path(root if os.path.isabs(root) else os.path.join(c.bundle, root))
        try:
            done = apply(rootfs, staged.rootfs_diff, staged.deleted)
        except GpucrError as exc:
            raise RestoreSourceError(f"{what} refused at step rootfs-diff (its rootfs-diff.tar/deleted.files): "
                                     f"{exc}; the checkpoint is not usable as it is") from exc
        if staged.rootfs_diff is not None:
            staged.rootfs_diff.unlink(missing_ok=True)
        print(f"gpucr: {what}: rootfs changes applied ({done.written} written, {done.removed} removed)",
              file=sys.stderr, flush=True)
    problem = _shared_pid_ns(c, spec, str(staged.images))
    if problem:
        raise RestoreSourceError(f"{what} refused at step pid-namespace: {problem}")
    for line in resolve_bind_sources(c.bundle, spec):
        print(f"gpucr: {what}: bind mount source resolved for CRIU: {line}", file=sys.stderr, flush=True)
    r = subprocess.run(restore_argv(runc, c, str(staged.images), str(staged.work), restore_flags(src.meta.extra)),
                       check=False)
    if r.returncode == 0:
        mark = os.path.join(c.root, c.container_id, RESTORED_MARK)
        with open(mark, "w", encoding="utf-8") as f:
            f.write(ticket.checkpoint + "\n")
    else:
        _fail(c, f"{what} failed: runc restore exited with status {r.returncode}{_criu_errors(str(staged.work))}; "
                 f"CRIU's log: {staged.work}/restore.log (kept until the container is removed)")
    return r.returncode


def _shared_pid_ns(c: CreateArgs, spec: dict[str, Any], images: str) -> str:
    """A restore into the pod's shared pid namespace (the bundle's spec names one by path): its pids checked free
    there and the namespace's pid cursor moved above them (:mod:`nri_plugin.ckpt.pidns`). Returns an error, or ""."""
    ns = next((n.get("path") for n in (spec.get("linux") or {}).get("namespaces") or []
               if isinstance(n, dict) and n.get("type") == "pid"), None)
    if not ns:
        return ""
    from ..ckpt.pidns import PidNsError, prepare
    try:
        prepare(Path(images), ns, f"container {c.container_id}")
    except PidNsError as exc:
        return str(exc)
    return ""


def _ticket_problem(c: CreateArgs, annotations: dict[str, str], ticket: Any) -> str:
    """Why the plugin's ticket does not allow this create to restore, or "" when it does."""
    from .nri_restore import PENDING, REFUSED, RESTORE_ANNOTATION, TICKET_ANNOTATION
    if ticket.state == REFUSED:
        return f"{ticket.error} (gpucr's plugin refused it at CreateContainer; containerd created the container " \
               "anyway, without the plugin's answer)"
    if ticket.state == PENDING or annotations.get(TICKET_ANNOTATION) != c.container_id:
        late = "had not finished its checks" if ticket.state == PENDING else "answered too late"
        return (f"container {c.container_id} asked for gpucr.io/restore-from {ticket.checkpoint!r} but containerd "
                f"created it without gpucr's adjustments: gpucr's plugin {late} when containerd stopped waiting "
                "(containerd's NRI plugin_request_timeout; `gpucr doctor` shows it). Not starting it fresh: remove "
                "it and create it again")
    if annotations.get(RESTORE_ANNOTATION) != ticket.checkpoint:
        return (f"container {c.container_id}: its spec restores {annotations.get(RESTORE_ANNOTATION)!r}, gpucr's "
                f"plugin checked {ticket.checkpoint!r}; recreate the container")
    return ""


def _through_chain(target: str, rest: list[str], c: CreateArgs, criu: str, ticket: Any, values: dict[str, str]) -> int:
    """The restore as the target's own create: ``TARGET create ...`` with the route's ``chain/`` first on PATH, so
    the target edits the spec as for any create and its ``runc`` (:func:`inner_main`) restores into it."""
    what = f"container {c.container_id}: restore from checkpoint {ticket.checkpoint!r}"
    chain, _ = route_dirs(criu)
    if not os.access(os.path.join(chain, "runc"), os.X_OK):
        return _fail(c, f"{what} refused at step chain: {chain}/runc is missing (a route made before gpucr restored "
                        f"through {target}); fix: run install/front.sh install (or gpucr setup --apply) again")
    env = {**os.environ, "PATH": f"{chain}:{os.environ.get('PATH') or ':'.join(_DEFAULT_PATH)}",
           CHAIN_ENV: c.container_id}
    start = _log_size(c.log)
    r = subprocess.run([target, *rest], env=env, check=False)
    if os.path.exists(os.path.join(c.root, c.container_id, RESTORED_MARK)):
        return r.returncode
    if r.returncode != 0:
        inner = _last_gpucr_error(c.log, start)
        if inner:  # the inner restore's own line (the shim shows only the last one)
            return _fail(c, f"{inner} (through {target} create, which exited with status {r.returncode})")
        return _fail(c, f"{what} failed at step chain: {target} create exited with status {r.returncode} (the "
                        "restore runs inside it; its own error is above or in the container's log)")
    subprocess.run([target, *c.globals_, "delete", "--force", c.container_id], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conf = values.get("conf_file") or "the route's front.conf"
    return _fail(c, f"{what} failed at step chain: {target} created the container without running `runc` from "
                    "PATH (it is a low-level runtime itself, or its configuration names its runtime by absolute "
                    "path), so nothing was restored and the created container was deleted; fix: set restore_route "
                    f"= direct in {conf} if {target} is a runc, or let the runtime find `runc` on PATH "
                    "(nvidia-container-runtime: runtimes = [\"runc\"] in its config.toml)")


def _log_size(log: str | None) -> int:
    try:
        return os.path.getsize(log) if log else 0
    except OSError:
        return 0


def _last_gpucr_error(log: str | None, start: int) -> str:
    """The last ``gpucr: ...`` error written to runc's log after offset ``start`` (by the inner restore), or ""."""
    if not log:
        return ""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for ln in reversed(lines):
        try:
            msg = json.loads(ln).get("msg", "")
        except (ValueError, AttributeError):
            continue
        if isinstance(msg, str) and msg.startswith("gpucr: "):
            return msg[len("gpucr: "):]
    return ""


def _load(c: CreateArgs, criu: str) -> tuple[dict[str, str], Any, Any]:
    from ..front.config import load
    from ..policy.config import load_config
    from .nri_restore import load_ticket
    cfg = load({}, criu)
    values = {**cfg.values, "conf_file": cfg.conf_file or ""}
    node = load_config(Path(values["node_config"]) if values.get("node_config") else None)
    return values, node, load_ticket(node.state_dir, c.container_id)


def main(argv: Sequence[str]) -> int:
    """``runc_restore.py --criu PATH/criu -- TARGET ARGS...`` (from the route's wrapper, for a ``create`` whose spec
    names ``gpucr.io/restore-from`` or for which gpucr's plugin left a ticket), or ``--criu PATH/criu --inner --
    ARGS...`` (the route's ``chain/runc``: :func:`inner_main`). Returns the runtime's status."""
    args = list(argv[1:])
    if len(args) >= 4 and args[0] == "--criu" and args[2] == "--inner" and args[3] == "--":
        return inner_main(args[1], args[4:])
    if len(args) < 4 or args[0] != "--criu" or args[2] != "--":
        return _fail(None, f"runc wrapper: bad restore call {args!r}")
    criu, runc, rest = args[1], args[3], args[4:]
    try:
        c = parse_create(rest)
        spec = _spec(c.bundle)
    except RuncArgsError as exc:
        return _fail(None, f"restore of a container from gpucr.io/restore-from: {exc}")
    from ..ckpt.restore_source import RestoreSourceError
    from .nri_restore import RESTORE_ANNOTATION, finish
    annotations = spec.get("annotations") or {}
    try:
        values, node, ticket = _load(c, criu)
        route = restore_route(runc, values)
    except (GpucrError, RestoreSourceError, RuncArgsError) as exc:
        return _fail(c, f"container {c.container_id}: restore from gpucr.io/restore-from failed at step ticket: {exc}")
    if ticket is None:
        if RESTORE_ANNOTATION not in annotations:  # the shell's grep matched elsewhere (an env value, a path)
            os.execv(runc, [runc, *rest])
        return _fail(c, f"container {c.container_id} names gpucr.io/restore-from but gpucr's plugin did not check "
                        f"it (no ticket in {node.state_dir}/restore): was `gpucr plugin` running when it was "
                        "created? Recreate the container with the plugin running")
    ran = False
    try:
        problem = _ticket_problem(c, annotations, ticket)
        if problem:
            return _fail(c, problem)
        ran = True
        if route == "chain":
            return _through_chain(runc, rest, c, criu, ticket, values)
        return _restore(runc, c, node, ticket, spec, values)
    except (GpucrError, OSError) as exc:
        ran = False
        return _fail(c, str(exc) if isinstance(exc, GpucrError) else
                     f"container {c.container_id}: restore from checkpoint {ticket.checkpoint!r} failed: {exc}")
    finally:
        finish(node, c.container_id, keep_work=ran)


def inner_main(criu: str, rest: list[str]) -> int:
    """The route's ``chain/runc``: the ``runc`` a chaining target finds first on PATH during :func:`_through_chain`.
    The create of the container named by ``CHAIN_ENV`` becomes ``runc restore`` into the spec as the target left it
    (the ticket checked again, nothing released: the outer wrapper does that); anything else runs the real runc,
    the first ``runc`` on PATH outside the route (never the wrapper or this, so no loop)."""
    chain, bin_dir = route_dirs(criu)
    runc = real_runc(os.environ.get("PATH", ""), [chain, bin_dir, os.path.dirname(os.path.abspath(criu))])
    want = os.environ.pop(CHAIN_ENV, "")
    os.environ["PATH"] = ":".join(d for d in os.environ.get("PATH", "").split(":")
                                  if d and os.path.realpath(d) != os.path.realpath(chain))
    if runc is None:
        return _fail(None, f"gpucr chain/runc: no runc on PATH outside gpucr's route ({chain}); fix: install runc "
                           f"where the runtime in front of it looks ({':'.join(_DEFAULT_PATH)})")
    try:
        c = parse_create(rest)
    except RuncArgsError:
        c = None
    if c is None or not want or c.container_id != want:
        os.execv(runc, [runc, *rest])
    from ..ckpt.restore_source import RestoreSourceError
    try:
        spec = _spec(c.bundle)
        values, node, ticket = _load(c, criu)
    except (GpucrError, RestoreSourceError, RuncArgsError) as exc:
        return _fail(c, f"container {c.container_id}: restore from gpucr.io/restore-from failed at step chain: {exc}")
    if ticket is None:
        return _fail(c, f"container {c.container_id}: restore through the runtime chain found no ticket in "
                        f"{node.state_dir}/restore (removed meanwhile?); recreate the container")
    problem = _ticket_problem(c, spec.get("annotations") or {}, ticket)
    if problem:
        return _fail(c, f"{problem} (after the runtime in front of runc edited the spec)")
    try:
        return _restore(runc, c, node, ticket, spec, values)
    except (GpucrError, OSError) as exc:
        return _fail(c, str(exc) if isinstance(exc, GpucrError) else
                     f"container {c.container_id}: restore from checkpoint {ticket.checkpoint!r} failed: {exc}")

"""``gpucr checkpoint`` and ``gpucr restore``: direct, GPU-safe checkpoint/restore of a process tree or container.

``gpucr checkpoint (--pid PID | CONTAINER [--via-runtime]) --to DIR [--leave-running] [--force] [--json]`` and
``gpucr restore DIR [--gpu-map OLD=NEW,...] [--json]``. CONTAINER is an exact id, a unique id prefix or a unique
name that containerd knows (CRI, and its task API in ``--namespace``, default ``default``: :mod:`._resolve`); nothing
else is ever taken for a container. The node config (``/etc/gpucr/config.toml``, or ``--config``/``GPUCR_CONFIG``;
root-owned and not group/world-writable, because it names the libcuda loaded as root) gives ``checkpoint_root``,
which every ``--to`` and restore ``DIR`` must lie in, the default ``lock_timeout_ms`` and ``libcuda``. The CUDA driver
and NVML can also be named with ``--libcuda``/``GPUCR_LIBCUDA`` and ``--libnvml``/``GPUCR_LIBNVML`` (the tests point
both at the fake driver), CRIU with ``--criu``/``GPUCR_CRIU`` (else the config's ``criu_path``). ``gpucr restore``
refuses, before CRIU runs or the driver is asked, a checkpoint dumped by a newer CRIU than that one or on a newer
kernel (major.minor; the config's ``restore_allow_older_kernel`` accepts that), as ``gpucr.io/restore-from`` does
(:mod:`nri_plugin.ckpt.versions`). Long steps print a progress line on stderr; ``--json``
prints the summary (per-step timings, image size) as one JSON object on stdout; ``-v``/``-vv`` log on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GpucrError

if TYPE_CHECKING:
    from ..policy.config import NodeConfig

__all__ = ["add_config_arg", "node_config", "register"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("checkpoint", help="checkpoint a process tree or container, GPU state included")
    who = c.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int, help="root pid of the process tree to checkpoint")
    who.add_argument("container", nargs="?",
                     help="container id, unique id prefix (at least 4 characters) or unique name, as containerd knows it")
    c.add_argument("--to", required=True, type=Path, metavar="DIR",
                   help="checkpoint directory, inside the node's checkpoint_root (created 0700)")
    c.add_argument("--leave-running", action="store_true",
                   help="keep the workload running after the dump (--via-runtime through CRI on containerd 2.x always "
                        "does; --images-only there stops it)")
    c.add_argument("--force", action="store_true", help="replace a gpucr checkpoint already in DIR (nothing else)")
    c.add_argument("--lock-timeout-ms", type=int, default=None,
                   help="CUDA lock timeout (default: lock_timeout_ms of the node config, 10000)")
    c.add_argument("--namespace", default=None,
                   help="resolve CONTAINER only through containerd's task API in this namespace (default: CRI, then "
                        "the task API in namespace 'default')")
    c.add_argument("--via-runtime", action="store_true",
                   help="CONTAINER only: checkpoint through containerd (CRI CheckpointContainer on 2.x, the task API on "
                        "1.7 or outside CRI), where gpucr's CRIU front does the CUDA work, instead of driving CRIU")
    c.add_argument("--images-only", action="store_true",
                   help="with --via-runtime on containerd 2.x: the task API's checkpoint, which writes CRIU's images "
                        "once, straight into DIR/images, instead of CRI's checkpoint.tar (which containerd first copies "
                        "into its content store, then into the archive; it also holds the container's rootfs changes)")
    _common(c)
    c.set_defaults(func=run_checkpoint)

    r = sub.add_parser("restore", help="restore a checkpoint made by `gpucr checkpoint`")
    r.add_argument("dir", type=Path, metavar="DIR")
    r.add_argument("--gpu-map", default="", metavar="OLD=NEW,...",
                   help="restore onto other GPUs: old GPU UUID = new GPU UUID, comma separated (driver >= 580); "
                        "the map must be one-to-one over the checkpointing node's GPUs (e.g. a swap)")
    r.add_argument("--quick-verify", action="store_true",
                   help="check image sizes only, not their sha256 (about 1 s/GiB faster; truncation still caught)")
    _common(r)
    r.set_defaults(func=run_restore)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")
    p.add_argument("--address", default=os.environ.get("GPUCR_CRI_ADDRESS", "/run/containerd/containerd.sock"),
                   help="containerd's socket (CRI and task API) used to resolve CONTAINER (default: %(default)s)")
    p.add_argument("--criu", default=os.environ.get("GPUCR_CRIU") or None,
                   help="criu binary (default: $GPUCR_CRIU, else the node config's criu_path, else gpucr-criu's when "
                        "installed, else criu on PATH)")
    p.add_argument("--libcuda", default=os.environ.get("GPUCR_LIBCUDA") or None,
                   help="libcuda to use (default: libcuda of the node config, else the system's libcuda.so.1)")
    p.add_argument("--libnvml", default=os.environ.get("GPUCR_LIBNVML") or None, help="NVML library to use")
    add_config_arg(p)


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """``--config``: the node config every CLI command that reads it takes (see :func:`node_config`)."""
    p.add_argument("--config", type=Path, default=Path(os.environ["GPUCR_CONFIG"])
                   if os.environ.get("GPUCR_CONFIG") else None,
                   help="node config (default: $GPUCR_CONFIG, else /etc/gpucr/config.toml; absent: the defaults)")


def node_config(path: Path | None) -> NodeConfig:
    """The node config the CLI obeys. The file (when there is one) must be owned by this user (root) and not
    group/world-writable: it names the libcuda gpucr loads and the root its checkpoints are confined to.

    Raises:
        ConfigError: unreadable, untrusted, or a bad key or value (names the file and the fix).
    """
    from ..policy.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

    where = path or DEFAULT_CONFIG_PATH
    try:
        st = os.stat(where)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {where}: {exc.strerror}") from exc
    if st is not None and (st.st_uid != os.geteuid() or st.st_mode & 0o022):
        raise ConfigError(f"config file {where} is owned by uid {st.st_uid} with mode {st.st_mode & 0o7777:04o}: "
                          f"it must be owned by uid {os.geteuid()} and not group/world-writable (it names the "
                          f"libcuda gpucr loads); chown {os.geteuid()} {where} && chmod go-w {where}")
    cfg = load_config(path)
    log.debug("node config %s: checkpoint_root %s, lock_timeout_ms %d, libcuda %r", where if st else "(defaults)",
              cfg.checkpoint_root, cfg.lock_timeout_ms, cfg.libcuda)
    return cfg


class _ProgressLine:
    """One refreshed stderr line on a terminal; a plain line every few seconds otherwise (logs, CI)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.dirty = False

    def __call__(self, step: str, msg: str) -> None:
        now = time.monotonic()
        if self.tty:
            sys.stderr.write("\r\033[K" + msg)
            self.dirty = True
        elif now - self.last >= 2.0 or "copied" not in msg:
            sys.stderr.write(msg + "\n")
            self.last = now
        sys.stderr.flush()

    def done(self) -> None:
        if self.dirty:
            sys.stderr.write("\n")
            self.dirty = False


def _engine(args: argparse.Namespace, cfg: NodeConfig, progress: _ProgressLine, on_phase: Any = None) -> Any:
    from ..ckpt.criu import Criu
    from ..ckpt.cuda import Driver, Nvml
    from ..ckpt.cuda_steps import CudaSteps
    from ..ckpt.engine import Engine
    from ..ckpt.layout import CheckpointStore
    from ..host.cgroup import freezer_at, freezer_of

    store = CheckpointStore(cfg.checkpoint_root, verify_sha256=not getattr(args, "quick_verify", False))
    libcuda = args.libcuda or cfg.libcuda or None
    from ..host.thp import ThpStage

    thp = ThpStage(cfg.state_dir) if cfg.driver_thp == "always" else None
    cuda = CudaSteps(Driver(libcuda, call_timeout_s=cfg.driver_call_timeout_s), freezer_of, nvml=Nvml(args.libnvml),
                     progress=progress, on_phase=on_phase, thp=thp)
    via_memory = cfg.dump_via_memory == "always" or (
        cfg.dump_via_memory == "leave-running" and getattr(args, "leave_running", False))
    from ..ckpt.criu.binary import default_criu
    criu = args.criu or cfg.criu_path or default_criu() or "criu"
    # a restore compares this binary's version (and the kernel) with the checkpoint's first, as the NRI restore does
    return Engine(cuda, Criu(criu), store, freezer_at=freezer_at, mem_base=cfg.state_dir if via_memory else None,
                  criu_binary=criu, allow_older_kernel=cfg.restore_allow_older_kernel)


def _print(summary: Any, as_json: bool) -> None:
    d = summary.to_json()
    if as_json:
        print(json.dumps(d, sort_keys=True))
        return
    steps = ", ".join(f"{k} {v:.2f}s" for k, v in d["timings_s"].items())
    st = d.get("driver_stage") or {}
    stage = (f"; driver stage: THP {st.get('thp')}" + (f" (node: {st.get('thp_node')})"
             if st.get("thp_node") != st.get("thp") else "") if st else "")
    print(f"{d['action']} of pid {d['pid']} done: {len(d['cuda_processes'])} CUDA process(es), "
          f"{d['gpu_bytes'] / (1 << 30):.2f} GiB GPU data, {d['image_bytes'] / (1 << 30):.2f} GiB images; {steps}"
          + stage)


def _refuse_own_tree(pid: int) -> None:
    """Never this system's init (a dump without --leave-running kills it) nor gpucr itself or one of its ancestors
    (the shell or service running it): a --pid typo must not take the node down."""
    from ..host.proc import parent_pid

    ancestors, p = [], os.getpid()
    while p > 1 and len(ancestors) < 256:
        ancestors.append(p)
        p = parent_pid(p)
    if pid == 1 or pid in ancestors:
        who = "this system's init" if pid == 1 else "gpucr itself or a process that started it"
        raise GpucrError(f"pid {pid} is {who}: refusing to checkpoint it; give the pid of the workload's root process")


def run_checkpoint(args: argparse.Namespace) -> int:
    from ..ckpt.engine import CheckpointRequest

    cfg = node_config(args.config)
    container_id, pid, use_cgroup, managed = "", args.pid, False, False
    criu_options: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if args.via_runtime and args.container is None:
        raise GpucrError("--via-runtime needs a CONTAINER (a --pid tree has no runtime to go through)")
    if args.images_only and not args.via_runtime:
        raise GpucrError("--images-only goes with --via-runtime (gpucr's own checkpoint writes only images already)")
    if args.container is not None:
        from ..ckpt import container
        from ._resolve import resolve_container

        found = resolve_container(args.container, args.address, args.namespace)
        container_id, pid = found.id, found.pid
        if args.via_runtime:
            from ..ckpt.container_lock import held

            from . import _via_runtime
            with held(cfg.state_dir, found.id, f"container {found.id} (pid {found.pid})"):
                return _via_runtime.run(args, cfg, found)
        use_cgroup = True
        # like runc's own checkpoint: bind mounts (and cgroup binds) are external to CRIU, keyed by their mountpoint,
        # the pod's pid and net namespaces are external, and the images get runc's descriptors.json (ckpt.container):
        # `gpucr restore` and a new container's `gpucr.io/restore-from` both take it; what they need is in the metadata
        desc = container.describe(pid, container_id, found.pod_sandbox)
        criu_options.update(container.dump_options(desc))
        extra.update(container=desc, kind=container.KIND, mounts=_cri_volumes(args.address, found))
        managed = (cfg.state_dir / "containers" / f"{container_id}.json").exists()
    _refuse_own_tree(pid)
    lock_timeout_ms = args.lock_timeout_ms if args.lock_timeout_ms is not None else cfg.lock_timeout_ms
    log.info("checkpoint of pid %d%s to %s (lock timeout %d ms, leave-running %s)", pid,
             f" (container {container_id})" if container_id else "", args.to, lock_timeout_ms, args.leave_running)
    progress = _ProgressLine()
    from ..handlers.metrics import report
    # a lease around the critical section, stale ones of earlier runs rolled back first (ckpt/lease.py)
    from ._guard import Guard, steps_factory, sweep_now
    sweep_now(cfg, args.libcuda)
    from ..ckpt.memstage import sweep as sweep_memory
    sweep_memory(cfg.state_dir)  # tmpfs dumps of a gpucr killed mid-checkpoint
    guard = Guard(cfg, what=f"container {container_id} (pid {pid})" if container_id else f"pid {pid}",
                  container_id=container_id, lock_timeout_ms=lock_timeout_ms)
    from contextlib import nullcontext

    from ..ckpt.container_lock import held
    one_at_a_time = held(cfg.state_dir, container_id, f"container {container_id} (pid {pid})") if container_id \
        else nullcontext()
    try:
        with one_at_a_time, guard.active(steps_factory(args.libcuda, cfg)):
            engine = _engine(args, cfg, progress, guard.on_phase)
            if container_id:
                from ..ckpt.container import ContainerStore
                engine.store = ContainerStore(engine.store, extra["container"], managed=managed)
            summary = engine.checkpoint(CheckpointRequest(
                images_dir=args.to, pid=pid, leave_running=args.leave_running, force=args.force,
                container_id=container_id, use_cgroup=use_cgroup, lock_timeout_ms=lock_timeout_ms,
                criu_options=criu_options, extra_metadata=extra))
    except GpucrError:
        report(cfg.state_dir, "checkpoint", "cli", False)
        raise
    finally:
        progress.done()
    if container_id and not args.leave_running:  # CRIU killed its tasks: done once containerd has it stopped
        from ..ckpt.stopped import await_stopped
        await_stopped(args.address, container_id, pid, namespace=found.namespace, via_cri=found.via_cri)
    report(cfg.state_dir, "checkpoint", "cli", True, summary.timings_s, summary.image_bytes, summary.gpu_bytes)
    log.info("checkpoint of pid %d done: %s", pid, summary.timings_s)
    _print(summary, args.json)
    return 0


def _cri_volumes(address: str, found: Any) -> dict[str, str]:
    """A CRI container's volumes (container path -> host path), which a restore into a new container checks it
    mounts; none for a container outside CRI."""
    if not found.via_cri:
        return {}
    from ..cri import CriClient, CriError
    try:
        with CriClient(address, timeout_s=10) as c:
            status, _ = c.container_status(found.id)
        return {m.container_path: m.host_path for m in status.mounts}
    except CriError as exc:
        raise GpucrError(f"container {found.id}: cannot ask CRI at {address} for its volumes: {exc}") from exc


def parse_gpu_map(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise GpucrError(f"bad --gpu-map entry {item!r}: expected OLD_UUID=NEW_UUID")
        out[old.strip()] = new.strip()
    return out


def run_restore(args: argparse.Namespace) -> int:
    from ..ckpt.engine import RestoreRequest

    cfg = node_config(args.config)
    req = RestoreRequest(images_dir=args.dir, gpu_map=parse_gpu_map(args.gpu_map))
    log.info("restore from %s", args.dir)
    progress = _ProgressLine()
    from ..handlers.metrics import report
    # the CUDA half after CRIU holds a lease too: a killed restore leaves no process CHECKPOINTED (ckpt/lease.py)
    from ._guard import Guard, steps_factory, sweep_now
    sweep_now(cfg, args.libcuda)
    guard = Guard(cfg, what=f"{args.dir}", container_id="", lock_timeout_ms=0, holder="gpucr restore")
    try:
        with guard.active(steps_factory(args.libcuda, cfg)):
            summary = _engine(args, cfg, progress, guard.on_phase).restore(req)
    except GpucrError:
        report(cfg.state_dir, "restore", "cli", False)
        raise
    finally:
        progress.done()
    report(cfg.state_dir, "restore", "cli", True, summary.timings_s)
    log.info("restore from %s done: pid %d, %s", args.dir, summary.pid, summary.timings_s)
    _print(summary, args.json)
    return 0

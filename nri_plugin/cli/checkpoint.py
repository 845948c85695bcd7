"""``gpucr checkpoint`` and ``gpucr restore``: direct, GPU-safe checkpoint/restore of a process tree or container.

``gpucr checkpoint (--pid PID | CONTAINER [--via-runtime]) --to DIR [--leave-running] [--force] [--json]`` and
``gpucr restore DIR [--gpu-map OLD=NEW,...] [--json]``. CONTAINER is resolved through containerd's CRI (``--address``)
or, failing that, by finding the process whose cgroup path names it. The CUDA driver and NVML are found through
``--libcuda``/``GPUCR_LIBCUDA`` and ``--libnvml``/``GPUCR_LIBNVML`` (the tests point both at the fake driver), CRIU
through ``--criu``/``GPUCR_CRIU``. Long steps print a progress line on stderr; ``--json`` prints the summary
(per-step timings, image size) as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import GpucrError

__all__ = ["AmbiguousContainerError", "register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("checkpoint", help="checkpoint a process tree or container, GPU state included")
    who = c.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int, help="root pid of the process tree to checkpoint")
    who.add_argument("container", nargs="?", help="container id (or unique prefix) to checkpoint")
    c.add_argument("--to", required=True, type=Path, metavar="DIR", help="checkpoint directory (created 0700)")
    c.add_argument("--leave-running", action="store_true", help="keep the workload running after the dump")
    c.add_argument("--force", action="store_true", help="overwrite a checkpoint already in DIR")
    c.add_argument("--lock-timeout-ms", type=int, default=30_000, help="CUDA lock timeout (default: %(default)s)")
    c.add_argument("--via-runtime", action="store_true",
                   help="CONTAINER only: checkpoint through containerd (CRI CheckpointContainer on 2.x, the task API on "
                        "1.7), where gpucr's CRIU front does the CUDA work, instead of driving CRIU directly")
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


def _default_criu() -> str:
    from .setup import GPUCR_CRIU

    return str(GPUCR_CRIU) if GPUCR_CRIU.exists() else "criu"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")
    p.add_argument("--address", default=os.environ.get("GPUCR_CRI_ADDRESS", "/run/containerd/containerd.sock"),
                   help="containerd CRI socket used to resolve CONTAINER (default: %(default)s)")
    p.add_argument("--criu", default=os.environ.get("GPUCR_CRIU") or _default_criu(),
                   help="criu binary (default: %(default)s: gpucr-criu's when installed, else criu on PATH)")
    p.add_argument("--libcuda", default=os.environ.get("GPUCR_LIBCUDA") or None, help="libcuda to use")
    p.add_argument("--libnvml", default=os.environ.get("GPUCR_LIBNVML") or None, help="NVML library to use")
    p.add_argument("--root", type=Path, default=Path(os.environ["GPUCR_CHECKPOINT_ROOT"])
                   if os.environ.get("GPUCR_CHECKPOINT_ROOT") else None,
                   help="only allow checkpoint dirs under this root (the daemon's configured root)")


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


def _engine(args: argparse.Namespace, progress: _ProgressLine) -> Any:
    from ..ckpt.criu import Criu
    from ..ckpt.cuda import Driver, Nvml
    from ..ckpt.cuda_steps import CudaSteps
    from ..ckpt.engine import Engine
    from ..ckpt.layout import CheckpointStore
    from ..host.cgroup import freezer_at, freezer_of

    store = CheckpointStore(args.root, verify_sha256=not getattr(args, "quick_verify", False))
    cuda = CudaSteps(Driver(args.libcuda), freezer_of, nvml=Nvml(args.libnvml), progress=progress)
    return Engine(cuda, Criu(args.criu), store, freezer_at=freezer_at)


class AmbiguousContainerError(GpucrError):
    """A container prefix names more than one container."""


def resolve_container(ref: str, address: str) -> tuple[str, int]:
    """(container id, host pid of its init) through CRI; else the first process whose cgroup path names the id
    (:func:`nri_plugin.host.proc.names_container`: a whole component or a systemd scope id, never a substring)."""
    from ..cri import CriClient, CriError

    try:
        with CriClient(address, timeout_s=10) as c:
            ids = [ct.id for ct in c.list_containers() if ct.id.startswith(ref)]
            if len(ids) > 1:
                raise AmbiguousContainerError(f"container prefix {ref!r} is ambiguous: "
                                              f"{', '.join(i[:13] for i in ids)}; give more of the id")
            if ids:
                _, info = c.container_status(ids[0], verbose=True)
                pid = int((info.get("info") or info).get("pid") or 0)
                if pid > 0:
                    return ids[0], pid
    except CriError:
        pass  # no CRI there (or it failed): the /proc fallback below
    from ..host.proc import HostError, names_container, parse_proc_cgroup

    for name in sorted(os.listdir("/proc"), key=lambda n: int(n) if n.isdigit() else 0):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cgroup", encoding="utf-8", errors="surrogateescape") as f:
                paths = set(parse_proc_cgroup(f.read()).values())
        except (OSError, HostError):
            continue
        # a whole path component (cgroupfs) or the systemd scope's id equal to the full id: never a substring
        if any(names_container(p, ref) for p in paths):
            return ref, int(name)
    raise GpucrError(f"container {ref!r} not found through CRI at {address} nor in any process's cgroup; "
                     f"check the id (gpucr cri ps --address ...) and that it is running")


def _print(summary: Any, as_json: bool) -> None:
    d = summary.to_json()
    if as_json:
        print(json.dumps(d, sort_keys=True))
        return
    steps = ", ".join(f"{k} {v:.2f}s" for k, v in d["timings_s"].items())
    print(f"{d['action']} of pid {d['pid']} done: {len(d['cuda_processes'])} CUDA process(es), "
          f"{d['gpu_bytes'] / (1 << 30):.2f} GiB GPU data, {d['image_bytes'] / (1 << 30):.2f} GiB images; {steps}")


def run_checkpoint(args: argparse.Namespace) -> int:
    from ..ckpt.engine import CheckpointRequest

    container_id, pid, use_cgroup = "", args.pid, False
    criu_options: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if args.via_runtime and not args.container:
        raise GpucrError("--via-runtime needs a CONTAINER (a --pid tree has no runtime to go through)")
    if args.container:
        from ..ckpt import container

        container_id, pid = resolve_container(args.container, args.address)
        if args.via_runtime:
            from . import _via_runtime
            return _via_runtime.run(args, container_id, pid)
        use_cgroup = True
        # like runc: bind mounts (and cgroup binds) are external to CRIU, keyed by their mountpoint, and a pod's
        # shared pid namespace is external; what a restore needs is recorded in the metadata
        desc = container.describe(pid, container_id)
        criu_options.update(container.dump_options(desc))
        extra["container"] = desc
    progress = _ProgressLine()
    try:
        summary = _engine(args, progress).checkpoint(CheckpointRequest(
            images_dir=args.to, pid=pid, leave_running=args.leave_running, force=args.force,
            container_id=container_id, use_cgroup=use_cgroup, lock_timeout_ms=args.lock_timeout_ms,
            criu_options=criu_options, extra_metadata=extra))
    finally:
        progress.done()
    _print(summary, args.json)
    return 0


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

    req = RestoreRequest(images_dir=args.dir, gpu_map=parse_gpu_map(args.gpu_map))
    progress = _ProgressLine()
    try:
        summary = _engine(args, progress).restore(req)
    finally:
        progress.done()
    _print(summary, args.json)
    return 0

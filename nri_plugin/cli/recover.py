"""``gpucr recover [CONTAINER | --pid PID | --all]``: find and roll back what a dead checkpoint left locked.

Looks at the leases in the node config's state dir (``--config``, ``$GPUCR_CONFIG`` or ``/etc/gpucr/config.toml``, read
as ``gpucr checkpoint`` reads it: :func:`.checkpoint.node_config`) and rolls back
every stale one the selection names (:func:`nri_plugin.ckpt.lease.sweep`: holder gone, or a phase past its deadline);
a lease whose holder lives and is within its deadline is reported and left alone. The plugin daemon does the same on
a timer; this is the by-hand way, e.g. on a node without the daemon. ``--pid`` with ``--force`` also restores and
unlocks a process that no lease names but the driver reports LOCKED or CHECKPOINTED (left by something else).
Prints one line per lease; exit status 0 when nothing is left undone, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import GpucrError
from .checkpoint import add_config_arg, node_config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..policy import NodeConfig

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("recover", help="roll back what a killed checkpoint left locked (stale leases)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("container", nargs="?", help="container id (or prefix) whose leases to look at")
    who.add_argument("--pid", type=int, help="leases naming this process")
    who.add_argument("--all", action="store_true", help="every lease on this node (the default)")
    p.add_argument("--force", action="store_true",
                   help="with --pid: also restore and unlock the process when no lease names it")
    p.add_argument("--libcuda", default=os.environ.get("GPUCR_LIBCUDA") or None, help="libcuda to use")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..ckpt.lease import Lease, LeaseStore
    from ._guard import sweep_now

    if args.force and not args.pid:
        raise GpucrError("recover: --force works with --pid only (it names the one process to unlock)")
    node = node_config(args.config)

    def select(le: Lease) -> bool:
        if args.container:
            return bool(le.container_id) and le.container_id.startswith(args.container)
        if args.pid:
            return le.names(args.pid)
        return True

    seen: list[str] = []

    def report(le: Lease, state: str) -> None:
        seen.append(le.id)
        print(f"lease of {le.what}: {state}; not touched")

    results = sweep_now(node, args.libcuda, select=select, report=report)
    for r in results:
        print(r.line())
    bad = any(r.problems for r in results)
    if not results and not seen:
        scope = (f"container {args.container}" if args.container else f"pid {args.pid}" if args.pid else "this node")
        print(f"no lease for {scope} in {LeaseStore(node.state_dir).dir}")
        if args.pid:
            bad |= _unleased(args, node)
    return 1 if bad else 0


def _unleased(args: argparse.Namespace, node: NodeConfig) -> bool:
    """--pid without a lease: say what the driver reports; with --force, restore and unlock it. True on trouble."""
    from ..ckpt.cuda.driver import CudaError, NotCudaProcessError, ProcessState
    from ..ckpt.cuda_steps import Suspended
    from ..host.cgroup import freezer_of
    from ._guard import steps_factory

    if not os.path.exists(f"/proc/{args.pid}"):
        raise GpucrError(f"recover: pid {args.pid} does not exist; give the pid of a running process")
    steps = steps_factory(args.libcuda, node)()
    cg = freezer_of(args.pid)
    frozen = cg is not None and cg.frozen()
    if frozen:
        print(f"pid {args.pid}: its cgroup {cg.path} is frozen; "  # type: ignore[union-attr]
              "the driver cannot answer until it is thawed"
              + ("" if args.force else "; rerun with --force to thaw it around the rollback"))
        if not args.force:
            return False
    try:
        if frozen:
            cg.thaw()  # type: ignore[union-attr]
        state = steps.driver.get_state(args.pid)
    except NotCudaProcessError:
        print(f"pid {args.pid} holds no CUDA state")
        return False
    except GpucrError as exc:
        print(f"pid {args.pid}: cannot ask the CUDA driver: {exc}", file=sys.stderr)
        return True
    print(f"pid {args.pid}: the CUDA driver reports {state.name}")
    if state in (ProcessState.RUNNING, ProcessState.FAILED) or not args.force:
        if state in (ProcessState.LOCKED, ProcessState.CHECKPOINTED):
            print(f"no gpucr lease names it; rerun with --force to restore and unlock pid {args.pid}")
        if frozen:
            cg.freeze()  # type: ignore[union-attr]
        return False
    problems = steps.rollback(Suspended(pid=args.pid, cgroup=cg, frozen_before=frozen, touched={args.pid}))
    for p in problems:
        print(f"pid {args.pid}: NOT undone: {p}", file=sys.stderr)
    if not problems:
        print(f"pid {args.pid}: {'restored and unlocked' if state == ProcessState.CHECKPOINTED else 'unlocked'}")
    return bool(problems)

"""``gpucr checkpoint CONTAINER --via-runtime``: checkpoint through containerd's own checkpoint, as every other
caller does, so the CLI and the standard commands share one path and gpucr's CRIU front does the CUDA work
(:mod:`nri_plugin.ckpt.via_runtime`, which the plugin daemon's periodic checkpoints use too).

containerd 2.x: CRI CheckpointContainer into ``DIR/checkpoint.tar``; containerd 1.7 (and a container found outside
CRI): the task API's Checkpoint into ``DIR/images``. Either is sealed with ``gpucr.json`` so ``gpucr.io/restore-from``
can name it. With ``--images-only`` a CRI container on 2.x goes through the task API as well: CRIU's images are
written once, into DIR, where CRI's path has containerd copy them into its content store and then into the archive
after CRIU is done (most of a CRI checkpoint's time: ``docs/flows.md``), at the price of the archive's extras (the
rootfs diff, the container's config).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GpucrError
from ..policy.criu_conf import container_dump_flags

if TYPE_CHECKING:
    from ..policy.config import NodeConfig
    from ._resolve import Resolved

__all__ = ["run"]


def run(args: argparse.Namespace, cfg: NodeConfig, found: Resolved) -> int:
    """Checkpoint the container ``found`` through the runtime at ``args.address``; prints a summary; returns 0.

    DIR follows the rules of a gpucr checkpoint dir (:meth:`~nri_plugin.ckpt.layout.CheckpointDir.create_empty`:
    inside ``checkpoint_root``, ours, not writable by others, 0700) and must be empty: the runtime writes it, so
    there is no gpucr checkpoint in it for ``--force`` to replace.

    Raises:
        GpucrError: the runtime refused, DIR is unusable, or a CUDA container's checkpoint lacks gpucr's marker.
    """
    from ..ckpt import via_runtime
    from ..ckpt.layout import CheckpointDir

    if args.force:
        raise GpucrError("--force does not apply to --via-runtime (the runtime writes DIR): give an empty or new dir")
    out = CheckpointDir.create_empty(Path(args.to), root=cfg.checkpoint_root)
    res = via_runtime.checkpoint(
        via_runtime.RuntimeTarget(args.address, found.id, found.pid, found.namespace, found.via_cri), out,
        leave_running=args.leave_running, libcuda=args.libcuda or cfg.libcuda or "libcuda.so.1",
        images_only=args.images_only, criu_path=cfg.criu_path, config_flags=container_dump_flags(cfg.state_dir, found.id))
    mk = res.marker
    summary = {"action": "checkpoint", "container_id": res.container_id, "pid": res.pid, "via": res.via,
               "runtime": res.runtime, "path": str(res.target), "cuda_processes": mk.processes if mk else [],
               "gpus": mk.gpus if mk else {}, "timings_s": {"sync": res.timings_s.get("sync", 0.0)},
               "left_running": res.left_running}
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        if res.left_running:
            after = ("the container keeps running" if args.leave_running else "the container keeps running "
                     "(CRI's checkpoint always leaves it running: stop it yourself, or add --images-only for a dump "
                     "that stops it)")
        else:
            after = "the container is stopped"
        print(f"checkpoint of container {res.container_id} done through {res.via} ({res.runtime}): "
              f"{len(summary['cuda_processes'])} CUDA process(es) made GPU-safe by gpucr's CRIU front; {res.target}; "
              f"{after}")
    return 0

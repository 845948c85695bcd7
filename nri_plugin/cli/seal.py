"""``gpucr seal DIR``: make a runtime's checkpoint, written by another command, a gpucr checkpoint that
``gpucr.io/restore-from`` can name.

DIR (inside the node's ``checkpoint_root``) holds what the runtime wrote: ``images/`` (``ctr t checkpoint
--image-path DIR/images``, runc's images with ``descriptors.json``) or ``checkpoint.tar`` (a kubelet or CRI
CheckpointContainer archive moved there). Sealing writes ``gpucr.json`` with a manifest (size and sha256 of every
file) as it is now, so a later restore refuses it truncated or changed. ``gpucr checkpoint --via-runtime`` seals
its own checkpoints; no volumes are recorded here, so a restore does not check them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import GpucrError

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("seal", help="write gpucr.json (a manifest) beside a runtime's checkpoint in DIR, so "
                                    "gpucr.io/restore-from can name it")
    p.add_argument("dir", type=Path, metavar="DIR", help="a dir under checkpoint_root holding images/ or "
                                                         "checkpoint.tar")
    p.add_argument("--config", type=Path, help="node config (default /etc/gpucr/config.toml)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Seal ``args.dir``. Raises GpucrError (outside the root, not a runtime checkpoint, already sealed)."""
    from ..ckpt.layout import METADATA, CheckpointDir, Metadata, check_owner
    from ..ckpt.via_runtime import sealing_versions
    from .checkpoint import node_config

    cfg = node_config(args.config)
    d: Path = args.dir
    real = CheckpointDir.check_root(d, cfg.checkpoint_root)
    name = real.relative_to(cfg.checkpoint_root.resolve())
    if not d.is_dir():
        raise GpucrError(f"{d} is not a directory")
    check_owner(d)
    if (d / METADATA).exists():
        raise GpucrError(f"{d} is already a gpucr checkpoint ({METADATA} is there): nothing to seal")
    if (d / "checkpoint.tar").is_file():
        kind = "cri-archive"
    elif (d / "images" / "descriptors.json").is_file():
        kind = "images"
    else:
        raise GpucrError(f"{d} holds no runtime checkpoint (neither checkpoint.tar nor images/descriptors.json): "
                         f"write one there first (e.g. ctr t checkpoint --image-path {d}/images CONTAINER)")
    criu, kernel = sealing_versions(cfg.criu_path)  # the runtime that wrote it ran this node's CRIU
    meta = CheckpointDir(d).finalize(Metadata(criu_version=criu, kernel_release=kernel,
                                              extra={"kind": "runtime", "via": f"sealed ({kind})", "mounts": {}}))
    summary = {"action": "seal", "path": str(d), "name": str(name), "kind": kind, "files": meta.sizes.get("files", 0),
               "bytes": meta.sizes.get("total_bytes", 0)}
    print(json.dumps(summary) if args.json else f"sealed {d} ({kind}, {summary['files']} files): "
                                                 f"gpucr.io/restore-from: {name} can name it")
    return 0

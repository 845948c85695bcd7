"""``gpucr export NAME REF`` and its inverse ``gpucr import REF NAME`` (one module, as ``checkpoint`` holds
``restore``): a checkpoint under the node's ``checkpoint_root`` as an OCI image in containerd's content store, and
back (``handlers.oci_transfer``; the format: ``ckpt.oci_image``). Import also takes containerd's own checkpoint
image (``ctr c checkpoint --task``), so ``gpucr.io/restore-from`` can name it.

Moving it between nodes is containerd's: ``ctr images push``/``pull`` through a registry, or ``ctr images
export``/``import --no-unpack`` as a file (docs/flows.md).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

__all__ = ["register", "run_export", "run_import"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("GPUCR_CRI_ADDRESS", "/run/containerd/containerd.sock"),
                   help="containerd's socket (default: %(default)s)")
    p.add_argument("--namespace", default="default", help="containerd namespace of the image (default: %(default)s, "
                                                           "ctr's)")
    p.add_argument("--config", type=Path, help="node config (default /etc/gpucr/config.toml)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    e = sub.add_parser("export", help="write checkpoint NAME (under checkpoint_root) as OCI image REF into "
                                      "containerd's content store")
    e.add_argument("name", metavar="NAME", help="a sealed checkpoint under checkpoint_root")
    e.add_argument("ref", metavar="REF", help="image reference, e.g. registry.example/ckpt/train:step-100")
    e.add_argument("--compress", choices=("none", "gzip", "zstd"), default="none",
                   help="layer compression (default: %(default)s; zstd needs /usr/bin/zstd)")
    _common(e)
    e.set_defaults(func=run_export)
    i = sub.add_parser("import", help="unpack OCI image REF (made by gpucr export, or by ctr c checkpoint --task) "
                                      "into a new checkpoint NAME under checkpoint_root")
    i.add_argument("ref", metavar="REF", help="image reference in containerd's content store")
    i.add_argument("name", metavar="NAME", help="a new checkpoint name (gpucr.io/restore-from: NAME restores it)")
    _common(i)
    i.set_defaults(func=run_import)


def run_export(args: argparse.Namespace) -> int:
    from ..containerd.content import ContentClient
    from ..handlers.oci_transfer import export_checkpoint
    from .checkpoint import node_config

    root = node_config(args.config).checkpoint_root
    with ContentClient(args.address, args.namespace) as client:
        s = export_checkpoint(client, root, args.name, args.ref, compress=args.compress)
    print(json.dumps(s) if args.json else f"exported checkpoint {s['name']} as {s['image']} ({s['digest']}, "
                                          f"{s['layer_bytes']} bytes, {s['compression']})")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from ..containerd.content import ContentClient
    from ..handlers.oci_transfer import import_checkpoint
    from .checkpoint import node_config

    root = node_config(args.config).checkpoint_root
    with ContentClient(args.address, args.namespace) as client:
        s = import_checkpoint(client, args.ref, root, args.name)
    print(json.dumps(s) if args.json else f"imported {s['image']} as checkpoint {s['path']} ({s['files']} files): "
                                          f"gpucr.io/restore-from: {s['name']} restores it")
    return 0

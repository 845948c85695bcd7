"""``gpucr version``: gpucr's own version, and the runtime's when a containerd answers."""

from __future__ import annotations

import argparse
import json

from .. import __version__

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("version", help="print gpucr's version (and containerd's, with --address)")
    p.add_argument("--address", help="a containerd CRI socket to ask for its version too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out: dict[str, str] = {"gpucr": __version__}
    if args.address:
        from ..cri import CriClient

        with CriClient(args.address, timeout_s=10) as c:
            v = c.version()
        out.update(runtime=v.runtime_name, runtime_version=v.runtime_version, cri_api=v.runtime_api_version)
    print(json.dumps(out))
    return 0

"""``gpucr``: one console script, one subcommand per module.

Each subcommand lives in ``nri_plugin/cli/<name>.py`` (or ``_<name>.py``) and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed args and returning the exit status. Adding a
subcommand is one line in :data:`SUBCOMMANDS`. Modules are imported lazily so ``gpucr --help`` stays fast and a
broken optional dependency only breaks its own subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import GpucrError

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

#: subcommand module names, in --help order
SUBCOMMANDS: list[str] = ["version", "cri", "plugin", "checkpoint", "setup"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpucr", description="GPU-safe checkpoint/restore for containerd.")
    ap.add_argument("--version", action="version", version=f"gpucr {__version__}")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        mod = importlib.import_module(f".{name}", __package__)
        mod.register(sub)
    return ap


def setup_logging(verbosity: int) -> None:
    """stderr logging in a journald-friendly shape: no timestamps under systemd (journald adds them)."""
    level = logging.WARNING - 10 * min(verbosity, 2) if verbosity else logging.INFO
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(name)s: %(levelname)s: %(message)s" if under_journal else "%(asctime)s %(name)s %(levelname)s %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except GpucrError as exc:
        print(f"gpucr {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

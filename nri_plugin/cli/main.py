"""``gpucr``: one console script, one subcommand per module.

Each subcommand lives in ``nri_plugin/cli/<name>.py`` (or ``_<name>.py``) and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed args and returning the exit status. Adding a
subcommand is one line in :data:`SUBCOMMANDS`. A command imports only its own module (``gpucr checkpoint`` does not
load the daemon's asyncio or the CRI client's protobuf: its start is on a checkpoint's critical path), so a broken
optional dependency only breaks its own subcommand; ``gpucr --help`` and an unknown command load them all.
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
SUBCOMMANDS: list[str] = ["version", "cri", "plugin", "checkpoint", "recover", "seal", "export", "setup", "doctor"]
#: commands registered by a module of another name
_MODULE_OF = {"restore": "checkpoint", "import": "export"}


def _module_of(argv: Sequence[str]) -> str | None:
    """The module of the command ``argv`` names (its first word: gpucr's own options take no value), if known and
    gpucr's own help is not asked for before it (that lists every command)."""
    i = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if i is None or {"-h", "--help"} & set(argv[:i]):
        return None
    word = argv[i]
    name = _MODULE_OF.get(word, word)
    return name if name in SUBCOMMANDS else None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv`` that names a command, with that command's subparser alone."""
    ap = argparse.ArgumentParser(prog="gpucr", description="GPU-safe checkpoint/restore for containerd.")
    ap.add_argument("--version", action="version", version=f"gpucr {__version__}")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v: info, -vv: debug)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    only = _module_of(argv) if argv is not None else None
    for name in [only] if only else SUBCOMMANDS:
        mod = importlib.import_module(f".{name}", __package__)
        mod.register(sub)
    for p in sub.choices.values():  # -v also after the subcommand (gpucr checkpoint -v ...)
        p.add_argument("-v", "--verbose", dest="sub_verbose", action="count", default=0,
                       help="more logging on stderr (-v: info, -vv: debug)")
    return ap


#: syslog priorities of the levels, as the ``<N>`` prefix journald reads from a service's stderr
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class OneLineFormatter(logging.Formatter):
    """One line per record, tracebacks included (journald and log collectors split records at newlines); under
    systemd (``JOURNAL_STREAM``) no timestamp and a ``<N>`` priority prefix instead, as journald expects."""

    def __init__(self, journal: bool) -> None:
        super().__init__("%(name)s: %(levelname)s: %(message)s" if journal
                         else "%(asctime)s %(name)s %(levelname)s %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        return f"<{_PRIORITY.get(record.levelno, 6)}>{text}" if self.journal else text


def setup_logging(verbosity: int, default: int = logging.WARNING) -> None:
    """stderr logging: ``default`` level (WARNING; a daemon subcommand may ask for INFO), -v INFO, -vv DEBUG."""
    level = min(default, logging.WARNING - 10 * min(verbosity, 2))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = build_parser(argv)
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    setup_logging(args.verbose + getattr(args, "sub_verbose", 0), getattr(args, "log_level", logging.WARNING))
    try:
        return int(args.func(args) or 0)
    except GpucrError as exc:
        print(f"gpucr {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

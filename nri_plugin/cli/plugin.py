"""``gpucr plugin``: run gpucr's NRI plugin daemon (the checkpoint policy), or list its events.

``--logger`` runs the lifecycle logger instead (a debugging plugin that logs every event and can inject annotations
and env from a JSON ``--config``); by default ``--config`` is the node config (``/etc/gpucr/config.toml``, TOML).

Modes: external (dial ``--socket``, reconnect on loss) or pre-registered (containerd started us from its NRI plugin
directory with the connection on fd ``$NRI_PLUGIN_SOCKET``; we exit when it closes). Name and index come from
``--name``/``--idx``, else ``NRI_PLUGIN_NAME``/``NRI_PLUGIN_IDX``, else the executable's ``NN-name``. containerd starts
pre-registered plugins with stdio on /dev/null and no PATH: use ``--log-file`` and absolute paths there
(``install/plugin.sh install`` writes such a launcher, running this from a root-owned venv).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

__all__ = ["register"]

log = logging.getLogger("gpucr.plugin")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("plugin", help="run the NRI plugin daemon (gpucr's checkpoint policy)")
    p.add_argument("--socket", help="the runtime's NRI socket (default /var/run/nri/nri.sock)")
    p.add_argument("--name", help="plugin name (default $NRI_PLUGIN_NAME, the executable's NN-name, or gpucr)")
    p.add_argument("--idx", help="two-digit plugin index (default $NRI_PLUGIN_IDX, the executable's NN-, or 10)")
    p.add_argument("--config", type=Path, help="node config (TOML, default /etc/gpucr/config.toml); with --logger: "
                                               "the logger's JSON config (see nri_plugin.handlers.nri_logger)")
    p.add_argument("--logger", action="store_true", help="run the lifecycle logger plugin instead of gpucr's policy")
    p.add_argument("--log-file", type=Path, help="also log here (pre-registered plugins have no stderr)")
    p.add_argument("--events", action="store_true", help="list the events the plugin subscribes to, and exit")
    p.set_defaults(func=run, log_level=logging.INFO)  # a daemon: its lifecycle lines are wanted by default


def _identity(args: argparse.Namespace) -> tuple[str, str]:
    from ..nri import parse_plugin_name

    parsed = parse_plugin_name(sys.argv[0]) or ("", "")
    name = args.name or os.environ.get("NRI_PLUGIN_NAME") or parsed[1] or "gpucr"
    idx = args.idx or os.environ.get("NRI_PLUGIN_IDX") or parsed[0] or "10"
    return name, idx


def run(args: argparse.Namespace) -> int:
    from ..nri import DEFAULT_SOCKET_PATH, Stub, describe_events

    plugin: object
    node = None
    if args.logger:
        from ..handlers.nri_logger import LifecycleLogger, LoggerConfig

        config = LoggerConfig()
        if args.config:
            try:
                text = args.config.read_text()
            except OSError as exc:
                print(f"gpucr plugin: error: cannot read --config {args.config}: {exc.strerror}", file=sys.stderr)
                return 2
            config = LoggerConfig.parse(text, str(args.config))
        plugin = LifecycleLogger(config)
    else:
        from ..handlers.periodic import PeriodicPolicyPlugin
        from ..policy import load_config

        node = load_config(args.config)
        plugin = PeriodicPolicyPlugin(node)
        if node.metrics_address and not args.events:
            from ..handlers.metrics import Metrics
            try:
                Metrics(node.state_dir).serve(node.metrics_address)
            except (ValueError, OSError) as exc:
                print(f"gpucr plugin: error: cannot serve metrics on {node.metrics_address}: {exc}; fix "
                      "metrics_address in the node config", file=sys.stderr)
                return 2
    if args.events:
        print("\n".join(describe_events(plugin)))
        return 0
    name, idx = _identity(args)
    if args.log_file:
        h = logging.FileHandler(args.log_file)
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(h)
    fd = os.environ.get("NRI_PLUGIN_SOCKET")
    connection = None
    if fd and not args.socket:
        try:
            connection = socket.socket(fileno=int(fd))
        except (ValueError, OSError) as exc:
            print(f"gpucr plugin: error: NRI_PLUGIN_SOCKET={fd!r} is not a usable socket fd: {exc}", file=sys.stderr)
            return 2
        connection.setblocking(False)
    stub = Stub(plugin, name=name, idx=idx, socket_path=args.socket or DEFAULT_SOCKET_PATH, connection=connection)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stub.stop)
        log.info("gpucr plugin %s starting (%s), pid %d", stub.full_name,
                 "pre-registered" if connection is not None else f"external, {stub.socket_path}", os.getpid())
        status = None
        if node is not None:  # gpucr doctor reads it: the daemon is up and registered
            from ..handlers.plugin_status import publish
            status = asyncio.create_task(publish(stub.registered, node.state_dir, {
                "name": stub.full_name, "mode": "pre-registered" if connection is not None else "external",
                "socket": stub.socket_path}))
        sweeper = getattr(plugin, "sweeper", None)  # the policy plugin's lease sweep (not the logger's)
        sweeping = asyncio.create_task(sweeper.run()) if sweeper is not None else None
        try:
            await stub.run()
        finally:
            periodic = getattr(plugin, "periodic", None)  # the policy plugin's timers
            if periodic is not None:
                await periodic.close()
            for task in (status, sweeping):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    log.info("gpucr plugin %s exiting", stub.full_name)
    return 0

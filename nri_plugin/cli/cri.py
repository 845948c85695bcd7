"""``gpucr cri``: crictl-like views through gpucr's CRI client (pods, containers, one container's status)."""

from __future__ import annotations

import argparse
import json

from google.protobuf.json_format import MessageToDict

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cri", help="crictl-like queries over the CRI API")
    p.add_argument("--address", default="/run/containerd/containerd.sock", help="CRI socket (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-call timeout in seconds")
    cmds = p.add_subparsers(dest="cri_command", metavar="CMD", required=True)
    cmds.add_parser("version", help="runtime name and version")
    cmds.add_parser("pods", help="list pod sandboxes")
    ps = cmds.add_parser("ps", help="list containers")
    ps.add_argument("--pod", help="only containers of this pod sandbox id")
    st = cmds.add_parser("inspect", help="one container's status (JSON)")
    st.add_argument("container_id")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cri import CriClient
    from ..cri.client import state_name

    with CriClient(args.address, timeout_s=args.timeout) as c:
        if args.cri_command == "version":
            print(json.dumps(MessageToDict(c.version())))
        elif args.cri_command == "pods":
            for p in c.list_pod_sandboxes():
                print(f"{p.id[:13]}  {p.metadata.namespace}/{p.metadata.name}  state={p.state}")
        elif args.cri_command == "ps":
            for ct in c.list_containers(args.pod):
                print(f"{ct.id[:13]}  {ct.metadata.name}  {state_name(ct.state)}  pod={ct.pod_sandbox_id[:13]}")
        else:
            status, info = c.container_status(args.container_id, verbose=True)
            print(json.dumps({"status": MessageToDict(status), "info": info}, indent=1))
    return 0

"""The network identity of a process's network namespace: interfaces, addresses and routes, as a JSON-able dict.

Recorded in a checkpoint's ``gpucr.json`` so a restore can say what the restored process expects (its IPs, its
default route, its veth) and what differs on the target, since CRIU restores sockets bound to those addresses.
Read through rtnetlink with pyroute2, inside the target namespace (``/proc/PID/ns/net`` or a bind-mounted netns file),
never by running ``ip``. Routes of the kernel's ``local`` table (255) are left out: the kernel derives them from the
addresses.

Deliberately not here: changing anything in a namespace; iptables/nftables state (CRIU's network lock handles that).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import GpucrError

__all__ = ["NetIdError", "describe", "diff", "netns_inode", "read_netns"]

_FAMILY = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
_LOCAL_TABLE = 255
_IFF_UP = 0x1
_RT_SCOPES = {0: "universe", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
_RT_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
             7: "unreachable", 8: "prohibit"}


class NetIdError(GpucrError):
    """The network namespace could not be read (gone, no permission)."""


def _ns_path(pid: int | None, path: Path | None) -> Path:
    if (pid is None) == (path is None):
        raise NetIdError("give exactly one of pid or path to read a network namespace")
    return Path(f"/proc/{pid}/ns/net") if pid is not None else path  # type: ignore[return-value]


def netns_inode(pid: int | None = None, *, path: Path | None = None) -> int:
    """The inode that identifies a network namespace (equal inodes: same namespace).

    Raises:
        NetIdError: the process or file is gone.
    """
    p = _ns_path(pid, path)
    try:
        return os.stat(p).st_ino
    except OSError as exc:
        raise NetIdError(f"cannot read network namespace {p}: {exc.strerror} (is the process running?)") from exc


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _link(msg: Any) -> dict[str, Any]:
    info = _attr(msg, "IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return {
        "index": msg["index"],
        "name": _attr(msg, "IFLA_IFNAME"),
        "kind": kind or ("loopback" if _attr(msg, "IFLA_IFNAME") == "lo" else None),
        "mac": _attr(msg, "IFLA_ADDRESS"),
        "mtu": _attr(msg, "IFLA_MTU"),
        "up": bool(msg["flags"] & _IFF_UP),
        "peer_index": _attr(msg, "IFLA_LINK"),         # veth peer (in this or, with peer_netnsid, another netns)
        "peer_netnsid": _attr(msg, "IFLA_LINK_NETNSID"),
        "addresses": [],
    }


def _addr(msg: Any) -> dict[str, Any]:
    return {"family": _FAMILY.get(msg["family"], str(msg["family"])), "address": _attr(msg, "IFA_ADDRESS"),
            "local": _attr(msg, "IFA_LOCAL"), "prefixlen": msg["prefixlen"],
            "scope": _RT_SCOPES.get(msg["scope"], msg["scope"])}


def _route(msg: Any, names: dict[int, str]) -> dict[str, Any]:
    dst = _attr(msg, "RTA_DST")
    table = _attr(msg, "RTA_TABLE") or msg["table"]
    oif = _attr(msg, "RTA_OIF")
    return {
        "family": _FAMILY.get(msg["family"], str(msg["family"])),
        "dst": f"{dst}/{msg['dst_len']}" if dst is not None else "default",
        "gateway": _attr(msg, "RTA_GATEWAY"),
        "dev": names.get(oif) if oif is not None else None,
        "prefsrc": _attr(msg, "RTA_PREFSRC"),
        "metric": _attr(msg, "RTA_PRIORITY"),
        "table": table,
        "scope": _RT_SCOPES.get(msg["scope"], msg["scope"]),
        "type": _RT_TYPES.get(msg["type"], msg["type"]),
    }


def describe(links: Iterable[Any], addrs: Iterable[Any], routes: Iterable[Any]) -> dict[str, Any]:
    """Build the identity from rtnetlink messages (anything with pyroute2's ``get_attr``/``[]`` interface)."""
    ifaces = {link["index"]: _link(link) for link in links}
    for a in addrs:
        if a["index"] in ifaces:
            ifaces[a["index"]]["addresses"].append(_addr(a))
    names = {i: v["name"] for i, v in ifaces.items()}
    rts = [_route(r, names) for r in routes]
    rts = [r for r in rts if r["table"] != _LOCAL_TABLE]
    return {"interfaces": [ifaces[i] for i in sorted(ifaces)],
            "routes": sorted(rts, key=lambda r: (r["family"], r["table"], r["dst"], r["dev"] or ""))}


def read_netns(pid: int | None = None, *, path: Path | None = None) -> dict[str, Any]:
    """The network identity of ``pid``'s network namespace (or of the netns file ``path``).

    Returns:
        ``{"netns_inode", "host": bool (gpucr's own netns, i.e. a host-network process), "interfaces": [...],
        "routes": [...]}``; each
        interface has index, name, kind, mac, mtu, up, peer_index, peer_netnsid and its addresses.

    Raises:
        NetIdError: the namespace is gone or cannot be entered (needs root / CAP_SYS_ADMIN).
    """
    from pyroute2 import IPRoute  # imported here: pyroute2 is heavy and only this step needs it

    p = _ns_path(pid, path)
    inode = netns_inode(path=p)
    host = inode == os.stat("/proc/self/ns/net").st_ino
    try:
        # flags=0: never let pyroute2 create a namespace at a path that vanished meanwhile
        with IPRoute(netns=str(p), flags=0) as ip:
            links, addrs, routes = ip.get_links(), ip.get_addr(), ip.get_routes(family=socket.AF_UNSPEC)
            ident = describe(links, addrs, routes)
    except OSError as exc:
        raise NetIdError(f"cannot read network namespace {p}: {exc.strerror or exc} (is the process running? "
                         "reading another namespace needs root)") from exc
    return {"netns_inode": inode, "host": host, **ident}


def diff(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two identities (interfaces by name, their addresses, routes)."""
    out: list[str] = []

    def by_name(ident: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {i["name"]: i for i in ident.get("interfaces", [])}

    old, new = by_name(recorded), by_name(current)
    for name in sorted(old.keys() - new.keys()):
        out.append(f"interface {name} is missing")
    for name in sorted(new.keys() - old.keys()):
        out.append(f"interface {name} is new")
    for name in sorted(old.keys() & new.keys()):
        was = {(a["address"], a["prefixlen"]) for a in old[name]["addresses"]}
        now = {(a["address"], a["prefixlen"]) for a in new[name]["addresses"]}
        for addr, plen in sorted(was - now):
            out.append(f"interface {name} lost address {addr}/{plen}")
        for addr, plen in sorted(now - was):
            out.append(f"interface {name} has new address {addr}/{plen}")

    def routes(ident: dict[str, Any]) -> set[tuple[Any, ...]]:
        return {(r["family"], r["dst"], r["gateway"], r["dev"], r["table"]) for r in ident.get("routes", [])}

    for fam, dst, gw, dev, table in sorted(routes(recorded) - routes(current), key=str):
        out.append(f"route {dst} via {gw or '-'} dev {dev or '-'} (table {table}) is missing")
    return out

"""nri_plugin.host.netns against real network namespaces (``ip netns add``, a veth pair, v4/v6 addresses, a default
route), read by path and through a process living in the namespace."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.host.netns import NetIdError, diff, netns_inode, read_netns
from tests.testenv import wait_for

pytestmark = pytest.mark.criu


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("network namespace tests need root", pytrace=False)
    name = f"gpucr-criu-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        _ip("-n", name, "link", "set", "eth0", "address", "02:42:0a:58:00:07", "mtu", "1450")
        _ip("-n", name, "addr", "add", "10.88.0.7/16", "dev", "eth0")
        _ip("-n", name, "addr", "add", "fd00:88::7/64", "dev", "eth0", "nodad")
        _ip("-n", name, "link", "set", "peer0", "up")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "route", "add", "default", "via", "10.88.0.1", "dev", "eth0")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _check(ident: dict, name: str) -> None:  # type: ignore[type-arg]
    assert ident["host"] is False
    assert ident["netns_inode"] == os.stat(f"/var/run/netns/{name}").st_ino
    ifs = {i["name"]: i for i in ident["interfaces"]}
    assert set(ifs) == {"lo", "eth0", "peer0"}
    eth = ifs["eth0"]
    assert (eth["kind"], eth["mac"], eth["mtu"], eth["up"]) == ("veth", "02:42:0a:58:00:07", 1450, True)
    assert eth["peer_index"] == ifs["peer0"]["index"] and ifs["peer0"]["peer_index"] == eth["index"]
    addrs = {(a["family"], a["address"], a["prefixlen"]) for a in eth["addresses"]}
    assert {("inet", "10.88.0.7", 16), ("inet6", "fd00:88::7", 64)} <= addrs
    assert ifs["lo"]["kind"] == "loopback" and ("inet", "127.0.0.1", 8) in {
        (a["family"], a["address"], a["prefixlen"]) for a in ifs["lo"]["addresses"]}
    routes = {(r["family"], r["dst"], r["gateway"], r["dev"]) for r in ident["routes"]}
    assert ("inet", "default", "10.88.0.1", "eth0") in routes
    assert ("inet", "10.88.0.0/16", None, "eth0") in routes
    assert all(r["table"] != 255 for r in ident["routes"])  # the kernel's local table is derived, not identity
    json.dumps(ident)  # JSON-able as is


def test_read_by_path(netns: str) -> None:
    _check(read_netns(path=Path(f"/var/run/netns/{netns}")), netns)


def test_read_by_pid(netns: str) -> None:
    p = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "100"])
    try:
        wait_for(lambda: netns_inode(p.pid) == os.stat(f"/var/run/netns/{netns}").st_ino,
                 what="sleep to enter the netns")
        ident = read_netns(p.pid)
        _check(ident, netns)
    finally:
        p.kill()
        p.wait()


def test_host_netns_and_diff(netns: str) -> None:
    me = read_netns(os.getpid())
    assert me["host"] is True and any(i["name"] == "lo" for i in me["interfaces"])
    before = read_netns(path=Path(f"/var/run/netns/{netns}"))
    assert diff(before, before) == []
    _ip("-n", netns, "addr", "del", "10.88.0.7/16", "dev", "eth0")
    _ip("-n", netns, "link", "add", "extra0", "type", "veth", "peer", "name", "extra1")
    after = read_netns(path=Path(f"/var/run/netns/{netns}"))
    d = diff(before, after)
    assert "interface eth0 lost address 10.88.0.7/16" in d
    assert "interface extra0 is new" in d and "interface extra1 is new" in d
    assert any(x.startswith("route default via 10.88.0.1 dev eth0") and x.endswith("is missing") for x in d)


def test_missing_namespace() -> None:
    with pytest.raises(NetIdError, match="is the process running"):
        read_netns(2**22 - 1)
    with pytest.raises(NetIdError, match="exactly one of pid or path"):
        read_netns()

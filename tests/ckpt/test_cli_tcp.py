"""TCP through ``gpucr checkpoint --pid`` / ``gpucr restore`` with the real CRIU: a server with a listening socket and
an established loopback connection (the engine dumps and restores with CRIU's tcp-established) is checkpointed,
killed and restored; the connection the test kept open answers again from the restored server, with the server's
memory restored, and the listening socket takes new connections."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.ckpt.criu import Criu
from tests.ckpt._tcp import TcpServer, criu_dumps_tcp, kernel_version
from tests.testenv import node_config

pytestmark = pytest.mark.criu


def gpucr(*args: str, criu: str, config: dict[str, str]) -> dict[str, Any]:
    r = subprocess.run([str(Path(sys.executable).parent / "gpucr"), *args, "--json"], capture_output=True, text=True,
                       env={**os.environ, "GPUCR_CRIU": criu, "GPUCR_LIBCUDA": "/nonexistent/libcuda.so.1", **config},
                       timeout=120)
    assert r.returncode == 0, f"gpucr {' '.join(args)} failed ({r.returncode}):\n{r.stderr}"
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TcpServer]:
    s = TcpServer(tmp_path)
    try:
        yield s
    finally:
        s.kill()


def test_established_connection_answers_after_restore(criu_binary: str, server: TcpServer, tmp_path: Path) -> None:
    version = Criu(criu_binary).version()
    assert criu_dumps_tcp(version), (f"{criu_binary} is CRIU {version}, which cannot dump TCP sockets on kernel "
                                     f"{kernel_version()}: run install/deps.sh (it installs CRIU 4.2.x)")
    conn = server.connect()
    try:
        assert conn.ask("before") == f"1 {server.pid} before"
        ck = tmp_path / "ck"
        gpucr("checkpoint", "--pid", str(server.pid), "--to", str(ck), criu=criu_binary, config=node_config(tmp_path))
        server.wait_gone()
        assert gpucr("restore", str(ck), criu=criu_binary, config=node_config(tmp_path))["pid"] == server.pid
        # the same connection, kept open by the test across the checkpoint: the restored server answers on it, and
        # its count goes on from its dumped memory
        assert conn.ask("after") == f"2 {server.pid} after"
        fresh = server.connect()  # the restored listening socket accepts
        try:
            assert fresh.ask("new") == f"3 {server.pid} new"
        finally:
            fresh.close()
        assert conn.ask("again") == f"4 {server.pid} again"
    finally:
        conn.close()

"""nri_plugin.host.node: the read-only node probes gpucr doctor uses, on real files, sockets and tools."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from nri_plugin.host.node import (cgroup_version, free_bytes, overlay_params, parse_version, socket_accepts, thp_mode,
                                  tool_version)


def test_parse_version() -> None:
    assert parse_version("Version: 4.2.1") == (4, 2, 1)
    assert parse_version("runc version 1.1.5+ds1") == (1, 1, 5)
    assert parse_version("v1.7") == (1, 7)
    assert parse_version("none") is None


def test_thp_mode(tmp_path: Path) -> None:
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert thp_mode(str(f)) == "madvise"
    assert thp_mode(str(tmp_path / "absent")) is None


def test_overlay_params(tmp_path: Path) -> None:
    (tmp_path / "index").write_text("Y\n")
    (tmp_path / "nfs_export").write_text("N\n")
    assert overlay_params(str(tmp_path)) == {"index": "Y", "nfs_export": "N"}
    assert overlay_params(str(tmp_path / "absent")) == {}


def test_socket_accepts(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    assert "does not exist" in (socket_accepts(path) or "")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    assert socket_accepts(path) is not None  # bound, not listening: refused
    srv.listen(1)
    try:
        assert socket_accepts(path) is None
    finally:
        srv.close()


def test_tool_version_and_free_bytes(tmp_path: Path) -> None:
    path, line = tool_version(sys.executable, "--version")
    assert path == sys.executable and line.startswith("Python 3.")
    assert tool_version("gpucr-no-such-tool", "--version") == (None, "gpucr-no-such-tool not found")
    assert (free_bytes(str(tmp_path / "not/yet/made")) or 0) > 0  # the nearest existing parent's file system
    assert cgroup_version() in (1, 2)

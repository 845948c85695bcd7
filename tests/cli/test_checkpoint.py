"""``gpucr checkpoint CONTAINER``'s /proc fallback (no CRI reachable): a cgroup match is a whole path component or a
systemd scope id equal to the reference, never a substring (``s``, ``0`` and ``/`` once resolved to pid 1)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nri_plugin.cli.checkpoint import resolve_container
from nri_plugin.errors import GpucrError


@pytest.mark.parametrize("ref", ["s", "0", "/", "", "slice", "scope", "init"])
def test_substrings_of_cgroup_paths_resolve_to_nothing(tmp_path: Path, ref: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(GpucrError, match="not found through CRI at .* nor in any process's cgroup"):
        resolve_container(ref, str(tmp_path / "no-containerd.sock"))
    assert time.monotonic() - t0 < 10


@pytest.mark.criu
def test_a_whole_component_resolves(tmp_path: Path) -> None:
    """A process in a cgroup named like a container id (cgroupfs: ``/<parent>/<id>``) resolves by the full id only."""
    import subprocess

    from tests import cgroups

    with cgroups.fresh("cli") as f:
        cid = f.path.name
        p = subprocess.Popen(["sleep", "60"])
        try:
            (f.path / "cgroup.procs").write_text(str(p.pid))
            sock = str(tmp_path / "no-containerd.sock")
            assert resolve_container(cid, sock) == (cid, p.pid)
            for ref in (cid[:-1], cid[1:], "gpucr-test-cli"):
                with pytest.raises(GpucrError, match="not found"):
                    resolve_container(ref, sock)
        finally:
            p.kill()
            p.wait()

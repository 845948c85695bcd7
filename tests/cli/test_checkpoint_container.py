"""Which container ``gpucr checkpoint CONTAINER`` takes, against the private containerd (both versions): an exact
id, a unique id prefix or a unique name through CRI, a ``ctr run`` container (namespace ``default``, outside CRI)
through the task API; an ambiguous or unknown reference, and ``""``/``/``/``0``/``s`` with containerd reachable,
are one error line with nothing created and CRIU never run. A ``ctr run`` container is then checkpointed for real
(leave-running: its counter goes on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nri_plugin.cli._resolve import AmbiguousContainerError, ContainerRefError, resolve_container
from tests.testenv import CRIU, Containerd, node_config, wait_for

pytestmark = pytest.mark.integration

GPUCR = str(Path(sys.executable).parent / "gpucr")
COUNTER = "i=0; while :; do i=$((i+1)); echo $i >> /data/counter.log; sleep 0.2; done"


def gpucr(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GPUCR, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120)


@contextmanager
def ctr_run(containerd: Containerd, name: str, data: Path) -> Iterator[int]:
    """A ``ctr run`` container (namespace default, never seen by CRI) writing a counter into ``data``; its pid."""
    d = containerd.info["dir"]
    containerd.ctr("run", "-d", "--null-io", "--fifo-dir", f"{d}/fifo", "--runc-root", f"{d}/runc-ctr", "--cgroup",
                   f"{containerd.cgroup_parent}/{name}", "--mount", f"type=bind,src={data},dst=/data,options=rbind:rw",
                   containerd.image, name, "/bin/sh", "-c", COUNTER)
    try:
        pid = int(next(ln.split()[1] for ln in containerd.ctr("t", "ls").stdout.splitlines()[1:]
                       if ln.split()[0] == name))
        yield pid
    finally:
        containerd.ctr("t", "kill", "-s", "KILL", name, check=False)
        time.sleep(0.3)
        containerd.ctr("t", "rm", "-f", name, check=False)
        containerd.ctr("c", "rm", name, check=False)


def test_resolution(containerd: Containerd, tmp_path: Path) -> None:
    addr = containerd.address
    tag = uuid.uuid4().hex[:6]
    with containerd.pod() as (c, pod_a, cfg_a), containerd.pod() as (_, pod_b, cfg_b):
        web = containerd.run_container(c, pod_a, cfg_a, f"web-{tag}", ["sleep", "300"])
        twin_a = containerd.run_container(c, pod_a, cfg_a, f"twin-{tag}", ["sleep", "300"])
        twin_b = containerd.run_container(c, pod_b, cfg_b, f"twin-{tag}", ["sleep", "300"])
        _, info = c.container_status(web, verbose=True)
        pid = int(info["info"]["pid"])
        for ref in (web, web[:12], web[:4], f"web-{tag}"):   # exact id, unique prefixes, unique name
            r = resolve_container(ref, addr)
            assert (r.id, r.pid, r.name, r.via_cri) == (web, pid, f"web-{tag}", True), ref
        with pytest.raises(AmbiguousContainerError, match=f"'twin-{tag}' is ambiguous: .*{twin_a[:13]}"):
            resolve_container(f"twin-{tag}", addr)
        assert twin_b[:13] in str(pytest.raises(AmbiguousContainerError, resolve_container, f"twin-{tag}", addr).value)
        with pytest.raises(ContainerRefError, match=f"no container 'web-{tag}x' known to CRI at {addr} nor "
                                                    f"containerd namespace 'default'"):
            resolve_container(f"web-{tag}x", addr)
        # the task API alone, in the CRI namespace: the same container by id
        assert resolve_container(web, addr, "k8s.io").via_cri is False
        data = tmp_path / "data"
        data.mkdir()
        with ctr_run(containerd, f"gpucr-cli-{tag}-a", data) as pa, ctr_run(containerd, f"gpucr-cli-{tag}-b", data):
            r = resolve_container(f"gpucr-cli-{tag}-a", addr)
            assert (r.id, r.pid, r.namespace, r.via_cri) == (f"gpucr-cli-{tag}-a", pa, "default", False)
            with pytest.raises(AmbiguousContainerError, match=rf"is ambiguous: gpucr-cli-{tag}-a \(default\), gpucr-cli-{tag}-b \(default\)"):
                resolve_container(f"gpucr-cli-{tag}", addr)
            with pytest.raises(ContainerRefError, match="no container"):
                resolve_container(f"gpucr-cli-{tag}-a", addr, "k8s.io")  # not in that namespace


@pytest.mark.parametrize("ref, says", [
    ("", "'' is not a container id"), ("/", "'/' is not a container id"),
    ("0", "no container '0' known to CRI at"), ("s", "(a prefix needs at least 4 characters)"),
    ("countr-typo", "no container 'countr-typo' known to CRI at"),
])
def test_bad_reference_is_one_line_and_touches_nothing(containerd: Containerd, tmp_path: Path, ref: str,
                                                       says: str) -> None:
    criu = tmp_path / "criu"
    criu.write_text(f"#!/bin/sh\necho ran >> {tmp_path}/criu-ran\nexit 1\n")
    criu.chmod(0o755)
    with containerd.pod() as (c, pod_id, cfg):
        containerd.run_container(c, pod_id, cfg, "bystander", ["sleep", "300"])
        r = gpucr("checkpoint", ref, "--to", str(tmp_path / "ck"), "--address", containerd.address,
                  env={**node_config(tmp_path), "GPUCR_CRIU": str(criu)})
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and says in lines[0], r.stderr
        assert lines[0].startswith("gpucr checkpoint: error: ")
        assert not (tmp_path / "ck").exists() and not (tmp_path / "criu-ran").exists()
        assert [state for state in (ct.state for ct in c.list_containers(pod_id))] == [1]  # still running


def test_checkpoint_a_ctr_run_container_through_the_task_api(containerd: Containerd, tmp_path: Path) -> None:
    name = f"gpucr-cli-{uuid.uuid4().hex[:6]}"
    data = tmp_path / "data"
    data.mkdir()
    log = data / "counter.log"
    with ctr_run(containerd, name, data) as pid:
        wait_for(lambda: log.exists() and len(log.read_text().split()) >= 3, what="counter to start")
        ck = tmp_path / "ck"
        r = gpucr("checkpoint", name[:12], "--to", str(ck), "--leave-running", "--json", "-v", "--address",
                  containerd.address, env={**node_config(tmp_path), "GPUCR_CRIU": str(CRIU),
                                           "GPUCR_LIBCUDA": "/nonexistent/libcuda.so.1"})
        assert r.returncode == 0, r.stderr
        assert f"container '{name[:12]}' is {name} ({name}, namespace default), pid {pid}" in r.stderr
        s = json.loads(r.stdout.strip().splitlines()[-1])
        assert s["pid"] == pid and s["image_bytes"] > 0
        assert json.loads((ck / "gpucr.json").read_text())["container"]["id"] == name
        n = int(log.read_text().split()[-1])
        wait_for(lambda: int(log.read_text().split()[-1]) >= n + 3, what="counter to go on after the checkpoint")

"""``gpucr checkpoint CONTAINER`` on a container run by the private containerd (both versions), resolved through CRI:
the dump takes the container's cgroup, its bind mounts as CRIU externals and its pod's pid namespace as external; the
counter keeps going (leave-running), and a container paused by containerd before the checkpoint stays paused."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu.binary import cli_version
from nri_plugin.cri import CriClient
from tests import cgroups
from tests.testenv import Containerd, node_config, wait_for

pytestmark = pytest.mark.integration

COUNTER = "i=0; while :; do i=$((i+1)); echo $i >> /data/counter.log; sleep 0.2; done"


def gpucr(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "gpucr"), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def last(log: Path) -> int:
    return int(log.read_text().split()[-1])


def counter_env(tmp_path: Path, criu_binary: str) -> tuple[Path, Path, dict[str, str]]:
    """The counter's volume (``tmp_path/data``), its log there, and gpucr's env: the rig's CRIU, no CUDA driver, a
    node config confined to ``tmp_path``."""
    data = tmp_path / "data"
    data.mkdir()
    env = {"GPUCR_CRIU": criu_binary, "GPUCR_LIBCUDA": "/nonexistent/libcuda.so.1", **node_config(tmp_path)}
    return data, data / "counter.log", env


@contextlib.contextmanager
def running_counter(containerd: Containerd, data: Path, log: Path) -> Iterator[tuple[CriClient, str]]:
    """The counter in a new pod (its volume ``data``), once it has written 3: the CRI client and its container id."""
    with containerd.pod() as (c, pod_id, cfg):
        cid = containerd.run_container(c, pod_id, cfg, "counter", ["/bin/sh", "-c", COUNTER],
                                       mounts=[(str(data), "/data", False)])
        wait_for(lambda: log.exists() and last(log) >= 3, what="counter to start")
        yield c, cid


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused-by-containerd"])
def test_checkpoint_container_leave_running(containerd: Containerd, criu_binary: str, tmp_path: Path,
                                            paused: bool) -> None:
    data, log, env = counter_env(tmp_path, criu_binary)
    with running_counter(containerd, data, log) as (c, cid):
        _, info = c.container_status(cid, verbose=True)
        pid = int(info["info"]["pid"])
        freezer = cgroups.of_pid(pid)
        if paused:
            containerd.ctr("t", "pause", cid, namespace="k8s.io")
            wait_for(lambda: cgroups.state(freezer) == "FROZEN", what="pause")
        ck = tmp_path / "ck"
        r = gpucr("checkpoint", cid[:12], "--to", str(ck), "--leave-running", "--json", "--address",
                  containerd.address, env=env)
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout.strip().splitlines()[-1])
        assert s["pid"] == pid and s["frozen_before"] is paused and s["image_bytes"] > 0
        meta = json.loads((ck / "gpucr.json").read_text())
        assert meta["container"]["id"] == cid
        assert meta["container"]["bind_mounts"]["/data"] == str(data)
        assert (meta["criu_version"], meta["kernel_release"]) == (cli_version(criu_binary), os.uname().release)
        assert any(p.name.startswith("core-") for p in (ck / "images").iterdir())
        if paused:
            # left exactly as containerd paused it
            assert cgroups.state(freezer) == "FROZEN"
            n = last(log)
            time.sleep(0.6)
            assert last(log) == n
            containerd.ctr("t", "resume", cid, namespace="k8s.io")
        n = last(log)
        wait_for(lambda: last(log) >= n + 3, what="container counter to continue after the checkpoint")
        values = [int(x) for x in log.read_text().split()]
        assert values == list(range(1, len(values) + 1))  # one uninterrupted sequence


def test_checkpoint_and_restore_container_counter_continues(containerd: Containerd, criu_binary: str,
                                                           tmp_path: Path) -> None:
    """Kill-mode checkpoint of a CRI container, then `gpucr restore`: the processes come back in the pod's pid
    namespace on the container's remounted root filesystem, and the counter continues from its checkpointed value."""
    data, log, env = counter_env(tmp_path, criu_binary)
    with running_counter(containerd, data, log) as (c, cid):
        ck = tmp_path / "ck"
        r = gpucr("checkpoint", cid, "--to", str(ck), "--json", "--address", containerd.address, env=env)
        assert r.returncode == 0, r.stderr
        at_dump = last(log)
        time.sleep(0.6)
        assert last(log) == at_dump  # CRIU killed the container's processes after the dump
        r = gpucr("restore", str(ck), "--json", env=env)
        assert r.returncode == 0, r.stderr
        restored = json.loads(r.stdout.strip().splitlines()[-1])["pid"]
        try:
            wait_for(lambda: last(log) >= at_dump + 3, what="restored counter to continue")
            values = [int(x) for x in log.read_text().split()]
            assert values == list(range(1, len(values) + 1)), values  # continues from the dumped value, no restart
            # it is back in the pod's pid namespace and on the container's root filesystem
            assert os.stat(f"/proc/{restored}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
            assert Path(f"/proc/{restored}/root/bin/busybox").exists() or Path(f"/proc/{restored}/root/bin/sh").exists()
        finally:
            from nri_plugin.host.proc import kill_tree
            kill_tree(restored)


def test_restore_checks_what_gpucr_json_asks_for(containerd: Containerd, criu_binary: str, tmp_path: Path) -> None:
    """A container sharing its pod's pid namespace (CRI pid=POD): the checkpoint records the namespace and the pod
    sandbox; a restore refuses a gpucr.json edited to join another container's namespace or to mount a host dir as
    the root, and ignores a freezer that is not the container's; the untouched record restores (counter goes on)."""
    from nri_plugin.cri import container_config, pod_config
    from nri_plugin.cri._pb import api_pb2 as pb

    data, log, env = counter_env(tmp_path, criu_binary)
    cfg = pod_config(f"p-{uuid.uuid4().hex[:8]}", cgroup_parent=containerd.cgroup_parent)
    cfg.linux.security_context.namespace_options.pid = pb.POD
    restored: list[int] = []
    with containerd.pod_of(cfg) as (c, pod_id, _):
        try:
            cc = container_config("counter", containerd.image, command=["/bin/sh", "-c", COUNTER],
                                  mounts=[(str(data), "/data", False)])
            cc.linux.security_context.namespace_options.pid = pb.POD
            cid = c.create_container(pod_id, cc, cfg)
            other = containerd.run_container(c, pod_id, cfg, "other", ["sleep", "300"])
            c.start_container(cid)
            wait_for(lambda: log.exists() and last(log) >= 3, what="counter to start")
            ck = tmp_path / "ck"
            r = gpucr("checkpoint", cid, "--to", str(ck), "--json", "--address", containerd.address, env=env)
            assert r.returncode == 0, r.stderr
            at_dump = last(log)
            meta_file = ck / "gpucr.json"
            good = meta_file.read_text()
            meta = json.loads(good)
            desc = meta["container"]
            assert desc["ext_pid_ns"] and desc["pod_sandbox"] == pod_id, desc

            def restore_with(change: dict[str, object]) -> subprocess.CompletedProcess[str]:
                meta_file.write_text(json.dumps({**meta, **change}))
                return gpucr("restore", str(ck), env=env)

            r = restore_with({"container": {**desc, "pod_sandbox": other}})
            assert r.returncode == 1 and f"not of its pod sandbox {other}: refusing to join it" in r.stderr, r.stderr
            r = restore_with({"container": {**desc, "rootfs_overlay": "lowerdir=/etc,upperdir=/tmp/u,workdir=/tmp/w"}})
            assert r.returncode == 1 and "root overlay layer '/etc' is not a containerd overlayfs snapshot" in r.stderr
            assert not (ck / "images" / "restore.log").exists()  # refused before CRIU
            # a freezer that is not the container's cgroup is ignored, not thawed or frozen
            meta_file.write_text(json.dumps({**meta, "freezer": {"path": "/sys/fs/cgroup/freezer", "version": 1}}))
            r = gpucr("restore", str(ck), "--json", env=env)
            assert r.returncode == 0, r.stderr
            restored.append(json.loads(r.stdout.strip().splitlines()[-1])["pid"])
            wait_for(lambda: last(log) >= at_dump + 3, what="restored counter to continue")
            values = [int(x) for x in log.read_text().split()]
            assert values == list(range(1, len(values) + 1)), values
        finally:
            from nri_plugin.host.proc import kill_tree
            for pid in restored:
                kill_tree(pid)

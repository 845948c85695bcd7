"""nri_plugin.host.proc: /proc/PID/cgroup texts of every cgroup driver and version (as real nodes write them) and the
container id each names; then the small /proc facts against real processes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nri_plugin.host.proc import (
    HostError, cgroup_path, comm, container_id, kill_tree, mem_available, parent_pid, parse_meminfo,
    parse_proc_cgroup, rss_bytes, runc_cgroup, tree_pids,
)

CID = "3f1c7a0e5b2d4c6a8e9f0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e"
UID = "8d2c4e6a-1b3d-4f5a-9c7e-0a1b2c3d4e5f"
SD_UID = UID.replace("-", "_")

# v2, systemd driver (kubeadm's default): containerd, Docker, CRI-O and CRI-O's monitor
V2_SYSTEMD_CONTAINERD = (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SD_UID}.slice/"
                         f"cri-containerd-{CID}.scope\n")
V2_SYSTEMD_DOCKER = f"0::/system.slice/docker-{CID}.scope\n"
V2_SYSTEMD_CRIO = f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD_UID}.slice/crio-{CID}.scope\n"
V2_SYSTEMD_CRIO_CONMON = (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD_UID}.slice/"
                          f"crio-conmon-{CID}.scope\n")
# v2, cgroupfs driver: kubelet's layout and this project's private instances
V2_CGROUPFS_KUBE = f"0::/kubepods/besteffort/pod{UID}/{CID}\n"
V2_CGROUPFS_RIG = "0::/gpucr-test-restructure/t-front-1a2b\n"
# v1 (hybrid host): one line per controller, a named systemd hierarchy and the controller-less cgroup2
V1_CGROUPFS_KUBE = (f"12:freezer:/kubepods/burstable/pod{UID}/{CID}\n"
                    f"11:memory:/kubepods/burstable/pod{UID}/{CID}\n"
                    f"4:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n"
                    f"1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n"
                    f"0::/kubepods/burstable/pod{UID}/{CID}\n")
V1_SYSTEMD_CONTAINERD = (f"12:freezer:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SD_UID}.slice/"
                         f"cri-containerd-{CID}.scope\n"
                         f"4:cpu,cpuacct:/kubepods.slice/kubepods-besteffort.slice/"
                         f"kubepods-besteffort-pod{SD_UID}.slice/cri-containerd-{CID}.scope\n"
                         f"1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/"
                         f"kubepods-besteffort-pod{SD_UID}.slice/cri-containerd-{CID}.scope\n"
                         "0::/\n")
V1_RIG_HYBRID = "12:freezer:/gpucr-test-x/ctr-7\n11:memory:/gpucr-test-x/ctr-7\n0::/gpucr-test-x/ctr-7-unified\n"
# host processes: no container
V2_HOST_SERVICE = "0::/system.slice/containerd.service\n"
V2_HOST_SESSION = "0::/user.slice/user-0.slice/session-3.scope\n"
V2_INIT = "0::/init.scope\n"
V2_ROOT = "0::/\n"
V1_HOST = "12:freezer:/\n1:name=systemd:/init.scope\n0::/init.scope\n"


@pytest.mark.parametrize("text, cgroup, cid", [
    (V2_SYSTEMD_CONTAINERD, V2_SYSTEMD_CONTAINERD[3:-1], CID),
    (V2_SYSTEMD_DOCKER, f"/system.slice/docker-{CID}.scope", CID),
    (V2_SYSTEMD_CRIO, V2_SYSTEMD_CRIO[3:-1], CID),
    (V2_SYSTEMD_CRIO_CONMON, V2_SYSTEMD_CRIO_CONMON[3:-1], ""),
    (V2_CGROUPFS_KUBE, f"/kubepods/besteffort/pod{UID}/{CID}", CID),
    (V2_CGROUPFS_RIG, "/gpucr-test-restructure/t-front-1a2b", "t-front-1a2b"),
    (V1_CGROUPFS_KUBE, f"/kubepods/burstable/pod{UID}/{CID}", CID),
    (V1_SYSTEMD_CONTAINERD, V1_SYSTEMD_CONTAINERD.split("\n")[0][len("12:freezer:"):], CID),  # freezer, not 0::/
    (V1_RIG_HYBRID, "/gpucr-test-x/ctr-7", "ctr-7"),
    (V2_HOST_SERVICE, "/system.slice/containerd.service", "containerd.service"),  # cgroupfs rule: no record has it
    (V2_HOST_SESSION, "/user.slice/user-0.slice/session-3.scope", ""),
    (V2_INIT, "/init.scope", ""),
    (V2_ROOT, "/", ""),
    (V1_HOST, "/", ""),  # the v1 freezer entry wins on a hybrid host, even at the root
], ids=["v2-systemd-containerd", "v2-systemd-docker", "v2-systemd-crio", "v2-systemd-crio-conmon",
        "v2-cgroupfs-kube", "v2-cgroupfs-rig", "v1-cgroupfs-kube", "v1-systemd-containerd", "v1-rig-hybrid",
        "v2-host-service", "v2-session", "v2-init", "v2-root", "v1-host"])
def test_runc_cgroup_and_container_id(text: str, cgroup: str, cid: str) -> None:
    assert runc_cgroup(text) == cgroup
    assert container_id(cgroup) == cid


def test_parse_proc_cgroup() -> None:
    text = "12:freezer:/k8s/c1\n4:cpu,cpuacct:/k8s/c1\n1:name=systemd:/init.scope\n0::/k8s/c1\n"
    assert parse_proc_cgroup(text) == {"freezer": "/k8s/c1", "cpu": "/k8s/c1", "cpuacct": "/k8s/c1",
                                       "name=systemd": "/init.scope", "": "/k8s/c1"}
    assert parse_proc_cgroup("0::/\n") == {"": "/"}
    assert runc_cgroup("12:freezer:/k8s/c1\n11:memory:/k8s/c1m\n0::/unified/c1\n") == "/k8s/c1"
    assert runc_cgroup("0::/kubepods/c2\n") == "/kubepods/c2"
    assert runc_cgroup("3:memory:/m\n") == ""
    with pytest.raises(HostError, match="malformed"):
        parse_proc_cgroup("garbage\n")


def test_real_processes(tmp_path: Path) -> None:
    p = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        from tests.testenv import wait_for
        kids = wait_for(lambda: tree_pids(p.pid)[1:] or None, what="sleep under sh")
        assert comm(kids[0]) == "sleep" and comm(p.pid) == "sh"
        assert rss_bytes(p.pid) > 0
        assert cgroup_path(p.pid) == cgroup_path() != ""  # a child shares our cgroup
        assert kill_tree(p.pid) == [p.pid, *kids]
        assert p.wait(10) == -9
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert cgroup_path(p.pid) == "" and comm(p.pid) == "" and rss_bytes(p.pid) == 0 and tree_pids(p.pid) == []


def test_meminfo(tmp_path: Path) -> None:
    text = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\nHugePages_Total:       0\n"
    info = parse_meminfo(text)
    assert info["MemAvailable"] == 8_000_000 * 1024 and info["HugePages_Total"] == 0
    f = tmp_path / "meminfo"
    f.write_text(text)
    assert mem_available(str(f)) == 8_000_000 * 1024
    f.write_text("MemTotal: 1 kB\n")
    with pytest.raises(HostError, match="no MemAvailable"):
        mem_available(str(f))
    with pytest.raises(HostError, match="cannot read"):
        mem_available(str(tmp_path / "absent"))
    assert mem_available() > 0


def test_parent_pid() -> None:
    assert parent_pid(os.getpid()) == os.getppid()
    assert parent_pid(2**22 + 1) == 0

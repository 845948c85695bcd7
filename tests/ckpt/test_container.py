"""nri_plugin.ckpt.container: a recorded container description asks a restore for nothing the container did not
have (check_restore), and a container is dumped as runc's checkpoint dumps one, so `runc restore` takes it (the real
paths: tests/ckpt/test_cli_container.py, tests/front/test_restore_named.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nri_plugin.ckpt import marker
from nri_plugin.ckpt.container import ContainerError, ContainerStore, check_restore, dump_options
from nri_plugin.ckpt.layout import Metadata

SNAP = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots"


@pytest.mark.parametrize("desc, says", [
    ({"id": "c", "bind_mounts": {"/data": "/etc/../root"}}, "not plain absolute paths"),
    ({"id": "c", "bind_mounts": {"data": "/tmp"}}, "not plain absolute paths"),
    ({"id": "c", "bind_mounts": {}, "rootfs_overlay": "lowerdir=/,upperdir=/tmp,workdir=/tmp"}, "layer '/' is not"),
    ({"id": "c", "bind_mounts": {}, "rootfs_overlay": f"lowerdir={SNAP}/../../../../etc"}, "is not a containerd"),
    ({"id": "c", "bind_mounts": {}, "rootfs_overlay": "index=off,suid"}, "option 'suid' is not one overlayfs"),
    ({"id": "c", "bind_mounts": {}, "ext_pid_ns": 4026531836}, "pod pid namespace is malformed"),
    ({"id": "c", "bind_mounts": {}, "ext_pid_ns": True, "pod_sandbox": "p"}, "pod pid namespace is malformed"),
    ({"id": "c", "bind_mounts": {}, "ext_net_ns": 4026531840}, "pod net namespace is malformed"),
    ({"id": "c", "bind_mounts": {}, "ext_net_ns": -1, "pod_sandbox": "p"}, "pod net namespace is malformed"),
    ({"id": "", "bind_mounts": {}}, "container description is malformed"),
    ([], "container description is malformed"),
])
def test_restore_refuses_what_the_container_did_not_have(desc: object, says: str) -> None:
    with pytest.raises(ContainerError, match=says.replace("(", r"\(")):
        check_restore(desc)


def test_restore_accepts_the_containers_own() -> None:
    check_restore({"id": "c", "bind_mounts": {"/data": "/tmp"}, "rootfs_overlay": None, "ext_pid_ns": 5,
                   "pod_sandbox": "p"})


def test_dump_options_are_runcs() -> None:
    """Bind mounts external keyed by their destination, the pod's pid and net namespaces under runc's keys."""
    desc = {"id": "c", "bind_mounts": {"/data": "/srv/d", "/etc/hosts": "/run/h"}, "ext_pid_ns": 11, "ext_net_ns": 12}
    assert dump_options(desc) == {"external_mounts": {"/data": "/data", "/etc/hosts": "/etc/hosts"},
                                  "external": ["pid[11]:extRootPidNS", "net[12]:extRootNetNS"]}
    assert dump_options({"id": "c", "bind_mounts": {}, "ext_pid_ns": None, "ext_net_ns": None}) == \
        {"external_mounts": {}}


class _Store:
    def __init__(self, images: Path) -> None:
        self.images = images
        self.written: list[dict[str, object]] = []

    def images_of(self, images_dir: Path) -> Path:
        return self.images

    def write_metadata(self, images_dir: Path, meta: Metadata, known: object = None) -> None:
        assert (self.images / "descriptors.json").exists()  # before the seal, so the manifest covers it
        self.written.append(meta)

    def sync(self, images_dir: Path) -> int:
        return 7


def test_container_store_writes_runcs_files_before_the_seal(tmp_path: Path) -> None:
    store = _Store(tmp_path)
    desc = {"id": "c1", "descriptors": ["/dev/null", "pipe:[5]", "pipe:[6]"]}
    cuda = {"processes": [{"pid": 9, "gpus": {"GPU-a": 10}}], "gpus": {"GPU-a": "H200"}, "driver_version": "580"}
    ContainerStore(store, desc, managed=True).write_metadata(tmp_path, Metadata(root_pid=9, container_id="c1", cuda=cuda))
    assert json.loads((tmp_path / "descriptors.json").read_text()) == desc["descriptors"]
    mk = marker.read(str(tmp_path))
    assert (mk.container_id, mk.pid, mk.processes, mk.gpus, mk.driver_version, mk.managed) == \
        ("c1", 9, cuda["processes"], cuda["gpus"], "580", True)
    assert (tmp_path / "descriptors.json").stat().st_mode & 0o777 == 0o600
    assert store.written and ContainerStore(store, desc, managed=False).sync(tmp_path) == 7  # the rest delegated


def test_container_store_writes_no_marker_without_cuda(tmp_path: Path) -> None:
    ContainerStore(_Store(tmp_path), {"id": "c1", "descriptors": ["a", "b", "c"]}, managed=False).write_metadata(
        tmp_path, Metadata(root_pid=9, container_id="c1", cuda={"processes": []}))
    assert (tmp_path / "descriptors.json").exists() and not (tmp_path / marker.MARKER).exists()

"""nri_plugin.ckpt.container.check_restore: a recorded container description asks a restore for nothing the
container did not have (the real restore path: tests/ckpt/test_cli_container.py)."""

from __future__ import annotations

import pytest

from nri_plugin.ckpt.container import ContainerError, check_restore

SNAP = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots"


@pytest.mark.parametrize("desc, says", [
    ({"id": "c", "bind_mounts": {"/data": "/etc/../root"}}, "not plain absolute paths"),
    ({"id": "c", "bind_mounts": {"data": "/tmp"}}, "not plain absolute paths"),
    ({"id": "c", "bind_mounts": {}, "rootfs_overlay": "lowerdir=/,upperdir=/tmp,workdir=/tmp"}, "layer '/' is not"),
    ({"id": "c", "bind_mounts": {}, "rootfs_overlay": f"lowerdir={SNAP}/../../../../etc"}, "is not a containerd"),
    ({"id": "c", "bind_mounts": {}, "rootfs_overlay": "index=off,suid"}, "option 'suid' is not one overlayfs"),
    ({"id": "c", "bind_mounts": {}, "ext_pid_ns": 4026531836}, "pod pid namespace is malformed"),
    ({"id": "c", "bind_mounts": {}, "ext_pid_ns": True, "pod_sandbox": "p"}, "pod pid namespace is malformed"),
    ({"id": "", "bind_mounts": {}}, "container description is malformed"),
    ([], "container description is malformed"),
])
def test_restore_refuses_what_the_container_did_not_have(desc: object, says: str) -> None:
    with pytest.raises(ContainerError, match=says.replace("(", r"\(")):
        check_restore(desc)


def test_restore_accepts_the_containers_own() -> None:
    check_restore({"id": "c", "bind_mounts": {"/data": "/tmp"}, "rootfs_overlay": None, "ext_pid_ns": 5,
                   "pod_sandbox": "p"})

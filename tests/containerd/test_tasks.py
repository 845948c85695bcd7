"""containerd's task API through gpucr's client, on a CRI container of the private containerd (both versions)."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import grpc
import pytest

from nri_plugin.containerd import TaskClient, TaskError
from nri_plugin.cri import CriError
from tests.testenv import Containerd, wait_for

pytestmark = pytest.mark.integration

COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.2; done"


def _counter(c, cid: str) -> int:  # type: ignore[no-untyped-def]
    return int(c.exec_sync(cid, ["cat", "/tmp/n"]).stdout.strip() or 0)


def test_get_pause_resume_and_checkpoint_to_dir(containerd: Containerd, tmp_path: Path) -> None:
    with containerd.pod() as (c, pod_id, cfg):
        cid = containerd.run_container(c, pod_id, cfg, "counter", ["/bin/sh", "-c", COUNTER])
        _, info = c.container_status(cid, verbose=True)
        with TaskClient(containerd.address) as t:
            task = t.get(cid)
            assert task.status == "running" and task.pid == info["info"]["pid"]
            t.pause(cid)
            assert t.get(cid).status == "paused"
            t.resume(cid)
            assert t.get(cid).status == "running"
            wait_for(lambda: _counter(c, cid) > 2, what="counter")
            images = tmp_path / "images"
            t.checkpoint(cid, images, work_path=tmp_path / "work")
            # CRIU images were written by runc into the directory; the task keeps running (leave-running)
            assert (images / "inventory.img").is_file() and (images / "pstree.img").is_file()
            assert t.get(cid).status == "running"
            n = _counter(c, cid)
            wait_for(lambda: _counter(c, cid) > n, what="counter to advance after the checkpoint")


def test_unknown_container_names_it(containerd: Containerd) -> None:
    with TaskClient(containerd.address) as t, pytest.raises(TaskError) as ei:
        t.get("no-such-container")
    assert ei.value.code == grpc.StatusCode.NOT_FOUND
    assert "no-such-container" in str(ei.value) and "k8s.io" in str(ei.value)


@pytest.mark.containerd(below="2.0")
def test_cri_checkpoint_container_is_unimplemented_on_1_7(containerd: Containerd, tmp_path: Path) -> None:
    """containerd 1.7 answers CRI CheckpointContainer with Unimplemented (so gpucr uses the task API there), and the
    container runs on; every other CRI checkpoint case runs on 2.x only."""
    with containerd.pod() as (c, pod_id, cfg):
        cid = containerd.run_container(c, pod_id, cfg, "counter", ["/bin/sh", "-c", COUNTER])
        archive = tmp_path / "ckpt.tar"
        with pytest.raises(CriError) as ei:
            c.checkpoint_container(cid, str(archive))
        assert ei.value.code == grpc.StatusCode.UNIMPLEMENTED
        assert not archive.exists()
        n = _counter(c, cid)
        wait_for(lambda: _counter(c, cid) > n, what="counter to advance after the refused checkpoint")


@pytest.mark.containerd(min="2.0")
def test_cri_checkpoint_container(containerd: Containerd, tmp_path: Path) -> None:
    """CRI CheckpointContainer on 2.x: a private archive of CRIU images and the spec; the container keeps running."""
    with containerd.pod() as (c, pod_id, cfg):
        cid = containerd.run_container(c, pod_id, cfg, "counter", ["/bin/sh", "-c", COUNTER])
        archive = tmp_path / "ckpt.tar"
        c.checkpoint_container(cid, str(archive))
        with tarfile.open(archive) as tar:
            names = tar.getnames()
        assert any(n.startswith("checkpoint/") for n in names) and "spec.dump" in names
        assert stat.S_IMODE(os.stat(archive).st_mode) & 0o077 == 0, "checkpoint archive must be private"
        st, _ = c.container_status(cid)
        assert st.state == 1  # CONTAINER_RUNNING: CRI checkpoints leave the container running

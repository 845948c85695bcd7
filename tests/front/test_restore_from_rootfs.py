"""``gpucr.io/restore-from`` of a CRI CheckpointContainer archive brings back the container's rootfs changes:
containerd 2.1.9 stores what the container wrote into its writable layer (``rootfs-diff.tar``) and what it removed
from the image (``deleted.files`` or whiteouts) beside the CRIU images; gpucr's runc wrapper applies them to the new
container's rootfs before ``runc restore`` (containerd 1.7 has no CRI checkpoint, so only 2.1.9 makes such an
archive).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.cri import container_config
from nri_plugin.cri._pb import api_pb2 as pb
from tests.fakes.cuda import FakeCuda
from tests.front.conftest import FrontRoute
from tests.front.test_restore_from import _gone, _lines, ctrd, node, plugin  # noqa: F401 (fixtures)
from tests.front.test_gpufront import fake  # noqa: F401 (fixture)
from tests.testenv import REPO, Containerd, wait_for

pytestmark = pytest.mark.integration

#: writes a token only this process start knows into its rootfs, removes an image file, then counts
WRITER = ("cat /proc/sys/kernel/random/uuid > /written; mkdir -p /var/made && echo deep > /var/made/file; "
          "[ -e /etc/group ] && rm /etc/group && echo yes > /data/removed; "
          "i=0; while true; do i=$((i+1)); echo $i >> /data/log; sleep 0.2; done")


def _writer(name: str, image: str, data: Path, ann: dict[str, str]) -> Any:
    conf = container_config(name, image, command=["/bin/sh", "-c", WRITER], mounts=[(str(data), "/data", False)],
                            annotations=ann)
    conf.linux.security_context.namespace_options.pid = pb.CONTAINER
    return conf


@pytest.mark.containerd(min="2.0")  # 1.7 has no CRI CheckpointContainer: no such archive to restore there
def test_rootfs_changes_come_back(ctrd: Containerd, plugin: Any, front_route: FrontRoute,  # noqa: F811
                                  node: dict[str, Path], fake: FakeCuda, tmp_path: Path) -> None:  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    name = "rootfs-ck"
    with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                libnvml=str(fake.lib)):
        try:
            with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
                cid = c.create_container(pod_id, _writer("w", ctrd.image, data, {}), cfg)
                c.start_container(cid)
                wait_for(lambda: len(_lines(data)) >= 2, what="the writer to count")
                token = c.exec_sync(cid, ["cat", "/written"]).stdout.strip()
                assert len(token) == 36 and (data / "removed").read_text().strip() == "yes"
                r = subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "checkpoint", cid, "--via-runtime",
                                    "--leave-running", "--to", str(node["root"] / name), "--json", "--address",
                                    ctrd.address, "--config", str(node["config"])],
                                   capture_output=True, text=True, cwd=REPO, timeout=120)
                assert r.returncode == 0, r.stderr
                hi = _lines(data)[-1]
                c.stop_container(cid, 0)
            with tarfile.open(node["root"] / name / "checkpoint.tar") as t:
                names = t.getnames()
            assert "rootfs-diff.tar" in names, names  # what this test is about: CRI's archive carries the changes
            data2 = tmp_path / "data2"
            shutil.copytree(data, data2)
            before = len(_lines(data2))
            mark = front_route.log_mark()
            with ctrd.pod() as (c, pod_id, cfg):
                new = c.create_container(pod_id, _writer("r", ctrd.image, data2, {"gpucr.io/restore-from": name}), cfg)
                c.start_container(new)
                wait_for(lambda: len(_lines(data2)) >= before + 3, what="the restored counter", timeout=30)
                after = _lines(data2)[before:]
                assert after[0] <= hi + 1 and after[0] > 1, (hi, after)  # continued, not restarted at 1
                assert "INFO: RESTORE from runtime pid" in front_route.log_since(mark)  # runc restore, via the front
                assert c.exec_sync(new, ["cat", "/written"]).stdout.strip() == token  # the checkpointed write
                assert c.exec_sync(new, ["cat", "/var/made/file"]).stdout.strip() == b"deep"
                assert c.exec_sync(new, ["test", "-e", "/etc/group"]).exit_code == 1  # the removal too
                c.stop_container(new, 0)
                c.remove_container(new)
            _gone(node, new)
        finally:
            shutil.rmtree(node["root"] / name, ignore_errors=True)

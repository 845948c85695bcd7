"""``gpucr.io/restore-from`` of a checkpoint dumped by a newer CRIU or on a newer kernel than the node's: refused at
CreateContainer naming both versions and the fix, nothing started, nothing left, the checkpoint untouched; with
``restore_allow_older_kernel = true`` the kernel case passes and restores (containerd 1.7.24 and 2.1.9, runc, CRIU
4.2.x through gpucr's front and runc wrapper, as in test_restore_from.py).

The checkpoint is a real one (`gpucr checkpoint --via-runtime` of a counter), whose ``gpucr.json`` must record the
node's CRIU and kernel; its copies claim other versions (``gpucr.json`` is not in its own manifest).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.ckpt.criu.binary import cli_version
from nri_plugin.ckpt.layout import Metadata
from nri_plugin.cri import CriError, container_config
from nri_plugin.cri._pb import api_pb2 as pb
from tests.fakes.cuda import FakeCuda
from tests.front.conftest import FrontRoute
from tests.front.test_front_containerd import _n
from tests.front.test_gpufront import PLAIN_COUNTER, fake, gpu_node  # noqa: F401  (fixtures)
from tests.front.test_restore_from import INSTANCE, _digest, ctrd  # noqa: F401  (fixture)
from tests.testenv import CRIU, REPO, TEST_ROOT, Containerd, running_plugin, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(fake: FakeCuda) -> Iterator[dict[str, Path]]:  # noqa: F811
    """The node (hook, config naming the rig's CRIU as criu_path, state, checkpoint root) and a second config that
    only adds ``restore_allow_older_kernel = true``."""
    d = TEST_ROOT / f"restore-compat-{INSTANCE}"
    with gpu_node(d, fake, checkpoint_root=str(d / "checkpoints")) as paths:
        paths["root"] = d / "checkpoints"
        paths["root"].mkdir(mode=0o700)
        paths["allow"] = d / "allow.toml"
        paths["allow"].write_text(paths["config"].read_text() + "restore_allow_older_kernel = true\n")
        yield paths


def _plain(data: Path, name: str, image: str, ann: dict[str, str] | None = None) -> Any:
    conf = container_config(name, image, command=["/bin/sh", "-c", PLAIN_COUNTER], mounts=[(str(data), "/data", False)],
                            annotations=ann or {})
    conf.linux.security_context.namespace_options.pid = pb.CONTAINER
    return conf


@pytest.fixture(scope="module")
def checkpoint(ctrd: Containerd, front_route: FrontRoute, node: dict[str, Path], fake: FakeCuda,  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A counter checkpointed with `gpucr checkpoint --via-runtime --leave-running` into ROOT/ck (sealed), then
    stopped and removed with its pod."""
    data = tmp_path_factory.mktemp("compat-src") / "data"
    data.mkdir()
    with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                libnvml=str(fake.lib)):
        with ctrd.pod() as (c, pod_id, cfg):
            cid = c.create_container(pod_id, _plain(data, "counter", ctrd.image), cfg)
            c.start_container(cid)
            wait_for(lambda: _n(data) >= 2, what="the counter to start")
            r = subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "checkpoint", cid, "--via-runtime",
                                "--leave-running", "--to", str(node["root"] / "ck"), "--json", "--address",
                                ctrd.address, "--config", str(node["config"])],
                               capture_output=True, text=True, cwd=REPO, timeout=120)
            assert r.returncode == 0, r.stderr
            hi = _n(data)
            c.stop_container(cid, 0)
    try:
        yield {"path": node["root"] / "ck", "data": data, "hi": hi}
    finally:  # the node outlives this containerd version
        shutil.rmtree(node["root"] / "ck", ignore_errors=True)


def _copy_claiming(node: dict[str, Path], checkpoint: dict[str, Any], name: str, **versions: str) -> Path:
    """A copy of the checkpoint whose gpucr.json claims ``versions``; still a valid gpucr.json."""
    dst = node["root"] / name
    shutil.copytree(checkpoint["path"], dst, copy_function=shutil.copy2)  # the sealing times kept
    meta = dst / "gpucr.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), **versions}))
    m = Metadata.from_json(meta.read_text())
    assert all(getattr(m, k) == v for k, v in versions.items())
    return dst


def _nothing_left(node: dict[str, Path]) -> None:
    root = node["root"]
    assert not any((root / ".restore").glob("*")) if (root / ".restore").exists() else True
    assert not any((root / ".restore-locks").glob("*.lock")) if (root / ".restore-locks").exists() else True


def test_checkpoint_records_the_node_criu_and_kernel(checkpoint: dict[str, Any]) -> None:
    m = Metadata.from_json((checkpoint["path"] / "gpucr.json").read_text())
    assert m.criu_version == cli_version(str(CRIU)) and m.kernel_release == os.uname().release, m


@pytest.mark.parametrize("case", ["criu", "kernel"])
def test_newer_criu_or_kernel_is_refused_at_create(ctrd: Containerd, front_route: FrontRoute,  # noqa: F811
                                                  node: dict[str, Path], fake: FakeCuda,  # noqa: F811
                                                  checkpoint: dict[str, Any], tmp_path: Path, case: str) -> None:
    """Refused by the node's default config (CRIU 99.0 > this node's; kernel 99.0.0 > this node's): one error
    naming both versions and the fix; no container, nothing staged or locked, the checkpoint unchanged. With
    restore_allow_older_kernel the kernel case restores (the counter goes on), the CRIU case is still refused."""
    here = cli_version(str(CRIU))
    claim = {"criu_version": "99.0"} if case == "criu" else {"kernel_release": "99.0.0-gpucr-test"}
    name = f"newer-{case}"
    ck = _copy_claiming(node, checkpoint, name, **claim)
    digest = _digest(ck)
    data = tmp_path / "data"
    shutil.copytree(checkpoint["data"], data)
    before = len((data / "log").read_text().split())
    try:
        with running_plugin(ctrd.nri_socket, node["log"], node["config"]):
            with ctrd.pod() as (c, pod_id, cfg):
                with pytest.raises(CriError) as ei:
                    c.create_container(pod_id, _plain(data, "bad", ctrd.image, {"gpucr.io/restore-from": name}), cfg)
                assert not c.list_containers(pod_id)  # nothing half-created
        msg = str(ei.value)
        assert "container bad in pod default/" in msg and f"cannot restore from checkpoint '{name}'" in msg, msg
        if case == "criu":
            assert (f"dumped by CRIU 99.0 and this node's CRIU ({CRIU}) is {here}, older: install gpucr-criu or a "
                    "CRIU >= 99.0") in msg, msg
        else:
            assert (f"dumped on kernel 99.0.0-gpucr-test and this node runs kernel {os.uname().release}, older: "
                    "restore on a node with kernel >= 99.0, or set restore_allow_older_kernel = true") in msg, msg
        _nothing_left(node)
        assert _digest(ck) == digest and len((data / "log").read_text().split()) == before
        with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["allow"]),
                                    libnvml=str(fake.lib)), \
                running_plugin(ctrd.nri_socket, node["log"], node["allow"]):
            with ctrd.pod() as (c, pod_id, cfg):
                conf = _plain(data, "restored", ctrd.image, {"gpucr.io/restore-from": name})
                if case == "criu":
                    with pytest.raises(CriError, match="dumped by CRIU 99.0"):
                        c.create_container(pod_id, conf, cfg)
                    assert not c.list_containers(pod_id)
                else:
                    cid = c.create_container(pod_id, conf, cfg)
                    c.start_container(cid)
                    wait_for(lambda: len((data / "log").read_text().split()) >= before + 3, timeout=30,
                             what="the restored counter")
                    after = [int(x) for x in (data / "log").read_text().split()[before:]]
                    assert 1 < after[0] <= checkpoint["hi"] + 1, (after, checkpoint["hi"])  # restored, not fresh
                    assert c.container_status(cid)[0].state == 1  # CONTAINER_RUNNING
                    c.stop_container(cid, 0)
                    c.remove_container(cid)
        wait_for(lambda: not (node["root"] / ".restore").exists() or not any((node["root"] / ".restore").glob("*")),
                 what="the restore's staging to go")
        _nothing_left(node)
        assert _digest(ck) == digest
    finally:
        shutil.rmtree(ck, ignore_errors=True)

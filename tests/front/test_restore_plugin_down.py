"""``gpucr.io/restore-from`` on a container created while gpucr's plugin is down (containerd 1.7.24 and 2.1.9):
the routed handler's ``container_annotations`` (what ``gpucr setup --apply`` / ``install/front.sh install`` write,
and the rig's handler gets by the same function) carry the annotation into the OCI spec, so the runc wrapper sees it
without the plugin's ticket and fails the start with its reason: nothing runs fresh, the checkpoint is untouched.
Recreated with the plugin running, the same container restores.

The node, the containerd whose runtime binary is gpucr's runc wrapper, and the helpers are those of
:mod:`tests.front.test_restore_from`; this module runs the plugin itself (not the module fixture), so that it can
be down.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.cri import CriError
from tests.fakes.cuda import FakeCuda
from tests.front.conftest import FrontRoute
from tests.front.restoring import counter_config, lines, restore_and_check, restore_config
from tests.front.test_front_containerd import _n
from tests.front.test_gpufront import cuda_running, fake, gpu_front  # noqa: F401  (fixtures)
from tests.front.test_restore_from import _digest, ctrd, node  # noqa: F401  (fixtures)
from tests.front.test_restore_named import CUDA_HOOKS, _direct_checkpoint, _restore_failed
from tests.testenv import INSTALL, Containerd, running_plugin, wait_for

pytestmark = pytest.mark.integration


def _handler(ctrd: Containerd) -> dict[str, Any]:
    doc = tomllib.loads((Path(ctrd.info["dir"]) / "config.toml").read_text())
    cri = "io.containerd.grpc.v1.cri" if doc["version"] == 2 else "io.containerd.cri.v1.runtime"
    return doc["plugins"][cri]["containerd"]["runtimes"]["runc"]  # type: ignore[no-any-return]


def test_restore_from_with_the_plugin_down_fails_start_then_restores_with_it(
        ctrd: Containerd, front_route: FrontRoute, node: dict[str, Path], fake: FakeCuda,  # noqa: F811
        tmp_path: Path) -> None:
    handler = _handler(ctrd)
    assert handler["options"]["BinaryName"] == str(front_route.runc)
    assert handler["container_annotations"] == ["gpucr.io/*"], handler  # what install/front.sh install writes
    assert "PASS_ANNOTATIONS = \"gpucr.io/*\"" in (INSTALL / "runtime_config.py").read_text()
    data, name = tmp_path / "data", "down-ck"
    data.mkdir()
    ck = node["root"] / name
    try:
        with front_route.configured(hooks=CUDA_HOOKS, node_config=str(node["config"]), libnvml=str(fake.lib)):
            with running_plugin(ctrd.nri_socket, node["log"], node["config"]):
                with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
                    cid = c.create_container(pod_id, counter_config(fake, data, "cuda", {}, ctrd.image), cfg)
                    c.start_container(cid)
                    pid = int(c.container_status(cid, verbose=True)[1]["info"]["pid"])
                    cuda_running(fake, pid)
                    wait_for(lambda: _n(data) >= 2, what="CRI counter to start")
                    _direct_checkpoint(ctrd, node, fake, cid, name)
                    at_dump = _n(data)
            digest = _digest(ck)
            data2 = tmp_path / "data2"
            shutil.copytree(data, data2)
            before = len(lines(data2))
            # the plugin is down: containerd creates the container without gpucr's checks
            mark = front_route.log_mark()
            with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
                conf = restore_config(fake, data2, "restored", restore_from=name)
                conf.image.image = ctrd.image
                new = c.create_container(pod_id, conf, cfg)
                info = json.loads(ctrd.ctr("c", "info", new, namespace="k8s.io").stdout)
                assert info["Spec"]["annotations"]["gpucr.io/restore-from"] == name, info["Spec"]["annotations"]
                assert "gpucr.io/restore-ticket" not in info["Spec"]["annotations"]
                with pytest.raises(CriError) as ei:
                    c.start_container(new)
                msg = str(ei.value)
                assert (f"container {new} names gpucr.io/restore-from but gpucr's plugin did not check it (no ticket "
                        f"in {node['state']}/restore): was `gpucr plugin` running when it was created? Recreate the "
                        "container with the plugin running") in msg, msg
                assert c.container_status(new)[0].state != 1  # not RUNNING
                assert len(lines(data2)) == before  # no fresh counter wrote a line
                assert "request RESTORE" not in front_route.log_since(mark)  # CRIU never ran
                c.remove_container(new)
            assert not (node["root"] / ".restore" / new).exists()
            assert _digest(ck) == digest
            # the plugin back: the same container restores
            with running_plugin(ctrd.nri_socket, node["log"], node["config"]):
                mark = front_route.log_mark()
                restore_and_check(ctrd, fake, data2, name, lo=at_dump + 1, hi=at_dump, old_pid=pid,
                                  pod_annotations={"gpucr.io/checkpoint": "enabled"},
                                  explain=lambda exc, cid: _restore_failed(exc, node, cid, front_route, mark))
            assert _digest(ck) == digest
    finally:
        shutil.rmtree(ck, ignore_errors=True)

"""gpucr's policy plugin (``gpucr plugin``) against real containerd 1.7.24 and 2.1.9.

A managed container gets gpucr's CRIU config through ``org.criu.config`` (merged with the node's runc.conf) and the
OCI hooks that record its pid and cgroup; runc and CRIU really use that config on a checkpoint; an unmanaged
container is left untouched; a bad ``gpucr.io/`` annotation fails the creation with a message naming it.
"""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.containerd import TaskClient
from nri_plugin.cri import CriError
from nri_plugin.policy import load_record
from tests.roottmp import root_tmp  # noqa: F401 (fixture)
from tests.testenv import Containerd, installed_hook, running_plugin, wait_for

pytestmark = pytest.mark.integration

SLEEP = ["/bin/sh", "-c", "while :; do sleep 1; done"]


@pytest.fixture
def node(root_tmp: Path) -> Iterator[dict[str, Path]]:
    """The node's hook (installed by install/hook.sh), state and CRIU config dirs, in a place only root can change:
    the plugin uses nothing that others could (nri_plugin.host.paths)."""
    with installed_hook(root_tmp / "libexec") as hook:
        yield _node(root_tmp, hook)


def _node(tmp_path: Path, hook: Path) -> dict[str, Path]:
    runc_conf = tmp_path / "runc.conf"
    runc_conf.write_text("# the node's own runc CRIU config\nghost-limit 2M\n")
    paths = {"state": tmp_path / "state", "criu": tmp_path / "criu", "hook": hook, "runc_conf": runc_conf,
             "config": tmp_path / "config.toml", "log": tmp_path / "plugin.log"}
    paths["config"].write_text(f'state_dir = "{paths["state"]}"\ncriu_config_dir = "{paths["criu"]}"\n'
                               f'hook_path = "{hook}"\nrunc_criu_config = "{runc_conf}"\n')
    return paths


@pytest.fixture
def plugin(containerd: Containerd, node: dict[str, Path]) -> Iterator[subprocess.Popen[bytes]]:
    with running_plugin(containerd.nri_socket, node["log"], node["config"]) as proc:
        yield proc


def _bundle_config(containerd: Containerd, cid: str) -> dict:  # type: ignore[type-arg]
    p = Path(containerd.info["state_dir"]) / "io.containerd.runtime.v2.task" / "k8s.io" / cid / "config.json"
    return json.loads(p.read_text())


def test_managed_container_gets_criu_config_hooks_and_record(containerd: Containerd, node: dict[str, Path],
                                                             plugin: subprocess.Popen[bytes],
                                                             tmp_path: Path) -> None:
    with containerd.pod(annotations={"gpucr.io/checkpoint": "enabled", "gpucr.io/file-locks": "true"}) as (c, pod_id,
                                                                                                          cfg):
        cid = containerd.run_container(c, pod_id, cfg, "managed", SLEEP)
        spec = _bundle_config(containerd, cid)
        conf = Path(spec["annotations"]["org.criu.config"])
        assert conf.parent == node["criu"]
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        text = conf.read_text()
        assert "ghost-limit 2M" in text and "force-irmap" in text and "file-locks" in text
        assert text.index("ghost-limit 2M") < text.index("force-irmap")  # the node's options first, kept
        assert [h["args"][1] for h in spec["hooks"]["createRuntime"]] == ["create-runtime"]
        # the createRuntime hook recorded the container's pid and cgroup for the CRIU front
        _, info = c.container_status(cid, verbose=True)
        rec = load_record(node["state"], cid)
        assert rec.managed and rec.pid == info["info"]["pid"] and cid in rec.cgroup
        assert rec.pod_name == cfg.metadata.name and rec.criu_config == str(conf)
        # runc hands that file to CRIU on a checkpoint: CRIU's log shows it parsed it
        with TaskClient(containerd.address) as t:
            t.checkpoint(cid, tmp_path / "img", work_path=tmp_path / "work")
        assert str(conf) in (tmp_path / "work" / "dump.log").read_text()
        c.stop_container(cid, 0)
        c.remove_container(cid)
        wait_for(lambda: not (node["state"] / "containers" / f"{cid}.json").exists(),
                 what="poststop hook / RemoveContainer to forget the container")
        assert conf.exists()  # kept: restoring one of its checkpoints reads it again


def test_unmanaged_container_is_untouched(containerd: Containerd, node: dict[str, Path],
                                          plugin: subprocess.Popen[bytes]) -> None:
    with containerd.pod() as (c, pod_id, cfg):
        cid = containerd.run_container(c, pod_id, cfg, "plain", SLEEP)
        spec = _bundle_config(containerd, cid)
        assert "org.criu.config" not in spec["annotations"]
        assert "createRuntime" not in spec.get("hooks", {})
        assert not (node["state"] / "containers" / f"{cid}.json").exists()


def test_bad_annotation_fails_creation_naming_it(containerd: Containerd, node: dict[str, Path],
                                                 plugin: subprocess.Popen[bytes]) -> None:
    with containerd.pod(annotations={"gpucr.io/checkpoint": "yes"}) as (c, pod_id, cfg):
        with pytest.raises(CriError) as ei:
            containerd.run_container(c, pod_id, cfg, "bad", SLEEP)
        msg = str(ei.value)
        assert "gpucr.io/checkpoint='yes' is invalid" in msg and '"enabled" or "disabled"' in msg
        assert c.list_containers(pod_id) == []
    assert plugin.poll() is None  # the plugin stays up and connected

"""The plugin's half of gpucr.io/restore-from on real files: refusals leave nothing behind; a ticket for the wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest

from nri_plugin.ckpt.layout import CheckpointDir, Metadata
from nri_plugin.ckpt.restore_source import RestoreSourceError
from nri_plugin.handlers import nri_restore
from nri_plugin.policy import ContainerView, MountView, NodeConfig, decide


def _node(tmp_path: Path) -> NodeConfig:
    root = tmp_path / "ckpts"
    d = root / "ck" / "images"
    d.mkdir(parents=True, mode=0o700)
    (d / "descriptors.json").write_text("[]")
    CheckpointDir(root / "ck").finalize(Metadata(extra={"mounts": {"/data": "/old"}}))
    return NodeConfig(state_dir=tmp_path / "state", checkpoint_root=root)


def _view(ann: dict[str, str], pod_ann: dict[str, str] | None = None) -> ContainerView:
    return ContainerView("cid1", "web", pod_name="p", pod_namespace="ns", annotations=ann,
                         pod_annotations=pod_ann or {}, mounts=[MountView("/data", "bind", "/new")])


def test_prepare_tickets_and_finish_cleans(tmp_path: Path) -> None:
    node = _node(tmp_path)
    v = _view({"gpucr.io/restore-from": "ck"})
    plan = nri_restore.prepare(v, decide(v, node), node)
    assert plan.volumes == (("/data", "/old", "/new"),)
    t = nri_restore.load_ticket(node.state_dir, "cid1")
    assert t is not None and Path(t.images, "descriptors.json").exists() and Path(t.lock).exists()
    assert nri_restore.finish(node, "cid1")
    assert nri_restore.load_ticket(node.state_dir, "cid1") is None and not Path(t.lock).exists()
    assert not Path(t.images).parent.exists()


def test_pod_level_restore_from_is_refused(tmp_path: Path) -> None:
    node = _node(tmp_path)
    v = _view({}, {"gpucr.io/restore-from": "ck"})
    with pytest.raises(RestoreSourceError, match="container web in pod ns/p: .* set it on the container"):
        nri_restore.prepare(v, decide(v, node), node)
    assert not (node.state_dir / "restore").exists()

"""The plugin's half of gpucr.io/restore-from on real files: refusals leave nothing behind; a ticket for the wrapper."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu.binary import cli_version
from nri_plugin.ckpt.layout import CheckpointDir, Metadata
from nri_plugin.ckpt.restore_source import RestoreSourceError
from nri_plugin.handlers import nri_restore
from nri_plugin.policy import ContainerView, MountView, NodeConfig, decide
from tests.testenv import CRIU


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
    """The plugin checks, locks and tickets; it stages nothing (the runc wrapper does, outside the NRI call)."""
    node = _node(tmp_path)
    v = _view({"gpucr.io/restore-from": "ck"})
    plan = nri_restore.prepare(v, decide(v, node), node)
    assert plan.volumes == (("/data", "/old", "/new"),)
    t = nri_restore.load_ticket(node.state_dir, "cid1")
    assert t is not None and t.state == nri_restore.READY and Path(t.lock).exists()
    assert (t.path, t.kind) == (str(node.checkpoint_root / "ck"), "images")
    assert not nri_restore.staging_area(node, "cid1").exists()
    assert nri_restore.finish(node, "cid1")
    assert nri_restore.load_ticket(node.state_dir, "cid1") is None and not Path(t.lock).exists()


def test_prepare_does_not_hash(tmp_path: Path) -> None:
    """A changed byte (same size) with its sealing time put back passes CreateContainer: the digests are the
    wrapper's, at runc create; with a new modification time it is refused there at once."""
    node = _node(tmp_path)
    img = node.checkpoint_root / "ck" / "images" / "descriptors.json"
    sealed = img.stat().st_mtime_ns
    img.write_text("{}")  # same length as "[]"
    os.utime(img, ns=(sealed + 10**9, sealed + 10**9))
    v = _view({"gpucr.io/restore-from": "ck"})
    with pytest.raises(RestoreSourceError, match="images/descriptors.json was modified after the checkpoint was sealed"):
        nri_restore.prepare(v, decide(v, node), node)
    assert nri_restore.finish(node, "cid1")
    os.utime(img, ns=(sealed, sealed))
    nri_restore.prepare(v, decide(v, node), node)
    assert nri_restore.finish(node, "cid1")


def test_refusal_leaves_a_refused_ticket_and_no_lock(tmp_path: Path) -> None:
    """A refusal is also written down for the wrapper (should containerd drop the answer and create anyway)."""
    node = _node(tmp_path)
    v = _view({"gpucr.io/restore-from": "nope"})
    with pytest.raises(RestoreSourceError, match="no checkpoint 'nope'") as ei:
        nri_restore.prepare(v, decide(v, node), node)
    t = nri_restore.load_ticket(node.state_dir, "cid1")
    assert t is not None and t.state == nri_restore.REFUSED and t.error == str(ei.value) and not t.lock
    assert not list((node.state_dir / "restore-locks").glob("*")) if (node.state_dir / "restore-locks").exists() \
        else True
    assert nri_restore.finish(node, "cid1") and nri_restore.load_ticket(node.state_dir, "cid1") is None


def test_pending_ticket_is_written_before_the_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _node(tmp_path)
    seen: list[str] = []
    real = nri_restore.open_source

    def spy(*a: object, **kw: object) -> object:
        t = nri_restore.load_ticket(node.state_dir, "cid1")
        seen.append(t.state if t else "none")
        return real(*a, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(nri_restore, "open_source", spy)
    v = _view({"gpucr.io/restore-from": "ck"})
    nri_restore.prepare(v, decide(v, node), node)
    assert seen == [nri_restore.PENDING]
    nri_restore.finish(node, "cid1")


def test_pod_level_restore_from_is_refused(tmp_path: Path) -> None:
    node = _node(tmp_path)
    v = _view({}, {"gpucr.io/restore-from": "ck"})
    with pytest.raises(RestoreSourceError, match="container web in pod ns/p: .* set it on the container"):
        nri_restore.prepare(v, decide(v, node), node)
    t = nri_restore.load_ticket(node.state_dir, "cid1")
    assert t is not None and t.state == nri_restore.REFUSED and not t.lock


def _claim(node: NodeConfig, **versions: str) -> None:
    """The checkpoint's gpucr.json made to claim other CRIU/kernel versions (gpucr.json is not in its manifest)."""
    meta = node.checkpoint_root / "ck" / "gpucr.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), **versions}))


def test_newer_criu_or_kernel_is_refused_naming_both(tmp_path: Path) -> None:
    """The node's CRIU (criu_path: the rig's, asked with `criu --version`) and kernel against the checkpoint's."""
    node = replace(_node(tmp_path), criu_path=str(CRIU))
    here = cli_version(str(CRIU))
    v = _view({"gpucr.io/restore-from": "ck"})
    _claim(node, criu_version="99.0", kernel_release="99.0.0-1-amd64")
    with pytest.raises(RestoreSourceError) as ei:
        nri_restore.prepare(v, decide(v, node), node)
    msg = str(ei.value)
    assert f"dumped by CRIU 99.0 and this node's CRIU ({CRIU}) is {here}, older: install gpucr-criu" in msg, msg
    assert f"dumped on kernel 99.0.0-1-amd64 and this node runs kernel {os.uname().release}, older: restore on a " \
           "node with kernel >= 99.0, or set restore_allow_older_kernel = true" in msg, msg
    assert msg.startswith("container web in pod ns/p: cannot restore from checkpoint 'ck'"), msg
    t = nri_restore.load_ticket(node.state_dir, "cid1")
    assert t is not None and t.state == nri_restore.REFUSED and not t.lock
    assert nri_restore.finish(node, "cid1")
    allow = replace(node, restore_allow_older_kernel=True)
    with pytest.raises(RestoreSourceError, match="CRIU 99.0") as ei:  # the node accepts the kernel, not the CRIU
        nri_restore.prepare(v, decide(v, allow), allow)
    assert "kernel" not in str(ei.value)
    assert nri_restore.finish(allow, "cid1")
    _claim(node, criu_version=here)
    assert nri_restore.prepare(v, decide(v, allow), allow).problems == ()
    assert nri_restore.load_ticket(node.state_dir, "cid1").state == nri_restore.READY  # type: ignore[union-attr]
    assert nri_restore.finish(allow, "cid1")


def test_node_criu_that_cannot_run_is_a_clear_refusal(tmp_path: Path) -> None:
    node = replace(_node(tmp_path), criu_path=str(tmp_path / "no-criu"))
    v = _view({"gpucr.io/restore-from": "ck"})
    nri_restore.prepare(v, decide(v, node), node)  # no CRIU version recorded: the node's CRIU is not asked
    assert nri_restore.finish(node, "cid1")
    _claim(node, criu_version="4.1")
    with pytest.raises(RestoreSourceError, match=r"dumped by CRIU 4.1 and this node's CRIU version is unknown: "
                                                 rf"cannot run criu '{tmp_path}/no-criu'.*set criu_path"):
        nri_restore.prepare(v, decide(v, node), node)
    assert nri_restore.finish(node, "cid1")

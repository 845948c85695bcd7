"""Resolving, checking, locking and staging a checkpoint named by gpucr.io/restore-from (real files, no mocks)."""

from __future__ import annotations

import json

import io
import os
import tarfile
from pathlib import Path

import pytest

from nri_plugin.ckpt import marker
from nri_plugin.ckpt.layout import CheckpointDir, Metadata
from nri_plugin.ckpt.restore_source import (
    RestoreSourceError, acquire_lock, open_source, release_lock, resolve, stage, unstage,
)


def _images_ckpt(root: Path, name: str, *, seal: bool = True, cuda: bool = True) -> Path:
    d = root / name
    (d / "images").mkdir(parents=True)
    (d / "images" / "descriptors.json").write_text('["/dev/null","pipe:[1]","pipe:[2]"]')
    (d / "images" / "pages-1.img").write_bytes(os.urandom(4096))
    if cuda:
        marker.write(str(d / "images"), marker.CudaMarker("old", True, 7, [{"pid": 7, "gpus": {"GPU-a": 1}}],
                                                          {"GPU-a": "H200"}))
    if seal:
        CheckpointDir(d).finalize(Metadata(container_id="old", extra={"mounts": {"/data": "/old/data"}}))
    return d


def _archive_ckpt(root: Path, name: str, extra: tuple[tuple[str, bytes], ...] = ()) -> Path:
    d = root / name
    d.mkdir(parents=True)
    with tarfile.open(d / "checkpoint.tar", "w") as t:
        for n, body in (("checkpoint/descriptors.json", b"[]"), ("checkpoint/pages-1.img", b"x" * 100),
                        ("spec.dump", b"{}"), *extra):
            info = tarfile.TarInfo(n)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    CheckpointDir(d).finalize(Metadata())
    return d


def test_resolve_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "out").mkdir()
    (root / "evil").symlink_to(tmp_path / "out")
    (root / "inside").symlink_to(root / "real")
    (root / "real").mkdir()
    with pytest.raises(RestoreSourceError, match=r"outside the checkpoint root .*evil is a symlink to"):
        resolve(root, "evil")
    with pytest.raises(RestoreSourceError, match="not a plain name"):
        resolve(root, "../out")
    with pytest.raises(RestoreSourceError, match="no checkpoint 'nope' under the checkpoint root .*real"):
        resolve(root, "nope")
    assert resolve(root, "inside") == (root / "real").resolve()  # a link that stays inside is fine
    with pytest.raises(RestoreSourceError, match="checkpoint root .* does not exist"):
        resolve(tmp_path / "missing", "x")


def test_open_images_checkpoint(tmp_path: Path) -> None:
    _images_ckpt(tmp_path, "ck")
    s = open_source(tmp_path, "ck")
    assert s.kind == "images" and s.marker is not None and s.marker.gpus == {"GPU-a": "H200"}
    assert s.mounts == {"/data": "/old/data"}


def test_open_refuses_unsealed_tampered_and_truncated(tmp_path: Path) -> None:
    _images_ckpt(tmp_path, "plain", seal=False)
    with pytest.raises(RestoreSourceError, match=r"has no gpucr metadata \(gpucr.json\)"):
        open_source(tmp_path, "plain")
    d = _images_ckpt(tmp_path, "t")
    b = bytearray((d / "images/pages-1.img").read_bytes())
    b[5] ^= 1
    (d / "images/pages-1.img").write_bytes(bytes(b))
    with pytest.raises(RestoreSourceError, match="pages-1.img does not match its sha256"):
        open_source(tmp_path, "t")
    d = _images_ckpt(tmp_path, "u")
    os.truncate(d / "images/pages-1.img", 10)
    with pytest.raises(RestoreSourceError, match="truncated or changed"):
        open_source(tmp_path, "u")


def test_open_refuses_a_checkpoint_of_processes(tmp_path: Path) -> None:
    d = tmp_path / "direct"
    (d / "images").mkdir(parents=True)
    (d / "images" / "inventory.img").write_bytes(b"x")
    CheckpointDir(d).finalize(Metadata())
    with pytest.raises(RestoreSourceError, match="a `gpucr checkpoint --pid` of processes is restored with `gpucr "
                                                 "restore`, not into a container"):
        open_source(tmp_path, "direct")


def test_open_takes_a_direct_container_checkpoint(tmp_path: Path) -> None:
    """`gpucr checkpoint CONTAINER` (kind container: runc's descriptors.json and the CUDA marker in images/) is
    named like a runtime's; one made before gpucr wrote descriptors.json is refused, naming `gpucr restore`."""
    d = _images_ckpt(tmp_path, "direct", seal=False)
    CheckpointDir(d).finalize(Metadata(container_id="old", extra={"kind": "container", "container": {"id": "old"},
                                                                  "mounts": {"/data": "/old/data"}}))
    src = open_source(tmp_path, "direct")
    assert src.kind == "images" and src.marker is not None and src.mounts == {"/data": "/old/data"}
    old = tmp_path / "old-direct"
    (old / "images").mkdir(parents=True)
    (old / "images" / "pages-1.img").write_bytes(b"x")
    CheckpointDir(old).finalize(Metadata(container_id="c0", extra={"container": {"id": "c0"}}))
    with pytest.raises(RestoreSourceError, match="direct checkpoint of container c0 made by a gpucr that wrote no "
                                                 "runc descriptors.json: restore it with `gpucr restore"):
        open_source(tmp_path, "old-direct")


def test_lock_is_exclusive_while_the_owner_lives(tmp_path: Path) -> None:
    _images_ckpt(tmp_path, "ck")
    s = open_source(tmp_path, "ck")
    live = {"a"}
    lock = acquire_lock(tmp_path / "locks", s, "a", live.__contains__)
    with pytest.raises(RestoreSourceError, match="being restored by container a now"):
        acquire_lock(tmp_path / "locks", s, "b", live.__contains__)
    live.clear()  # a is gone: its lock is stale and taken over
    lock2 = acquire_lock(tmp_path / "locks", s, "b", live.__contains__)
    release_lock(lock2, "a")  # not a's any more
    assert lock2.exists()
    release_lock(lock2, "b")
    assert not lock.exists()


def test_stage_links_images_and_extracts_archives(tmp_path: Path) -> None:
    d = _images_ckpt(tmp_path, "ck")
    st = stage(open_source(tmp_path, "ck"), tmp_path, "cid1")
    images, work = st.images, st.work
    assert st.rootfs_diff is None and st.deleted == ()
    assert (images / "pages-1.img").read_bytes() == (d / "images/pages-1.img").read_bytes()
    assert work.is_dir() and oct(images.stat().st_mode & 0o777) == "0o700"
    (images / "stats-restore").write_text("criu writes here")  # not into the checkpoint
    assert not (d / "images/stats-restore").exists()
    _archive_ckpt(tmp_path, "cri", (("rootfs-diff.tar", b"diff"), ("deleted.files", b'["/etc/motd"]')))
    st = stage(open_source(tmp_path, "cri"), tmp_path, "cid2")
    assert sorted(p.name for p in st.images.iterdir()) == ["descriptors.json", "pages-1.img"]
    assert st.rootfs_diff is not None and st.rootfs_diff.read_bytes() == b"diff" and st.deleted == ("/etc/motd",)
    unstage(tmp_path, "cid1")
    unstage(tmp_path, "cid2")
    assert not any((tmp_path / ".restore").iterdir())


def test_stage_refuses_an_archive_escaping_its_checkpoint(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    with tarfile.open(d / "checkpoint.tar", "w") as t:
        for n in ("checkpoint/descriptors.json", "checkpoint/../../etc/x"):
            info = tarfile.TarInfo(n)
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))
    CheckpointDir(d).finalize(Metadata())
    with pytest.raises(RestoreSourceError, match="outside its checkpoint"):
        stage(open_source(tmp_path, "bad"), tmp_path, "cid")
    assert not (tmp_path / ".restore" / "cid").exists()


def test_stage_refuses_a_corrupt_deleted_files_list(tmp_path: Path) -> None:
    _archive_ckpt(tmp_path, "bad", (("deleted.files", b'{"not": "a list"}'),))
    with pytest.raises(RestoreSourceError, match="deleted.files is not a list of paths"):
        stage(open_source(tmp_path, "bad"), tmp_path, "cid")
    assert not (tmp_path / ".restore" / "cid").exists()


def test_sizes_only_open_is_what_the_plugin_runs(tmp_path: Path) -> None:
    """Without digests a changed byte is refused by its new modification time; with the sealing time put back it
    passes (the wrapper's full check catches it); a changed size does not pass."""
    d = _images_ckpt(tmp_path, "ck")
    pages = d / "images/pages-1.img"
    sealed = pages.stat().st_mtime_ns
    b = bytearray(pages.read_bytes())
    b[0] ^= 0xFF
    pages.write_bytes(bytes(b))
    os.utime(pages, ns=(sealed + 10**9, sealed + 10**9))
    with pytest.raises(RestoreSourceError, match="modified after the checkpoint was sealed"):
        open_source(tmp_path, "ck", verify_sha256=False)
    os.utime(pages, ns=(sealed, sealed))
    open_source(tmp_path, "ck", verify_sha256=False)
    with pytest.raises(RestoreSourceError, match="does not match its sha256"):
        open_source(tmp_path, "ck")
    os.truncate(d / "images/pages-1.img", 10)
    with pytest.raises(RestoreSourceError, match="truncated or changed"):
        open_source(tmp_path, "ck", verify_sha256=False)


def test_lock_of_another_node_sharing_the_root_is_never_taken_over(tmp_path: Path) -> None:
    """A restore lock written by another node (a shared checkpoint root) is not judged by this node's liveness
    check: the second restore is refused naming that node; the lock is named after the checkpoint's name, so a
    node that mounts the root at another path finds the same lock."""
    _images_ckpt(tmp_path, "ck")
    s = open_source(tmp_path, "ck")
    lock = acquire_lock(tmp_path / ".restore-locks", s, "a", lambda owner: True)
    body = json.loads(lock.read_bytes())
    lock.write_text(json.dumps({**body, "node": "othernode.0badc0de"}))
    with pytest.raises(RestoreSourceError, match="by container a on node othernode.0badc0de now"):
        acquire_lock(tmp_path / ".restore-locks", s, "b", lambda owner: False)
    assert json.loads(lock.read_bytes())["node"] == "othernode.0badc0de"
    (tmp_path / "elsewhere").symlink_to(tmp_path)  # the same root under another path
    s2 = open_source(tmp_path / "elsewhere", "ck")
    with pytest.raises(RestoreSourceError, match="on node othernode"):
        acquire_lock(tmp_path / "elsewhere" / ".restore-locks", s2, "b", lambda owner: False)


def test_one_lock_per_checkpoint_whatever_name_reaches_it(tmp_path: Path) -> None:
    """A symlinked name inside the root (a series' ``latest``) and the checkpoint's own name take the same lock."""
    _images_ckpt(tmp_path, "ck")
    (tmp_path / "latest").symlink_to("ck")
    first = acquire_lock(tmp_path / ".restore-locks", open_source(tmp_path, "latest"), "a", lambda owner: True)
    assert json.loads(first.read_bytes())["name"] == "ck"
    with pytest.raises(RestoreSourceError, match="being restored by container a now"):
        acquire_lock(tmp_path / ".restore-locks", open_source(tmp_path, "ck"), "b", lambda owner: True)

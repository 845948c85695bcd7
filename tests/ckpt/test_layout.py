"""nri_plugin.ckpt.layout: private creation, refusals (existing checkpoint, outside the root), metadata round trip
and validation, manifest verification catching truncation/corruption/missing files, host resource checks."""

from __future__ import annotations

import json
import subprocess
import os
import shutil
from pathlib import Path

import pytest

from nri_plugin import __version__
from nri_plugin.host.nodeid import node_tag
from nri_plugin.ckpt.layout import (
    FORMAT_VERSION, METADATA, CheckpointDir, GpuProcess, LayoutError, Metadata, check_disk_space,
)


def mode_of(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


def _fake_dump(cp: CheckpointDir, size: int = 100_000) -> None:
    """Files where CRIU would put them (the real CRIU path is covered in test_criu_client.py)."""
    (cp.images_dir / "inventory.img").write_bytes(b"inv")
    (cp.images_dir / "pages-1.img").write_bytes(os.urandom(size))
    (cp.images_dir / "dump.log").write_text("(00.000001) dump log\n")
    os.chmod(cp.images_dir / "pages-1.img", 0o644)  # as if CRIU made it readable: finalize must tighten


def _meta() -> Metadata:
    return Metadata(root_pid=42, container_id="c1", driver_version="580.159.04",
                    processes=[GpuProcess(42, ["GPU-1"], ["NVIDIA H200"], 1 << 30)],
                    timings={"dump_s": 1.5},
                    extra={"future_key": {"x": 1}})


def test_create_private(tmp_path: Path) -> None:
    cp = CheckpointDir.create(tmp_path / "a/b/ckpt")
    assert cp.path.is_dir() and cp.images_dir.is_dir()
    assert mode_of(cp.path) == 0o700 and mode_of(cp.images_dir) == 0o700
    existing = tmp_path / "empty"
    existing.mkdir(mode=0o755)
    assert mode_of(CheckpointDir.create(existing).path) == 0o700


def test_finalize_and_open_round_trip(tmp_path: Path) -> None:
    cp = CheckpointDir.create(tmp_path / "ckpt")
    _fake_dump(cp)
    seen: list[str] = []
    meta = cp.finalize(_meta(), progress=seen.append)
    # CRIU's log is still written after post-dump, when the checkpoint may already be sealed: never in the manifest
    assert set(meta.manifest) == {"images/inventory.img", "images/pages-1.img"} == set(seen)
    assert meta.sizes["total_bytes"] == sum(e.size for e in meta.manifest.values()) and meta.sizes["files"] == 2
    for p in [cp.metadata_file, *cp.images_dir.iterdir()]:
        assert mode_of(p) == 0o600, p
    raw = json.loads(cp.metadata_file.read_text())
    assert raw["format_version"] == FORMAT_VERSION and raw["gpucr_version"] == __version__
    assert raw["future_key"] == {"x": 1}

    (cp.images_dir / "restore.log").write_text("a restore ran here\n")  # restores add their log: still valid
    cp2, loaded = CheckpointDir.open(cp.path)
    assert loaded.processes == meta.processes and loaded.manifest == meta.manifest
    assert (loaded.container_id, loaded.root_pid, loaded.driver_version) == ("c1", 42, "580.159.04")
    assert loaded.extra == {"future_key": {"x": 1}}


def test_refuses_existing_checkpoint_unless_force(tmp_path: Path) -> None:
    cp = CheckpointDir.create(tmp_path / "ckpt")
    _fake_dump(cp)
    with pytest.raises(LayoutError, match="holds CRIU images but no valid gpucr.json"):
        CheckpointDir.create(cp.path)
    with pytest.raises(LayoutError, match="--force replaces only a complete gpucr checkpoint"):
        CheckpointDir.create(cp.path, force=True)  # an unfinished checkpoint is not gpucr's to replace
    cp.finalize(_meta())
    (cp.path / "notes.txt").write_text("user's file")
    with pytest.raises(LayoutError, match="already holds a checkpoint: .*--force"):
        CheckpointDir.create(cp.path)
    again = CheckpointDir.create(cp.path, force=True)
    assert not again.metadata_file.exists() and list(again.images_dir.iterdir()) == []
    assert (cp.path / "notes.txt").exists()  # force removes only the checkpoint


def test_refuses_non_empty_non_checkpoint(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "x").write_text("x")
    for force in (False, True):
        with pytest.raises(LayoutError, match="not empty and holds no gpucr checkpoint"):
            CheckpointDir.create(d, force=force)
    (tmp_path / "f").write_text("")
    with pytest.raises(LayoutError, match="not a directory"):
        CheckpointDir.create(tmp_path / "f")


def _outside(tmp_path: Path) -> tuple[Path, dict[str, tuple[int, bytes]]]:
    """A dir outside any checkpoint, world-readable, with a file: what must never change."""
    out = tmp_path / "outside"
    out.mkdir(mode=0o755)
    os.chmod(out, 0o755)
    (out / "keep.txt").write_text("precious\n")
    os.chmod(out / "keep.txt", 0o644)
    return out, _snapshot(out)


def _snapshot(d: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (os.lstat(p).st_mode, p.read_bytes() if p.is_file() else b"") for p in [d, *d.rglob("*")]}


def test_force_never_follows_symlinks(tmp_path: Path) -> None:
    out, before = _outside(tmp_path)
    # a non-checkpoint dir holding a link to outside: refused, with or without --force
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (d / "link").symlink_to(out)
    with pytest.raises(LayoutError, match="not empty and holds no gpucr checkpoint"):
        CheckpointDir.create(d, force=True)
    # a real checkpoint with links planted in it (a dir link as images/, a file link beside): replaced, the links
    # removed themselves, their targets untouched
    cp = CheckpointDir.create(tmp_path / "ck")
    _fake_dump(cp)
    cp.finalize(_meta())
    (cp.images_dir / "link").symlink_to(out)
    (cp.images_dir / "file-link").symlink_to(out / "keep.txt")
    CheckpointDir.create(cp.path, force=True)
    assert list(cp.images_dir.iterdir()) == []
    cp2 = CheckpointDir.create(tmp_path / "ck2")
    _fake_dump(cp2)
    cp2.finalize(_meta())
    import shutil
    shutil.rmtree(cp2.images_dir)
    cp2.images_dir.symlink_to(out)
    CheckpointDir.create(cp2.path, force=True)
    assert cp2.images_dir.is_dir() and not cp2.images_dir.is_symlink()
    # finalize refuses a linked dir instead of chmodding through it
    cp3 = CheckpointDir.create(tmp_path / "ck3")
    _fake_dump(cp3)
    (cp3.images_dir / "sub").symlink_to(out)
    with pytest.raises(LayoutError, match="is a symlink"):
        cp3.finalize(_meta())
    # the checkpoint dir itself may not be a link
    (tmp_path / "dirlink").symlink_to(out)
    with pytest.raises(LayoutError, match="is a symlink"):
        CheckpointDir.create(tmp_path / "dirlink", force=True)
    assert _snapshot(out) == before


def test_owner_and_mode_of_dirs(tmp_path: Path) -> None:
    nobody = 65534
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, nobody, nobody)
    with pytest.raises(LayoutError, match=rf"checkpoint dir {other} is owned by uid {nobody}.*chown"):
        CheckpointDir.create(other)
    wide = tmp_path / "wide"
    wide.mkdir()
    os.chmod(wide, 0o777)
    with pytest.raises(LayoutError, match=r"group- or world-writable \(mode 0777\).*chmod go-w"):
        CheckpointDir.create(wide)
    with pytest.raises(LayoutError, match="world-writable"):
        CheckpointDir.create_empty(wide)
    assert mode_of(wide) == 0o777 and list(wide.iterdir()) == []  # refused: nothing touched
    # restore: the dir, images/ and gpucr.json must be ours and not writable by others
    cp = CheckpointDir.create(tmp_path / "ck")
    _fake_dump(cp)
    cp.finalize(_meta())
    for p in (cp.path, cp.images_dir, cp.metadata_file):
        os.chown(p, nobody, nobody)
        with pytest.raises(LayoutError, match=f"{p} is owned by uid {nobody}"):
            CheckpointDir.open(cp.path)
        os.chown(p, 0, 0)
        os.chmod(p, 0o777 if p.is_dir() else 0o666)
        with pytest.raises(LayoutError, match=f"{p} is group- or world-writable"):
            CheckpointDir.open(cp.path)
        os.chmod(p, 0o700 if p.is_dir() else 0o600)
    CheckpointDir.open(cp.path)


def test_created_parents_are_private(tmp_path: Path) -> None:
    os.umask(0o022)
    CheckpointDir.create(tmp_path / "a/b/c")
    assert [mode_of(tmp_path / p) for p in ("a", "a/b", "a/b/c", "a/b/c/images")] == [0o700] * 4
    assert CheckpointDir.create_empty(tmp_path / "e/f") == tmp_path / "e/f"
    assert mode_of(tmp_path / "e") == mode_of(tmp_path / "e/f") == 0o700
    (tmp_path / "e/f/x").write_text("")
    with pytest.raises(LayoutError, match="not an empty directory"):
        CheckpointDir.create_empty(tmp_path / "e/f")


def test_root_confinement(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    CheckpointDir.create(root / "ok", root=root)
    with pytest.raises(LayoutError, match="outside the configured checkpoint root"):
        CheckpointDir.create(tmp_path / "elsewhere", root=root)
    with pytest.raises(LayoutError, match="contains '..'"):
        CheckpointDir.create(root / ".." / "escape", root=root)
    with pytest.raises(LayoutError, match="contains '..'"):
        CheckpointDir.create(root / "ok" / ".." / "ok2", root=root)
    with pytest.raises(LayoutError, match="root itself"):
        CheckpointDir.create(root, root=root)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(LayoutError, match="really"):
        CheckpointDir.create(root / "link" / "x", root=root)
    assert not (tmp_path / "x").exists() and not (tmp_path / "escape").exists()
    outside = CheckpointDir.create(tmp_path / "out")
    _fake_dump(outside)
    outside.finalize(_meta())
    with pytest.raises(LayoutError, match="outside the configured checkpoint root"):
        CheckpointDir.open(outside.path, root=root)


@pytest.fixture
def done(tmp_path: Path) -> CheckpointDir:
    cp = CheckpointDir.create(tmp_path / "ckpt")
    _fake_dump(cp)
    cp.finalize(_meta())
    return cp


def test_truncated_file_detected(done: CheckpointDir) -> None:
    pages = done.images_dir / "pages-1.img"
    with open(pages, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(LayoutError, match=r"corrupt: images/pages-1.img has 1000 bytes, the manifest says 100000"):
        CheckpointDir.open(done.path)


def test_flipped_byte_refused_by_its_time_then_by_full_verify(done: CheckpointDir) -> None:
    """A byte changed after sealing, size kept: the quick check (sizes and sealing times) refuses it by its new
    modification time; with that time put back only the full check (sha256) can tell, and does."""
    pages = done.images_dir / "pages-1.img"
    sealed = pages.stat().st_mtime_ns
    data = bytearray(pages.read_bytes())
    data[500] ^= 0xFF
    pages.write_bytes(bytes(data))
    os.utime(pages, ns=(sealed + 10**9, sealed + 10**9))  # a coarse clock could keep the time: make it differ
    with pytest.raises(LayoutError, match="images/pages-1.img was modified after the checkpoint was sealed"):
        CheckpointDir.open(done.path, verify=False)
    with pytest.raises(LayoutError, match="images/pages-1.img does not match its sha256"):
        CheckpointDir.open(done.path)
    os.utime(pages, ns=(sealed, sealed))
    CheckpointDir.open(done.path, verify=False)  # sizes and times only: passes
    with pytest.raises(LayoutError, match="images/pages-1.img does not match its sha256"):
        CheckpointDir.open(done.path)


def test_sealing_times_recorded_and_a_copy_that_keeps_them_passes(done: CheckpointDir, tmp_path: Path) -> None:
    _, meta = CheckpointDir.open(done.path)
    assert all(e.mtime_ns == (done.path / n).stat().st_mtime_ns for n, e in meta.manifest.items())
    kept = tmp_path / "kept"
    shutil.copytree(done.path, kept)  # copy2: times kept
    CheckpointDir.open(kept, verify=False)
    plain = tmp_path / "plain"
    shutil.copytree(done.path, plain, copy_function=shutil.copyfile)
    for q in plain.rglob("*"):
        if q.is_file() and q.name != "gpucr.json":
            os.utime(q, ns=(1, 1))
    with pytest.raises(LayoutError, match="was modified after the checkpoint was sealed.*cp -a, rsync -a"):
        CheckpointDir.open(plain, verify=False)
    cp = CheckpointDir(plain)
    cp.verify(meta, full=True)  # the content is the same: the full check passes, then the times can be put back
    cp.stamp_times(meta)
    CheckpointDir.open(plain, verify=False)


def test_missing_file_and_incomplete_checkpoint(done: CheckpointDir) -> None:
    (done.images_dir / "inventory.img").unlink()
    with pytest.raises(LayoutError, match="incomplete: images/inventory.img is missing"):
        CheckpointDir.open(done.path)
    done.metadata_file.unlink()
    (done.images_dir / "inventory.img").write_bytes(b"inv")
    with pytest.raises(LayoutError, match="holds no gpucr.json .*did not finish"):
        CheckpointDir.open(done.path)
    with pytest.raises(LayoutError, match="does not exist"):
        CheckpointDir.open(done.path / "nope")


@pytest.mark.parametrize("mutate, match", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: "[1, 2]", "does not hold a JSON object"),
    (lambda d: json.dumps({**d, "format_version": 99}), "format version 99; this gpucr .* reads version 1"),
    (lambda d: json.dumps({**d, "root_pid": "42"}), "field 'root_pid' is '42'"),
    (lambda d: json.dumps({**d, "created_at": True}), "field 'created_at'"),
    (lambda d: json.dumps({**d, "criu_version": 4.2}), "field 'criu_version' is 4.2"),
    (lambda d: json.dumps({**d, "kernel_release": ["6.1"]}), "field 'kernel_release'"),
    (lambda d: json.dumps({**d, "manifest": {"images/x": {"size": 1}}}), "malformed manifest"),
    (lambda d: json.dumps({**d, "manifest": {}}), "lists no files"),
    (lambda d: json.dumps({**d, "manifest": {"../../etc/passwd": {"size": 1, "sha256": "0"}}}), "outside the"),
])
def test_bad_metadata(done: CheckpointDir, mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    d = json.loads(done.metadata_file.read_text())
    done.metadata_file.write_text(mutate(d))
    with pytest.raises(LayoutError, match=match):
        CheckpointDir.open(done.path)


def test_disk_space(tmp_path: Path) -> None:
    check_disk_space(tmp_path, 1)
    with pytest.raises(LayoutError, match=r"not enough disk space in .* for the checkpoint images: need 1048576.00 GiB \(1125899906842624 bytes\), .* free"):
        check_disk_space(tmp_path, 1 << 50)


@pytest.mark.criu
def test_real_dump_finalized_and_verified(criu_binary: str, workload, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from nri_plugin.ckpt.criu import Criu, DumpOptions, RestoreOptions

    cp = CheckpointDir.create(tmp_path / "ckpt")
    criu = Criu(criu_binary)
    res = criu.dump(DumpOptions(pid=workload.root, images_dir=cp.images_dir))
    meta = cp.finalize(Metadata(root_pid=workload.root, timings={"dump_s": res.duration_s}))
    assert "images/inventory.img" in meta.manifest and "images/dump.log" not in meta.manifest
    assert any(n.startswith("images/pages-") for n in meta.manifest)
    for p in cp.images_dir.iterdir():
        assert mode_of(p) == 0o600, p
    workload.wait_gone()
    opened, loaded = CheckpointDir.open(cp.path)
    r = criu.restore(RestoreOptions(images_dir=opened.images_dir))
    assert r.pid == loaded.root_pid
    workload.advancing()
    CheckpointDir.open(cp.path)  # restore.log appeared; the checkpoint still verifies


def test_large_files_hash_as_a_parallel_tree_and_detect_corruption(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from nri_plugin.ckpt import layout

    monkeypatch.setattr(layout, "PIECE_BYTES", 1 << 20)
    big = tmp_path / "pages-1.img"
    data = os.urandom((3 << 20) + 12345)
    big.write_bytes(data)
    pieces = [hashlib.sha256(data[i:i + (1 << 20)]).digest() for i in range(0, len(data), 1 << 20)]
    assert layout._sha256(big) == "sha256-tree-256MiB:" + hashlib.sha256(b"".join(pieces)).hexdigest()
    small = tmp_path / "small.img"
    small.write_bytes(data[:1000])
    assert layout._sha256(small) == hashlib.sha256(data[:1000]).hexdigest()  # plain sha256, as before
    flipped = bytearray(data)
    flipped[(2 << 20) + 7] ^= 1
    big.write_bytes(bytes(flipped))
    assert layout._sha256(big) != "sha256-tree-256MiB:" + hashlib.sha256(b"".join(pieces)).hexdigest()


# --- staged checkpoints: valid only by the final rename -------------------------------------------------------------


def _staged(path: Path, **kw: object) -> CheckpointDir:
    cp = CheckpointDir.stage(path, **kw)  # type: ignore[arg-type]
    _fake_dump(cp)
    cp.finalize(_meta())
    return cp


def test_staged_checkpoint_is_valid_only_once_committed(tmp_path: Path) -> None:
    final = tmp_path / "ck"
    cp = _staged(final)
    assert cp.path == tmp_path / f".ck.gpucr-tmp-{node_tag()}-{os.getpid()}" and not final.exists()
    assert mode_of(cp.path) == 0o700 and cp.metadata_file.exists()
    # a crash here leaves only the temporary name: restore refuses it, and finds nothing at the final one
    with pytest.raises(LayoutError, match=f"temporary dir of a checkpoint that never finished \\(gpucr pid "
                                          f"{os.getpid()}"):
        CheckpointDir.open(cp.path)
    with pytest.raises(LayoutError, match="does not exist"):
        CheckpointDir.open(final)
    cp.commit()
    assert cp.path == final and not list(tmp_path.glob(".ck.*"))
    CheckpointDir.open(final)
    assert all(mode_of(p) == (0o700 if p.is_dir() else 0o600) for p in [final, *final.rglob("*")])


def test_discard_leaves_nothing(tmp_path: Path) -> None:
    cp = _staged(tmp_path / "ck")
    cp.discard()
    assert list(tmp_path.iterdir()) == []


def test_force_keeps_the_old_checkpoint_until_the_new_one_stands(tmp_path: Path) -> None:
    final = tmp_path / "ck"
    old = _staged(final)
    old.commit()
    old.settle()
    before = (final / METADATA).read_text()
    with pytest.raises(LayoutError, match="already holds a checkpoint"):
        CheckpointDir.stage(final)
    new = _staged(final, force=True)
    assert (final / METADATA).read_text() == before  # untouched while the new one is written
    CheckpointDir.open(final)
    new.commit()
    assert (final / METADATA).read_text() != before
    CheckpointDir.open(final)
    assert new.replaced is not None and new.replaced.exists()  # the old one, aside until the new one is reported
    # withdrawn (the dump failed after all): the old checkpoint is back in place, whole
    new.discard()
    assert (final / METADATA).read_text() == before and not list(tmp_path.glob(".ck.*"))
    CheckpointDir.open(final)
    again = _staged(final, force=True)
    again.commit()
    again.settle()
    assert not list(tmp_path.glob(".ck.*"))
    CheckpointDir.open(final)


def test_stage_refuses_what_it_would_not_replace(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    (d / "precious").write_text("x")
    with pytest.raises(LayoutError, match="not empty and holds no gpucr checkpoint"):
        CheckpointDir.stage(d, force=True)
    assert (d / "precious").read_text() == "x" and not list(tmp_path.glob(".data.*"))
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    cp = _staged(empty)
    cp.commit()  # an empty dir is replaced by the rename
    assert mode_of(empty) == 0o700
    CheckpointDir.open(empty)


def test_stage_applies_the_rules_of_create_to_the_real_target(tmp_path: Path) -> None:
    """stage() judges DIR itself (never its temporary sibling) by create()'s rules: inside the root and no '..', never
    a symlink, ours and not writable by others, --force only over a complete gpucr checkpoint; missing parents 0700;
    the staged dir lies beside DIR, inside the same root."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    with pytest.raises(LayoutError, match="outside the configured checkpoint root"):
        CheckpointDir.stage(tmp_path / "elsewhere", root=root)
    with pytest.raises(LayoutError, match="contains '..'"):
        CheckpointDir.stage(root / "a" / ".." / "b", root=root)
    real = root / "real"
    real.mkdir(mode=0o700)
    (root / "link").symlink_to(real)
    with pytest.raises(LayoutError, match="is a symlink"):
        CheckpointDir.stage(root / "link", root=root, force=True)
    wide = root / "wide"
    wide.mkdir()
    os.chmod(wide, 0o777)
    with pytest.raises(LayoutError, match="group- or world-writable"):
        CheckpointDir.stage(wide, root=root)
    theirs = root / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(LayoutError, match="owned by uid 65534"):
        CheckpointDir.stage(theirs, root=root)
    foreign = root / "foreign"
    (foreign / "images").mkdir(parents=True, mode=0o700)
    (foreign / "images" / "inventory.img").write_bytes(b"x")
    (foreign / METADATA).write_text("not json")
    with pytest.raises(LayoutError, match="holds CRIU images but no valid gpucr.json"):
        CheckpointDir.stage(foreign, root=root, force=True)
    assert not list(root.glob(".*.gpucr-*"))  # every refusal touched nothing
    cp = _staged(root / "x" / "y" / "ck", root=root)
    assert cp.path.parent == root / "x" / "y" and cp.path.name.startswith(".ck.gpucr-tmp-")
    assert mode_of(root / "x") == mode_of(root / "x" / "y") == 0o700
    cp.commit()
    CheckpointDir.open(root / "x" / "y" / "ck", root=root)


def test_fsync_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images and dirs fsynced, then gpucr.json written and fsynced, the dir fsynced, then the rename, then the
    parent fsynced (the real calls run; they are only recorded)."""
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(a: object, b: object) -> None:
        real_rename(a, b)  # type: ignore[arg-type]
        events.append(("rename", str(b)))

    cp = CheckpointDir.stage(tmp_path / "ck")
    _fake_dump(cp)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    cp.finalize(_meta())
    cp.commit()
    names = [(k, p.replace(str(tmp_path), "")) for k, p in events]
    staged = f"/.ck.gpucr-tmp-{node_tag()}-{os.getpid()}"
    meta_at = names.index(("fsync", f"{staged}/.gpucr.json.tmp"))
    assert {("fsync", f"{staged}/images/{n}") for n in ("inventory.img", "pages-1.img", "dump.log")} \
        <= set(names[:meta_at])
    assert ("fsync", f"{staged}/images") in names[:meta_at] and ("fsync", staged) in names[:meta_at]
    assert names[meta_at + 1:] == [("fsync", staged), ("rename", "/ck"), ("fsync", "")]


def test_leftovers_of_a_killed_gpucr_are_tidied_by_the_next_checkpoint(tmp_path: Path) -> None:
    """A temporary dir of a dead gpucr is removed; a checkpoint it moved aside (killed between the two renames of a
    --force) goes back in place. A live owner's dirs are left alone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    final = tmp_path / "ck"
    old = _staged(final)
    old.commit()
    old.settle()
    before = (final / METADATA).read_text()
    os.rename(final, tmp_path / f".ck.gpucr-old-{node_tag()}-{dead.pid}")
    (tmp_path / f".ck.gpucr-tmp-{dead.pid}").mkdir()  # the name before node tags: this node's
    live = tmp_path / f".ck.gpucr-tmp-{node_tag()}-{os.getppid()}"
    live.mkdir()
    other = tmp_path / f".ck.gpucr-tmp-othernode.0badc0de-{dead.pid}"  # another node sharing the root: its pid
    other.mkdir()                                                      # means nothing here, never tidied
    cp = CheckpointDir.stage(final, force=True)
    assert (final / METADATA).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck", cp.path.name, live.name, other.name])
    cp.discard()


def test_criu_and_kernel_versions_round_trip_and_old_metadata_lacks_them() -> None:
    m = Metadata.from_json(Metadata(criu_version="4.2.1", kernel_release="6.1.0-28-amd64").to_json())
    assert (m.criu_version, m.kernel_release) == ("4.2.1", "6.1.0-28-amd64") and "criu_version" not in m.extra
    old = {k: v for k, v in json.loads(_meta().to_json()).items() if k not in ("criu_version", "kernel_release")}
    m = Metadata.from_json(json.dumps(old))  # sealed before gpucr recorded them
    assert m.criu_version is None and m.kernel_release is None
    assert Metadata.from_json(json.dumps({**old, "criu_version": "99.0"})).criu_version == "99.0"

"""nri_plugin.ckpt.layout: private creation, refusals (existing checkpoint, outside the root), metadata round trip
and validation, manifest verification catching truncation/corruption/missing files, host resource checks."""

from __future__ import annotations

import json
import subprocess
import os
from pathlib import Path

import pytest

from nri_plugin import __version__
from nri_plugin.ckpt.layout import (
    FORMAT_VERSION, METADATA, CheckpointDir, GpuProcess, LayoutError, Metadata, check_disk_space, check_host_memory,
    mode_of,
)


def _fake_dump(cp: CheckpointDir, size: int = 100_000) -> None:
    """Files where CRIU would put them (the real CRIU path is covered in test_criu_client.py)."""
    (cp.images_dir / "inventory.img").write_bytes(b"inv")
    (cp.images_dir / "pages-1.img").write_bytes(os.urandom(size))
    (cp.images_dir / "dump.log").write_text("(00.000001) dump log\n")
    os.chmod(cp.images_dir / "pages-1.img", 0o644)  # as if CRIU made it readable: finalize must tighten


def _meta() -> Metadata:
    return Metadata(root_pid=42, container_id="c1", spec_digest="sha256:" + "0" * 64, driver_version="580.159.04",
                    processes=[GpuProcess(42, ["GPU-1"], ["NVIDIA H200"], 1 << 30)],
                    network={"interfaces": []}, criu={"tcp_established": True}, timings={"dump_s": 1.5},
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
    assert loaded.extra == {"future_key": {"x": 1}} and loaded.network == {"interfaces": []}


def test_refuses_existing_checkpoint_unless_force(tmp_path: Path) -> None:
    cp = CheckpointDir.create(tmp_path / "ckpt")
    _fake_dump(cp)
    with pytest.raises(LayoutError, match="already holds a checkpoint: .*--force"):
        CheckpointDir.create(cp.path)
    cp.finalize(_meta())
    (cp.path / "notes.txt").write_text("user's file")
    with pytest.raises(LayoutError, match="already holds a checkpoint"):
        CheckpointDir.create(cp.path)
    again = CheckpointDir.create(cp.path, force=True)
    assert not again.metadata_file.exists() and list(again.images_dir.iterdir()) == []
    assert (cp.path / "notes.txt").exists()  # force removes only the checkpoint


def test_refuses_non_empty_non_checkpoint(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "x").write_text("x")
    with pytest.raises(LayoutError, match="not empty and holds no checkpoint"):
        CheckpointDir.create(d)
    (tmp_path / "f").write_text("")
    with pytest.raises(LayoutError, match="not a directory"):
        CheckpointDir.create(tmp_path / "f")


def test_root_confinement(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    CheckpointDir.create(root / "ok", root=root)
    with pytest.raises(LayoutError, match="outside the configured checkpoint root"):
        CheckpointDir.create(tmp_path / "elsewhere", root=root)
    with pytest.raises(LayoutError, match="outside the configured checkpoint root"):
        CheckpointDir.create(root / ".." / "escape", root=root)
    with pytest.raises(LayoutError, match="root itself"):
        CheckpointDir.create(root, root=root)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(LayoutError, match="really"):
        CheckpointDir.create(root / "link" / "x", root=root)
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


def test_flipped_byte_detected_only_by_full_verify(done: CheckpointDir) -> None:
    pages = done.images_dir / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[500] ^= 0xFF
    pages.write_bytes(bytes(data))
    CheckpointDir.open(done.path, verify=False)  # sizes only: same size passes
    with pytest.raises(LayoutError, match="images/pages-1.img does not match its sha256"):
        CheckpointDir.open(done.path)


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
    (lambda d: json.dumps({**d, "manifest": {"images/x": {"size": 1}}}), "malformed manifest"),
    (lambda d: json.dumps({**d, "manifest": {}}), "lists no files"),
    (lambda d: json.dumps({**d, "manifest": {"../../etc/passwd": {"size": 1, "sha256": "0"}}}), "outside the"),
])
def test_bad_metadata(done: CheckpointDir, mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    d = json.loads(done.metadata_file.read_text())
    done.metadata_file.write_text(mutate(d))
    with pytest.raises(LayoutError, match=match):
        CheckpointDir.open(done.path)


def test_parse_meminfo_and_memory_check(tmp_path: Path) -> None:
    text = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\nHugePages_Total:       0\n"
    f = tmp_path / "meminfo"
    f.write_text(text)
    check_host_memory(1 << 30, meminfo=f)
    with pytest.raises(LayoutError, match=r"not enough host memory for the GPU data of pid 7: need 32.00 GiB, "
                                          r"MemAvailable is 7.63 GiB; free 24.37 GiB"):
        check_host_memory(32 << 30, what="the GPU data of pid 7", meminfo=f)
    f.write_text("MemTotal: 1 kB\n")
    with pytest.raises(LayoutError, match="no MemAvailable"):
        check_host_memory(1, meminfo=f)


def test_disk_space(tmp_path: Path) -> None:
    check_disk_space(tmp_path, 1)
    with pytest.raises(LayoutError, match="not enough disk space at .* need 1048576.00 GiB"):
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
    assert cp.path == tmp_path / f".ck.gpucr-tmp-{os.getpid()}" and not final.exists()
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
    with pytest.raises(LayoutError, match="not empty and holds no checkpoint"):
        CheckpointDir.stage(d, force=True)
    assert (d / "precious").read_text() == "x" and not list(tmp_path.glob(".data.*"))
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    cp = _staged(empty)
    cp.commit()  # an empty dir is replaced by the rename
    assert mode_of(empty) == 0o700
    CheckpointDir.open(empty)


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
    staged = f"/.ck.gpucr-tmp-{os.getpid()}"
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
    os.rename(final, tmp_path / f".ck.gpucr-old-{dead.pid}")
    (tmp_path / f".ck.gpucr-tmp-{dead.pid}").mkdir()
    live = tmp_path / f".ck.gpucr-tmp-{os.getppid()}"
    live.mkdir()
    cp = CheckpointDir.stage(final, force=True)
    assert (final / METADATA).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck", cp.path.name, live.name])
    cp.discard()

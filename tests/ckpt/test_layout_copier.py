"""The image copier's preallocation (``ImageCopier.PREALLOCATE``): a destination's blocks are allocated before its
pieces are written (while following a growing dump, ahead of them: ``PREALLOCATE_AHEAD``), and the file is left no
longer than the source, or than what was queued from it, whether the copy ends, a piece fails, the dump is cancelled
or the disk is full."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from nri_plugin.ckpt import layout
from nri_plugin.ckpt.layout import CheckpointDir, LayoutError, _sha256
from nri_plugin.host import _mount

PIECE = 64 << 10


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "PIECE_BYTES", PIECE)
    monkeypatch.setattr(layout, "_IO_CHUNK", 16 << 10)
    monkeypatch.setattr(layout.ImageCopier, "POLL_S", 0.005)


def _dump(src: Path, size: int) -> bytes:
    src.mkdir()
    data = os.urandom(size)
    (src / "pages-1.img").write_bytes(data)
    (src / "pagemap-1.img").write_bytes(b"map")
    return data


def test_copy_is_exact_and_allocated(tmp_path: Path) -> None:
    data = _dump(tmp_path / "src", 5 * PIECE + 12345)
    cp = CheckpointDir.create(tmp_path / "ck")
    known = layout.ImageCopier(cp, tmp_path / "src").finish()
    out = cp.images_dir / "pages-1.img"
    assert out.read_bytes() == data and os.stat(out).st_size == len(data)
    assert known["images/pages-1.img"] == layout.FileEntry(len(data), _sha256(out))


def test_failed_piece_leaves_the_destination_no_larger_than_the_source(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A piece that cannot be read fails the copy (LayoutError); its range was allocated beforehand (the blocks are
    there though never written) and the file is exactly the source's size, not more."""
    data = _dump(tmp_path / "src", 6 * PIECE + 4096)
    real = layout._copy_piece

    def copy(sfd: int, dfd: int, direct: int | None, start: int, length: int) -> bytes:
        if start == 2 * PIECE:
            raise OSError(errno.EIO, "Input/output error")
        return real(sfd, dfd, direct, start, length)

    monkeypatch.setattr(layout, "_copy_piece", copy)
    cp = CheckpointDir.create(tmp_path / "ck")
    with pytest.raises(LayoutError, match="cannot write the images of .*Input/output error"):
        layout.ImageCopier(cp, tmp_path / "src").finish()
    st = os.stat(cp.images_dir / "pages-1.img")
    assert st.st_size == len(data)
    assert st.st_blocks * 512 >= len(data)  # piece 2 was never written: its blocks come from the preallocation


def test_cancelled_dump_leaves_only_whole_pieces(tmp_path: Path) -> None:
    """While CRIU appends, only the whole pieces below the page image's size are allocated and copied; a dump
    cancelled then leaves the destination at that boundary, below the source's size."""
    src = tmp_path / "src"
    src.mkdir()
    cp = CheckpointDir.create(tmp_path / "ck")
    copier = layout.ImageCopier(cp, src).follow()
    data = os.urandom(3 * PIECE + PIECE // 2)
    (src / "pages-1.img").write_bytes(data)
    deadline = time.monotonic() + 10
    while len(copier._files.get("pages-1.img", (0, 0, 0, [0], []))[4]) < 3:
        assert time.monotonic() < deadline, "the copier did not follow the page image"
        time.sleep(0.005)
    copier.cancel()
    assert os.stat(cp.images_dir / "pages-1.img").st_size == 3 * PIECE < len(data)
    assert (cp.images_dir / "pages-1.img").read_bytes() == data[:3 * PIECE]


def test_following_allocates_ahead_and_cuts_the_excess(tmp_path: Path) -> None:
    """While following, blocks are allocated ahead of the queued pieces (so ext4's fallocate, which waits for the
    writes in flight, runs seldom); the finished copy is the source's exact size and bytes."""
    src = tmp_path / "src"
    src.mkdir()
    cp = CheckpointDir.create(tmp_path / "ck")
    copier = layout.ImageCopier(cp, src).follow()
    data = os.urandom(4 * PIECE + 777)
    with open(src / "pages-1.img", "wb") as f:
        f.write(data[:2 * PIECE])
        f.flush()
        deadline = time.monotonic() + 10
        while copier._files.get("pages-1.img", (0, 0, 0, [0, 0], []))[3][1] <= 2 * PIECE:
            assert time.monotonic() < deadline, "the copier did not allocate ahead"
            time.sleep(0.005)
        assert os.stat(cp.images_dir / "pages-1.img").st_size == 4 * PIECE  # as far again as the image had grown
        f.write(data[2 * PIECE:])
    (src / "pagemap-1.img").write_bytes(b"map")
    known = copier.finish()
    out = cp.images_dir / "pages-1.img"
    assert out.read_bytes() == data and os.stat(out).st_size == len(data)
    assert known["images/pages-1.img"] == layout.FileEntry(len(data), _sha256(out))


def test_full_disk_is_a_layout_error_and_nothing_grows(tmp_path: Path) -> None:
    """ENOSPC from the preallocation (a 1 MiB tmpfs, really mounted: the tests run as root) is a LayoutError; the
    destination is not left larger than the source."""
    data = _dump(tmp_path / "src", 32 * PIECE)  # 2 MiB
    mnt = tmp_path / "small"
    mnt.mkdir(mode=0o700)
    _mount.mount("gpucr-test", str(mnt), "tmpfs", _mount.MS_NOSUID | _mount.MS_NODEV, "size=1m,mode=0700")
    try:
        cp = CheckpointDir.create(mnt / "ck")
        with pytest.raises(LayoutError, match="No space left on device"):
            layout.ImageCopier(cp, tmp_path / "src").finish()
        assert os.stat(cp.images_dir / "pages-1.img").st_size <= len(data)
    finally:
        _mount.umount2(str(mnt), _mount.MNT_DETACH)


def test_without_preallocation_the_copy_is_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without fallocate (EOPNOTSUPP) gets the plain copy: same bytes, same manifest."""
    monkeypatch.setattr(_mount, "fallocate", lambda fd, off, length: False)
    data = _dump(tmp_path / "src", 3 * PIECE + 100)
    cp = CheckpointDir.create(tmp_path / "ck")
    copier = layout.ImageCopier(cp, tmp_path / "src")
    known = copier.finish()
    assert not copier.PREALLOCATE
    assert (cp.images_dir / "pages-1.img").read_bytes() == data
    assert known["images/pages-1.img"].size == len(data)

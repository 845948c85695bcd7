"""A CRI checkpoint's rootfs-diff.tar and deleted.files applied to a rootfs on disk: what a container wrote comes
back, what it removed goes, and a tampered archive is refused whole before anything is written."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from nri_plugin.ckpt.rootfs_diff import RootfsDiffError, apply


def _tar(path: Path, *members: tuple[str, str, bytes | str, int]) -> Path:
    """members: (name, kind f|d|l|h|c|p, body or link target, mode)."""
    with tarfile.open(path, "w") as t:
        for name, kind, body, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.uid = info.gid = 0
            data = None
            if kind == "f":
                assert isinstance(body, bytes)
                info.size, data = len(body), io.BytesIO(body)
            else:
                info.type = {"d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE, "c": tarfile.CHRTYPE,
                             "p": tarfile.FIFOTYPE}[kind]
                if kind in "lh":
                    info.linkname = str(body)
            t.addfile(info, data)
    return path


def _rootfs(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "motd").write_text("image's")
    (r / "etc" / "old").write_text("image's")
    (r / "var" / "cache").mkdir(parents=True)
    (r / "var" / "cache" / "a").write_text("lower")
    return r


def test_writes_come_back_and_deletions_go(tmp_path: Path) -> None:
    r = _rootfs(tmp_path)
    diff = _tar(tmp_path / "d.tar", ("etc", "d", b"", 0o755), ("etc/motd", "f", b"written by the container", 0o644),
                ("root", "d", b"", 0o700), ("root/notes", "f", b"n", 0o600), ("root/link", "l", "/etc/passwd", 0o777),
                ("root/hard", "h", "root/notes", 0o600), ("etc/.wh.old", "f", b"", 0o644),
                ("var/cache/.wh..wh..opq", "f", b"", 0o644), ("var/cache/b", "f", b"upper", 0o644))
    done = apply(r, diff, ["/etc/hostname-gone", "/var/nothing/x"])
    assert (r / "etc/motd").read_text() == "written by the container"
    assert (r / "root/notes").read_text() == "n" and stat.S_IMODE((r / "root").stat().st_mode) == 0o700
    assert os.readlink(r / "root/link") == "/etc/passwd"  # kept as the container made it, never followed here
    assert os.stat(r / "root/hard").st_ino == os.stat(r / "root/notes").st_ino
    assert not (r / "etc/old").exists() and not (r / "etc/.wh.old").exists()
    assert sorted(p.name for p in (r / "var/cache").iterdir()) == ["b"]
    assert done.written == 7 and done.removed == 2


def test_deleted_files_are_removed(tmp_path: Path) -> None:
    r = _rootfs(tmp_path)
    done = apply(r, None, ["/etc/motd", "etc/old"])
    assert not (r / "etc/motd").exists() and not (r / "etc/old").exists() and done.removed == 2


@pytest.mark.parametrize("members, match", [
    ((("../escape", "f", b"x", 0o644),), "outside the container's rootfs"),
    ((("/abs", "f", b"x", 0o644),), "outside the container's rootfs"),
    ((("dev/sda", "c", b"", 0o600),), "device node 'dev/sda'"),
    ((("bin/su", "f", b"x", 0o4755),), "set-user/group-ID file 'bin/su'"),
    ((("etc/x", "h", "../../etc/shadow", 0o644),), "outside the container's rootfs"),
])
def test_tampered_archive_is_refused_before_any_write(tmp_path: Path, members: tuple, match: str) -> None:
    r = _rootfs(tmp_path)
    diff = _tar(tmp_path / "d.tar", ("etc/motd", "f", b"changed", 0o644), *members)
    with pytest.raises(RootfsDiffError, match=match):
        apply(r, diff)
    assert (r / "etc/motd").read_text() == "image's"
    assert not (tmp_path / "escape").exists()


def test_a_symlink_in_the_rootfs_is_never_followed(tmp_path: Path) -> None:
    """The image's (or the archive's own) link to a host path: writing through it is refused, the host untouched."""
    r = _rootfs(tmp_path)
    host = tmp_path / "host-etc"
    host.mkdir()
    (r / "evil").symlink_to(host)
    with pytest.raises(RootfsDiffError, match="through the symlink /evil"):
        apply(r, _tar(tmp_path / "d.tar", ("evil/passwd", "f", b"x", 0o644)))
    assert not list(host.iterdir())
    with pytest.raises(RootfsDiffError, match="through the symlink /l2"):
        apply(r, _tar(tmp_path / "e.tar", ("l2", "l", str(host), 0o777), ("l2/passwd", "f", b"x", 0o644)))
    assert not list(host.iterdir())
    with pytest.raises(RootfsDiffError, match="through the symlink /evil"):
        apply(r, None, ["/evil/x"])

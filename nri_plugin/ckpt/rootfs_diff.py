"""A CRI checkpoint's rootfs changes applied to the new container's rootfs before its restore.

containerd's CheckpointContainer stores what the container changed in its writable layer beside the CRIU images:
``rootfs-diff.tar`` (files it wrote, OCI layer style, ``.wh.`` whiteouts for removals) and ``deleted.files`` (a JSON
list of paths it removed from the image). containerd's own restore applies both to the new container's rootfs;
gpucr's restore (``gpucr.io/restore-from``) does the same in its runc wrapper at ``runc create``, when the rootfs is
mounted in the bundle and nothing runs in it yet.

The archive is input from disk, so it is applied defensively and refused whole (before anything is written) when it
holds what a container's own writes cannot explain: names leaving the rootfs (absolute or ``..``), hard links to
outside names, device nodes, set-user/group-ID files. Writing never follows a symlink already in the rootfs: each
parent is checked with ``lstat`` (a link there would point wherever its target says, e.g. the host's ``/etc``).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import GpucrError

__all__ = ["AppliedDiff", "RootfsDiffError", "apply", "check_archive"]

WHITEOUT, OPAQUE = ".wh.", ".wh..wh..opq"


class RootfsDiffError(GpucrError):
    """The checkpoint's rootfs changes are unsafe or cannot be applied."""


@dataclass(frozen=True)
class AppliedDiff:
    written: int
    removed: int


def _rel(name: str, what: str) -> PurePosixPath:
    p = PurePosixPath(name.lstrip("/") if what == "deleted.files" else name)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts == (".",):
        raise RootfsDiffError(f"{what} names {name!r}, outside the container's rootfs")
    return PurePosixPath(*[x for x in p.parts if x != "."])


def _check(t: tarfile.TarFile, diff: Path) -> list[tarfile.TarInfo]:
    """Every member judged before anything is written."""
    members = t.getmembers()
    for m in members:
        rel = _rel(m.name, str(diff))
        if m.ischr() or m.isblk():
            raise RootfsDiffError(f"{diff} holds device node {m.name!r}: a container's writes never make one")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.isfifo()):
            raise RootfsDiffError(f"{diff} holds {m.name!r} of an unknown type {m.type!r}")
        if m.mode & (stat.S_ISUID | stat.S_ISGID) and not m.isdir():
            raise RootfsDiffError(f"{diff} holds set-user/group-ID file {m.name!r} (mode {m.mode:o}): refusing it")
        if m.islnk():
            _rel(m.linkname, f"{diff} (hard link {m.name!r})")
        if rel.name.startswith(WHITEOUT) and not m.isreg():
            raise RootfsDiffError(f"{diff}: whiteout {m.name!r} is not a plain file")
    return members


def check_archive(diff: Path) -> int:
    """The members of ``diff`` judged as :func:`apply` judges them, writing nothing (``gpucr import`` refuses an
    unsafe rw layer before it becomes a checkpoint). Returns the number of members.

    Raises:
        RootfsDiffError: an unsafe member (named), or not a tar.
    """
    try:
        with tarfile.open(diff) as t:
            return len(_check(t, diff))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise RootfsDiffError(f"{diff} is not a readable tar ({exc})") from exc


def _parent(rootfs: Path, rel: PurePosixPath, create: bool) -> Path | None:
    """``rootfs/rel``'s parent dir, every component a real directory (no symlink followed); made when ``create``.
    None when a component is missing and not ``create``."""
    cur = rootfs
    for part in rel.parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(cur, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise RootfsDiffError(f"{rel} would be written through the symlink /{cur.relative_to(rootfs)} in the "
                                  "container's rootfs")
        if not stat.S_ISDIR(st.st_mode):
            raise RootfsDiffError(f"{rel}: /{cur.relative_to(rootfs)} in the container's rootfs is not a directory")
    return cur


def _remove(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
    return True


def _write(t: tarfile.TarFile, m: tarfile.TarInfo, rootfs: Path, rel: PurePosixPath) -> None:
    parent = _parent(rootfs, rel, True)
    assert parent is not None
    out = parent / rel.name
    if m.isdir():
        try:
            st = os.lstat(out)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(out)
                os.mkdir(out, 0o700)
        except FileNotFoundError:
            os.mkdir(out, 0o700)
    else:
        _remove(out)
        if m.isreg():
            src = t.extractfile(m)
            assert src is not None
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
        elif m.issym():
            os.symlink(m.linkname, out)
        elif m.islnk():
            target = _parent(rootfs, _rel(m.linkname, "hard link"), False)
            src_path = (target / PurePosixPath(m.linkname).name) if target else None
            if src_path is None or not os.path.lexists(src_path) or not stat.S_ISREG(os.lstat(src_path).st_mode):
                raise RootfsDiffError(f"hard link {m.name!r} -> {m.linkname!r}: no regular file there")
            os.link(src_path, out, follow_symlinks=False)
            return
        elif m.isfifo():
            os.mkfifo(out, 0o600)
    os.chown(out, m.uid, m.gid, follow_symlinks=False)
    if not m.issym():
        os.chmod(out, m.mode & 0o1777)
        os.utime(out, (m.mtime, m.mtime))


def apply(rootfs: Path, diff: Path | None, deleted: tuple[str, ...] | list[str] = ()) -> AppliedDiff:
    """Apply ``diff`` (rootfs-diff.tar) and remove ``deleted`` (deleted.files) in ``rootfs``.

    Raises:
        RootfsDiffError: an unsafe member (named) — refused before anything is written — or a write that failed.
    """
    written = removed = 0
    gone = [_rel(p, "deleted.files") for p in deleted]
    try:
        if diff is not None:
            with tarfile.open(diff) as t:
                members = _check(t, diff)
                for m in members:  # OCI layer order: a dir's opaque marker and whiteouts act on the lower layers
                    rel = _rel(m.name, str(diff))
                    if rel.name == OPAQUE:
                        d = _parent(rootfs, rel, True)
                        assert d is not None
                        for child in list(d.iterdir()):
                            removed += _remove(child)
                    elif rel.name.startswith(WHITEOUT):
                        d = _parent(rootfs, rel, False)
                        removed += bool(d) and _remove(d / rel.name[len(WHITEOUT):])
                for m in members:
                    rel = _rel(m.name, str(diff))
                    if not rel.name.startswith(WHITEOUT):
                        _write(t, m, rootfs, rel)
                        written += 1
        for rel in gone:
            d = _parent(rootfs, rel, False)
            removed += bool(d) and _remove(d / rel.name)
    except (OSError, tarfile.TarError) as exc:
        raise RootfsDiffError(f"applying the checkpoint's rootfs changes to {rootfs} failed: {exc}") from exc
    return AppliedDiff(written, removed)

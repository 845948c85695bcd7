"""A checkpoint named for a restore into a new container (``gpucr.io/restore-from: NAME``): resolved under the
node's checkpoint root, checked before anything starts, locked against a second restore, and staged for runc.
The checks split by cost: what is cheap (the path, gpucr's metadata, every file's size, the CUDA marker) runs in the
plugin at CreateContainer; the digests of the manifest and the staging run in gpucr's runc wrapper at ``runc create``
(docs/design.md: containerd waits 2 s for an NRI plugin by default).

What can be named: a gpucr checkpoint directory (its ``gpucr.json`` with a manifest is what makes it gpucr's) that
holds a container checkpoint runc can restore, i.e. ``images/`` with runc's ``descriptors.json`` (containerd's task
API, as ``ctr t checkpoint --image-path`` and ``gpucr checkpoint --via-runtime`` on 1.7 write it; and a direct
``gpucr checkpoint CONTAINER``, which dumps the container as runc does: :mod:`.container`) or ``checkpoint.tar`` (CRI
CheckpointContainer, as the kubelet and ``gpucr checkpoint --via-runtime`` on 2.x write it). Staging never writes into
the checkpoint: runc and CRIU get a private copy of the images dir (hard links, or the archive's ``checkpoint/``
extracted) beside the checkpoints, in ``ROOT/.restore/<container id>/``.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GpucrError
from ..host.nodeid import node_tag, tag_is_this_node
from . import marker as _marker
from .layout import IMAGES, METADATA, CheckpointDir, LayoutError, Metadata, check_owner

__all__ = ["ARCHIVE", "LOCKS", "STAGING", "RestoreSource", "RestoreSourceError", "Staged", "acquire_lock",
           "archive_member", "locks_dir",
           "open_source", "release_lock", "resolve", "stage", "unstage"]

ARCHIVE = "checkpoint.tar"
#: the staging area under the checkpoint root (a NAME cannot start with '.', so it never names a checkpoint)
STAGING = ".restore"
_DESCRIPTORS = "descriptors.json"
#: the restore locks, in the checkpoint root itself: nodes sharing the root see each other's
LOCKS = ".restore-locks"


class RestoreSourceError(GpucrError):
    """The named checkpoint cannot be restored (outside the root, missing, not gpucr's, corrupt, busy)."""


@dataclass(frozen=True)
class RestoreSource:
    """A checked checkpoint: ``kind`` is ``images`` (runc's CRIU images in ``path/images``) or ``cri-archive``."""

    name: str
    path: Path
    kind: str
    meta: Metadata
    marker: _marker.CudaMarker | None = None
    #: the checkpointed container's volumes: container path -> host path (recorded by the seal)
    mounts: dict[str, str] = field(default_factory=dict)


def _inside(p: Path, root: Path) -> bool:
    return p != root and p.is_relative_to(root)


def resolve(root: Path, name: str) -> Path:
    """``root/name`` resolved, refused unless it is a directory strictly inside ``root`` (symlinks followed).

    Raises:
        RestoreSourceError: the root is missing, the name leaves the root (``..``, absolute, a symlink out), or
            nothing is there.
    """
    if not name or name.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in name.split("/")):
        raise RestoreSourceError(f"checkpoint name {name!r} is not a plain name under the checkpoint root {root} "
                                 "(no absolute path, '..' or hidden component)")
    try:
        real_root = root.resolve(strict=True)
    except OSError as exc:
        raise RestoreSourceError(f"the node's checkpoint root {root} does not exist ({exc.strerror}): set "
                                 "checkpoint_root in /etc/gpucr/config.toml to where checkpoints are") from exc
    path = root / name
    real = path.resolve()
    if not _inside(real, real_root):
        link = next((q for q in [path, *path.parents] if q.is_symlink()), None)
        how = f"{link} is a symlink to {os.readlink(link)}" if link else f"it resolves to {real}"
        raise RestoreSourceError(f"checkpoint {name!r} is outside the checkpoint root {root}: {how}; name a "
                                 f"checkpoint stored under {root}")
    if not real.is_dir():
        there = sorted(p.name for p in real_root.iterdir() if not p.name.startswith("."))[:10]
        raise RestoreSourceError(f"no checkpoint {name!r} under the checkpoint root {root} ({real} "
                                 f"{'is not a directory' if real.exists() else 'does not exist'}); "
                                 f"checkpoints there: {', '.join(there) or 'none'}")
    return real


def archive_member(archive: Path, member: str) -> bytes | None:
    """One regular file of a tar archive, or None when it has no such member."""
    with tarfile.open(archive) as t:
        try:
            f = t.extractfile(member)
        except KeyError:
            return None
        return f.read() if f is not None else None


def open_source(root: Path, name: str, *, verify_sha256: bool = True) -> RestoreSource:
    """Resolve and check ``name`` before anything starts: gpucr metadata present, manifest intact (every file's
    size and, with ``verify_sha256``, digest), a runtime checkpoint inside, gpucr's CUDA marker readable. Without
    ``verify_sha256`` the work is bounded by the number of files, not their size (the plugin's CreateContainer).

    Raises:
        RestoreSourceError: names the checkpoint, what is wrong and the fix.
    """
    path = resolve(root, name)
    if not (path / METADATA).is_file():
        raise RestoreSourceError(
            f"checkpoint {name!r} ({path}) has no gpucr metadata ({METADATA}): it was not made or sealed by gpucr, so "
            "it cannot be checked before the restore; make it with `gpucr checkpoint CONTAINER --to "
            f"{path}` (or seal a runtime's checkpoint there with `gpucr seal {path}`)")
    try:
        if (path / IMAGES).exists():
            _, meta = CheckpointDir.open(path, root=root, verify=verify_sha256)
        else:  # CRI's archive beside gpucr.json: the same checks, without an images/ dir
            CheckpointDir.check_root(path, root)
            for p, what in ((path, "checkpoint dir"), (path / METADATA, "metadata file")):
                check_owner(p, what=what)
            meta = Metadata.from_json((path / METADATA).read_text(), str(path / METADATA))
            CheckpointDir(path).verify(meta, full=verify_sha256)
    except OSError as exc:
        raise RestoreSourceError(f"checkpoint {name!r}: cannot read {path / METADATA}: {exc.strerror}") from exc
    except LayoutError as exc:
        raise RestoreSourceError(f"checkpoint {name!r} refused before the restore: {exc}") from exc
    if ARCHIVE in meta.manifest:
        kind = "cri-archive"
        raw = archive_member(path / ARCHIVE, f"checkpoint/{_marker.MARKER}")
        has_desc = archive_member(path / ARCHIVE, f"checkpoint/{_DESCRIPTORS}") is not None
    elif f"{IMAGES}/{_DESCRIPTORS}" in meta.manifest:
        kind = "images"
        mk = path / IMAGES / _marker.MARKER
        raw = mk.read_bytes() if f"{IMAGES}/{_marker.MARKER}" in meta.manifest else None
        has_desc = True
    elif meta.container:
        raise RestoreSourceError(
            f"checkpoint {name!r} ({path}) is a direct checkpoint of container "
            f"{meta.container_id or meta.container.get('id', '?')} made by a gpucr that wrote no runc "
            f"{_DESCRIPTORS}: restore it with `gpucr restore {path}`, or checkpoint the container again with this "
            "gpucr (`gpucr checkpoint CONTAINER --to ROOT/NAME`)")
    else:
        raise RestoreSourceError(
            f"checkpoint {name!r} ({path}) holds no container checkpoint (neither {ARCHIVE} nor {IMAGES}/"
            f"{_DESCRIPTORS}): a `gpucr checkpoint --pid` of processes is restored with `gpucr restore`, not into a "
            "container; checkpoint the container itself with `gpucr checkpoint CONTAINER --to ROOT/NAME`")
    if not has_desc:
        raise RestoreSourceError(f"checkpoint {name!r}: {ARCHIVE} holds no checkpoint/{_DESCRIPTORS}; it is not a "
                                 "container checkpoint runc can restore")
    mk_obj = None
    if raw is not None:
        try:
            mk_obj = _marker.parse(json.loads(raw), f"{path}:{_marker.MARKER}")
        except (ValueError, _marker.MarkerError) as exc:
            raise RestoreSourceError(f"checkpoint {name!r}: gpucr's CUDA marker is unreadable ({exc})") from exc
    mounts = meta.extra.get("mounts") or {}
    if not isinstance(mounts, dict):
        raise RestoreSourceError(f"checkpoint {name!r}: {METADATA} field 'mounts' is not an object: corrupt")
    return RestoreSource(name, path, kind, meta, mk_obj, {str(k): str(v) for k, v in mounts.items()})


# -- one restore at a time per checkpoint ------------------------------------------------------------------------

def locks_dir(root: Path) -> Path:
    """Where restore locks of checkpoints under ``root`` live: ``ROOT/.restore-locks`` (symlinks resolved)."""
    return root.resolve() / LOCKS


def acquire_lock(locks_dir: Path, source: RestoreSource, container_id: str, is_live: Any) -> Path:
    """Take ``source``'s restore lock for ``container_id`` (a file created exclusively). ``locks_dir`` is
    :func:`locks_dir` of the checkpoint root, so nodes sharing the root exclude each other; the lock is named after
    the checkpoint's real path relative to the root (the same through any symlink, and on every node whatever its
    mount path) and records the node (host/nodeid.py). A lock of this node whose owner ``is_live(owner)`` says is
    gone is taken over; another node's lock is never judged from here.

    Raises:
        RestoreSourceError: another container is restoring this checkpoint now.
    """
    import hashlib
    locks_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    rel = os.path.relpath(source.path.resolve(), locks_dir.resolve().parent)
    lock = locks_dir / f"{hashlib.sha256(rel.encode()).hexdigest()[:24]}.lock"
    body = json.dumps({"container_id": container_id, "checkpoint": str(source.path), "name": rel,
                       "node": node_tag()}).encode()
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            try:
                held = json.loads(lock.read_bytes())
                owner, node = str(held.get("container_id") or ""), str(held.get("node") or "")
            except (OSError, ValueError, AttributeError):
                owner, node = "", ""
            if owner and not tag_is_this_node(node):
                raise RestoreSourceError(
                    f"checkpoint {source.name!r} is being restored by container {owner} on node {node} now (lock "
                    f"{lock}): one restore of a checkpoint at a time; retry later, or remove the lock if that node "
                    "is gone") from None
            if owner and owner != container_id and is_live(owner):
                raise RestoreSourceError(
                    f"checkpoint {source.name!r} is being restored by container {owner} now: one restore of a "
                    "checkpoint at a time; retry when it is running, or restore a copy of the checkpoint") from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        return lock
    raise RestoreSourceError(f"cannot take the restore lock {lock} of checkpoint {source.name!r}: retry")


def release_lock(lock: Path, container_id: str) -> None:
    """Drop ``lock`` if ``container_id`` holds it."""
    try:
        owner = json.loads(lock.read_bytes()).get("container_id")
    except (OSError, ValueError):
        return
    if owner == container_id:
        lock.unlink(missing_ok=True)


# -- staging ------------------------------------------------------------------------------------------------------

def _link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(mode=0o700)
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_symlink():
            raise RestoreSourceError(f"{entry} is a symlink inside the checkpoint: refusing it")
        if entry.is_dir():
            _link_tree(entry, target)
            continue
        _link_file(entry, target)


def _link_file(src: Path, dst: Path) -> None:
    if src.is_symlink():
        raise RestoreSourceError(f"{src} is a symlink inside the checkpoint: refusing it")
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


#: CRI's archive members beside ``checkpoint/`` that change the new container's rootfs (``ckpt.rootfs_diff``)
ROOTFS_DIFF, DELETED_FILES = "rootfs-diff.tar", "deleted.files"


@dataclass(frozen=True)
class Staged:
    """What :func:`stage` made: CRIU's ``images`` and ``work`` dirs, and from CRI's archive (or beside the images of
    an imported containerd checkpoint image) the container's rootfs changes (``rootfs_diff``: the archive's
    ``rootfs-diff.tar`` copied out; ``deleted``: the paths its ``deleted.files`` lists)."""

    images: Path
    work: Path
    rootfs_diff: Path | None = None
    deleted: tuple[str, ...] = ()


def _copy_member(t: tarfile.TarFile, m: tarfile.TarInfo, out: Path) -> None:
    f = t.extractfile(m)
    assert f is not None
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as o:
        shutil.copyfileobj(f, o, 4 << 20)


def _deleted_list(raw: bytes, archive: Path) -> tuple[str, ...]:
    try:
        paths = json.loads(raw) if raw.strip() else []
    except ValueError as exc:
        raise RestoreSourceError(f"{archive}: {DELETED_FILES} is not JSON ({exc}): the archive is corrupt") from exc
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise RestoreSourceError(f"{archive}: {DELETED_FILES} is not a list of paths: the archive is corrupt")
    return tuple(paths)


def _extract_archive(archive: Path, area: Path) -> Staged:
    """One pass over CRI's archive: ``checkpoint/`` into ``area/images`` (regular files and dirs only, names
    checked: no links, no ``..``, nothing outside), ``rootfs-diff.tar`` to ``area/rootfs-diff.tar`` and the paths of
    ``deleted.files``; the rest (CRI's own config and spec dumps) is not needed."""
    dst, diff, deleted = area / "images", None, ()
    dst.mkdir(mode=0o700)
    with tarfile.open(archive) as t:
        for m in t:
            parts = Path(m.name).parts
            if parts in ((ROOTFS_DIFF,), (DELETED_FILES,)) and not m.isfile():
                raise RestoreSourceError(f"{archive} holds {m.name!r}, not a regular file: refusing it")
            if parts == (ROOTFS_DIFF,):
                diff = area / ROOTFS_DIFF
                _copy_member(t, m, diff)
                continue
            if parts == (DELETED_FILES,):
                f = t.extractfile(m)
                assert f is not None
                deleted = _deleted_list(f.read(), archive)
                continue
            if not parts or parts[0] != "checkpoint" or len(parts) == 1:
                continue
            rel = Path(*parts[1:])
            if ".." in rel.parts or rel.is_absolute():
                raise RestoreSourceError(f"{archive} names {m.name!r}, outside its checkpoint: refusing it")
            out = dst / rel
            if m.isdir():
                out.mkdir(mode=0o700, parents=True, exist_ok=True)
            elif m.isfile():
                out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _copy_member(t, m, out)
            else:
                raise RestoreSourceError(f"{archive} holds {m.name!r}, not a regular file: refusing it")
    return Staged(dst, area / "work", diff, deleted)


def stage(source: RestoreSource, root: Path, container_id: str) -> Staged:
    """A private images dir and CRIU work dir for restoring ``source`` into ``container_id``, in
    ``ROOT/.restore/<id>/`` (0700): a gpucr images dir as hard links (no data copied; a copy only where the
    checkpoint lies on another file system than its root), CRI's archive extracted (its rootfs changes beside).
    The slow part of a restore: gpucr's runc wrapper runs it at ``runc create``, never the plugin (containerd gives
    an NRI call 2 s by default).

    Raises:
        RestoreSourceError: the staging area cannot be made (names why); nothing is left behind.
    """
    area = root.resolve() / STAGING / container_id
    try:
        (root.resolve() / STAGING).mkdir(mode=0o700, exist_ok=True)
        if area.exists():
            shutil.rmtree(area)
        area.mkdir(mode=0o700)
        if source.kind == "cri-archive":
            staged = _extract_archive(source.path / ARCHIVE, area)
        else:
            _link_tree(source.path / IMAGES, area / "images")
            diff = None
            if ROOTFS_DIFF in source.meta.manifest:  # a containerd checkpoint image's rw layer (gpucr import)
                diff = area / ROOTFS_DIFF
                _link_file(source.path / ROOTFS_DIFF, diff)
            staged = Staged(area / "images", area / "work", diff)
        staged.work.mkdir(mode=0o700)
        return staged
    except (OSError, tarfile.TarError) as exc:
        shutil.rmtree(area, ignore_errors=True)
        raise RestoreSourceError(f"cannot stage checkpoint {source.name!r} for container {container_id} in "
                                 f"{area}: {exc}") from exc
    except RestoreSourceError:
        shutil.rmtree(area, ignore_errors=True)
        raise


def unstage(root: Path, container_id: str) -> None:
    shutil.rmtree(root.resolve() / STAGING / container_id, ignore_errors=True)



"""``gpucr export`` / ``gpucr import``: a checkpoint under the node's checkpoint root <-> an OCI image in
containerd's content store (joins ``ckpt.oci_image``, the format, with ``containerd.content``, the API).

Export packs the checkpoint (checked whole first), writes layer, config and manifest under a lease (the manifest
labelled with containerd's ``containerd.io/gc.ref.content.*`` so that the image record keeps the rest alive), and
creates the image record last; ``ctr images push``/``export`` then move it like any image. Import refuses a name
that exists before it reads anything, checks the manifest and config (gpucr's artifact, digests), spools the
layer, and unpacks it (``oci_image.unpack``: checked, staged, renamed). Spool files live in a private dir in the
checkpoint root (same filesystem as the checkpoints, never /tmp) and are removed afterwards.

Import also takes containerd's own checkpoint image (``ctr c checkpoint --task [--rw]``: an index, told apart by
its target's media type): its CRIU tar and rw layer are spooled, checked and unpacked into a sealed checkpoint
(``oci_image.unpack_ctr``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..ckpt.layout import CheckpointDir, check_owner
from ..ckpt.oci_image import (
    INDEX_TYPES, MAX_JSON_BYTES, BlobRef, ImageFormatError, check_config, check_ctr_index, check_manifest,
    check_name, pack, unpack, unpack_ctr,
)
from ..ckpt.restore_source import resolve
from ..containerd.content import CHUNK_BYTES, ContentClient, Descriptor, ImageExistsError, NotFoundError
from ..errors import GpucrError

__all__ = ["SPOOL_PREFIX", "export_checkpoint", "import_checkpoint"]

log = logging.getLogger(__name__)

#: the private spool dirs of running exports and imports in the checkpoint root
SPOOL_PREFIX = ".gpucr-spool-"


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def _spool(root: Path) -> Path:
    check_owner(root, what="checkpoint root")
    return Path(tempfile.mkdtemp(prefix=SPOOL_PREFIX, dir=root))  # 0700


def export_checkpoint(client: ContentClient, root: Path, name: str, ref: str, *,
                      compress: str = "none") -> dict[str, Any]:
    """Write checkpoint ``name`` (under ``root``) as image ``ref``. Returns a summary.

    Raises:
        GpucrError: the checkpoint is not a sealed gpucr checkpoint or is corrupt, ``ref`` exists, containerd fails.
    """
    path = resolve(root, name)
    try:
        client.image(ref)
    except NotFoundError:
        pass
    else:
        raise GpucrError(f"image {ref!r} exists already in containerd's namespace {client.namespace}: choose another "
                         f"reference, or remove it (ctr -n {client.namespace} images rm {ref})")
    t0 = time.monotonic()
    spool = _spool(root.resolve())
    try:
        p = pack(path, root, spool, compress=compress)
        t_pack = time.monotonic() - t0
        with client.lease():
            client.write(p.layer_ref.digest, p.layer_ref.size, _file_chunks(p.layer))
            client.write(p.config_ref.digest, p.config_ref.size, [p.config])
            client.write(p.manifest_ref.digest, p.manifest_ref.size, [p.manifest], labels={
                "containerd.io/gc.ref.content.config": p.config_ref.digest,
                "containerd.io/gc.ref.content.l.0": p.layer_ref.digest})
            try:
                client.create_image(ref, Descriptor(p.manifest_ref.media_type, p.manifest_ref.digest,
                                                    p.manifest_ref.size))
            except ImageExistsError as exc:
                raise GpucrError(f"image {ref!r} was created meanwhile in namespace {client.namespace}: choose "
                                 "another reference") from exc
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    total = time.monotonic() - t0
    log.info("exported checkpoint %s as image %s (%s, %d bytes) in %.2fs", name, ref, p.layer_ref.media_type,
             p.layer_ref.size, total)
    return {"action": "export", "name": name, "path": str(path), "image": ref, "namespace": client.namespace,
            "digest": p.manifest_ref.digest, "kind": p.kind, "layer_media_type": p.layer_ref.media_type,
            "layer_bytes": p.layer_ref.size, "compression": compress,
            "timings_s": {"pack": round(t_pack, 3), "total": round(total, 3)}}


def _read_small(client: ContentClient, ref: BlobRef, limit: int) -> bytes:
    out = bytearray()
    for chunk in client.read(ref.digest):
        out += chunk
        if len(out) > limit:
            break
    return bytes(out)


def _spool_blob(client: ContentClient, blob: BlobRef, dst: Path) -> None:
    """``blob`` copied from the content store into the new private file ``dst`` (at most one byte past its size:
    the digest check that follows refuses a longer or shorter one)."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        n = 0
        for chunk in client.read(blob.digest):
            n += len(chunk)
            if n > blob.size:
                f.write(chunk[:1])
                break
            f.write(chunk)


def _import_ctr_checkpoint(client: ContentClient, ref: str, iref: BlobRef, real_root: Path, final: Path, root: Path,
                           t0: float) -> dict[str, Any]:
    """containerd's own checkpoint image (``ctr c checkpoint --task [--rw]``): its CRIU tar becomes
    ``final/images`` and its rw layer ``final/rootfs-diff.tar``, sealed as ``gpucr seal`` seals a ``ctr t
    checkpoint`` dir. The rest (the container's record, checkpoint and runtime options, ``--image``'s base image) is
    not imported: restore-from takes the spec, image and volumes of the new container."""
    criu, rw, others = check_ctr_index(_read_small(client, iref, MAX_JSON_BYTES + 1), iref, ref)
    spool = _spool(real_root)
    try:
        tar = spool / "criu.tar"
        _spool_blob(client, criu, tar)
        rw_spooled = None
        if rw is not None:
            _spool_blob(client, rw, spool / "rw.tar")
            rw_spooled = (spool / "rw.tar", rw)
        meta = unpack_ctr(tar, criu, final, root, ref, {
            "via": "imported (containerd checkpoint image)", "image": ref, "image_digest": iref.digest,
            "criu_digest": criu.digest, "rw_digest": rw.digest if rw else "", "not_imported": others}, rw_spooled)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    total = time.monotonic() - t0
    log.info("imported containerd checkpoint image %s as checkpoint %s (%d files%s) in %.2fs", ref, final,
             len(meta.manifest), ", rw layer as rootfs-diff.tar" if rw else "", total)
    return {"action": "import", "image": ref, "namespace": client.namespace, "digest": iref.digest, "name": final.name,
            "path": str(final), "kind": "containerd-checkpoint", "exported_as": "", "files": len(meta.manifest),
            "bytes": sum(e.size for e in meta.manifest.values()), "rootfs_diff": rw is not None,
            "not_imported": others, "timings_s": {"total": round(total, 3)}}


def import_checkpoint(client: ContentClient, ref: str, root: Path, name: str) -> dict[str, Any]:
    """Unpack image ``ref`` into a new checkpoint ``root/name``. Returns a summary.

    Raises:
        GpucrError: ``name`` is taken or not a plain name, ``ref`` is missing or not a gpucr checkpoint, or its
            content does not match its digests; nothing is left under ``root``.
    """
    check_name(name)
    real_root = root.resolve()
    final = real_root / name
    CheckpointDir.check_root(final, root)
    if os.path.lexists(final):
        raise ImageFormatError(f"checkpoint {name!r} exists already under {root}: import under another name, or "
                               "remove it first")
    try:
        target = client.image(ref)
    except NotFoundError as exc:
        raise GpucrError(f"no image {ref!r} in containerd's namespace {client.namespace} at {client.address}: bring "
                         f"it there first (ctr -n {client.namespace} images pull {ref}, or ctr -n "
                         f"{client.namespace} images import --no-unpack FILE)") from exc
    t0 = time.monotonic()
    mref = BlobRef(target.media_type, target.digest, target.size)
    if mref.media_type in INDEX_TYPES:
        return _import_ctr_checkpoint(client, ref, mref, real_root, final, root, t0)
    if mref.size > MAX_JSON_BYTES:
        check_manifest(b"", mref, ref)  # names why
    cref, lref, ann = check_manifest(_read_small(client, mref, MAX_JSON_BYTES), mref, ref)
    if cref.size > MAX_JSON_BYTES:
        check_config(b"", cref, ref)
    config = check_config(_read_small(client, cref, MAX_JSON_BYTES), cref, ref)
    spool = _spool(real_root)
    try:
        layer = spool / "layer"
        _spool_blob(client, lref, layer)
        meta = unpack(layer, lref, config, final, root, ref)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    total = time.monotonic() - t0
    log.info("imported image %s as checkpoint %s (%d files) in %.2fs", ref, final, len(meta.manifest), total)
    return {"action": "import", "image": ref, "namespace": client.namespace, "digest": mref.digest, "name": name,
            "path": str(final), "kind": config.get("kind", ""), "exported_as": ann.get("io.gpucr.checkpoint.name", ""),
            "files": len(meta.manifest), "bytes": sum(e.size for e in meta.manifest.values()),
            "timings_s": {"total": round(total, 3)}}

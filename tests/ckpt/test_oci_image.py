"""The checkpoint-as-OCI-image format (ckpt/oci_image.py), both ways, without containerd: round trips in every
compression, and each kind of bad input refused with one clear error and nothing written under the final name."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from nri_plugin.ckpt.layout import CheckpointDir, Metadata
from nri_plugin.ckpt.oci_image import (
    ARTIFACT_TYPE, CONFIG_TYPE, CTR_CRIU_TAR, CTR_RW_TAR, DIFF_ID, LAYER_TYPE, MANIFEST_TYPE, BlobRef, ImageFormatError,
    check_config, check_ctr_index, check_manifest, check_name, pack, unpack, unpack_ctr,
)
from nri_plugin.ckpt.restore_source import open_source, stage, unstage


def _sealed(root: Path, name: str = "ck") -> Path:
    d = root / name
    (d / "images").mkdir(parents=True, mode=0o700)
    (d / "images" / "descriptors.json").write_text('["/dev/null"]')
    (d / "images" / "pages-1.img").write_bytes(os.urandom(64 << 10))
    (d / "images" / "dump.log").write_text("a log, not in the manifest")
    CheckpointDir(d).finalize(Metadata(container_id="c0ffee", extra={"mounts": {"/data": "/old"}}))
    return d


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _packed(tmp_path: Path, compress: str = "none") -> tuple[Path, Path, object]:
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    src = _sealed(root)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    return root, src, pack(src, root, spool, compress=compress)


def _import(p: object, root: Path, name: str = "copy") -> Metadata:
    cref, lref, _ = check_manifest(p.manifest, p.manifest_ref, "img")  # type: ignore[attr-defined]
    cfg = check_config(p.config, cref, "img")  # type: ignore[attr-defined]
    return unpack(p.layer, lref, cfg, root / name, root, "img")  # type: ignore[attr-defined]


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_round_trip_restores_the_same_checkpoint(tmp_path: Path, compress: str) -> None:
    root, src, p = _packed(tmp_path, compress)
    m = json.loads(p.manifest)  # type: ignore[attr-defined]
    assert m["artifactType"] == ARTIFACT_TYPE and m["config"]["mediaType"] == CONFIG_TYPE
    assert m["layers"][0]["mediaType"] == LAYER_TYPE + {"none": "", "gzip": "+gzip", "zstd": "+zstd"}[compress]
    assert m["annotations"]["io.gpucr.checkpoint.name"] == "ck" and m["annotations"]["io.gpucr.checkpoint.kind"] == \
        "images"
    meta = _import(p, root)
    copy = root / "copy"
    want = {k: v for k, v in _tree(src).items() if k != "images/dump.log"}  # logs are not part of a checkpoint
    assert _tree(copy) == want and meta.container_id == "c0ffee"
    assert {oct(q.stat().st_mode & 0o777) for q in [copy, *copy.rglob("*")]} <= {"0o700", "0o600"}
    assert open_source(root, "copy").kind == "images"  # gpucr.io/restore-from can name it
    assert [q.name for q in root.iterdir() if q.name.startswith(".")] == []


def test_unsealed_checkpoint_is_not_exported(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "raw" / "images").mkdir(parents=True, mode=0o700)
    (root / "raw" / "images" / "descriptors.json").write_text("[]")
    with pytest.raises(ImageFormatError, match="seal it first"):
        pack(root / "raw", root, tmp_path, compress="none")


def test_tampered_layer_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    root, _, p = _packed(tmp_path)
    b = bytearray(p.layer.read_bytes())  # type: ignore[attr-defined]
    b[len(b) // 2] ^= 0xFF
    p.layer.write_bytes(bytes(b))  # type: ignore[attr-defined]
    with pytest.raises(ImageFormatError, match="does not match its digest"):
        _import(p, root)
    assert sorted(q.name for q in root.iterdir()) == ["ck"]


def test_not_a_gpucr_image_is_refused(tmp_path: Path) -> None:
    m = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "0" * 64, "size": 2},
        "layers": []}).encode()
    ref = BlobRef(MANIFEST_TYPE, "sha256:" + hashlib.sha256(m).hexdigest(), len(m))
    with pytest.raises(ImageFormatError, match="is not a gpucr checkpoint"):
        check_manifest(m, ref, "busybox")
    with pytest.raises(ImageFormatError, match="not an OCI manifest of artifact type"):
        check_manifest(b"{}", BlobRef("application/vnd.oci.image.index.v1+json", ref.digest, 2), "busybox")
    with pytest.raises(ImageFormatError, match="tampered"):
        check_manifest(m + b" ", ref, "busybox")


def test_existing_name_is_refused(tmp_path: Path) -> None:
    root, src, p = _packed(tmp_path)
    before = _tree(src)
    cref, lref, _ = check_manifest(p.manifest, p.manifest_ref, "img")  # type: ignore[attr-defined]
    with pytest.raises(ImageFormatError, match="exists already"):
        unpack(p.layer, lref, check_config(p.config, cref, "img"), src, root, "img")  # type: ignore[attr-defined]
    assert _tree(src) == before


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "x y"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ImageFormatError, match="not a plain name"):
        check_name(name)


def _layer_with(tmp_path: Path, root: Path, add: object) -> tuple[Path, BlobRef, dict[str, str]]:
    """A layer holding a valid checkpoint plus whatever ``add(tarfile)`` puts in; config and digests consistent,
    so only the member check can refuse it."""
    src = root / "ck"
    raw = (src / "gpucr.json").read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.add(src / "gpucr.json", "gpucr.json")
        t.add(src / "images", "images")
        add(t)  # type: ignore[operator]
    data = buf.getvalue()
    layer = tmp_path / "bad.tar"
    layer.write_bytes(data)
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    cfg = {"diff_id": d, "metadata_sha256": "sha256:" + hashlib.sha256(raw).hexdigest()}
    return layer, BlobRef(LAYER_TYPE, d, len(data), {DIFF_ID: d}), cfg


def _member(name: str, kind: bytes, **kw: object) -> object:
    def add(t: tarfile.TarFile) -> None:
        ti = tarfile.TarInfo(name)
        ti.type = kind
        for k, v in kw.items():
            setattr(ti, k, v)
        t.addfile(ti, io.BytesIO(b"x") if kind == tarfile.REGTYPE else None)
        if kind == tarfile.REGTYPE:
            ti.size = 1
    return add


@pytest.mark.parametrize("case, expect", [
    ("symlink", "a symlink"), ("hardlink", "a hard link"), ("device", "a device"), ("fifo", "a fifo"),
    ("dotdot", "outside the checkpoint"), ("absolute", "outside the checkpoint"), ("extra", "does not list"),
])
def test_layer_with_what_a_checkpoint_never_holds_is_refused(tmp_path: Path, case: str, expect: str) -> None:
    root, _, _ = _packed(tmp_path)
    add = {
        "symlink": _member("images/evil", tarfile.SYMTYPE, linkname="/etc/shadow"),
        "hardlink": _member("images/evil", tarfile.LNKTYPE, linkname="gpucr.json"),
        "device": _member("images/evil", tarfile.CHRTYPE, devmajor=1, devminor=3),
        "fifo": _member("images/evil", tarfile.FIFOTYPE),
        "dotdot": _member("../evil", tarfile.REGTYPE),
        "absolute": _member("/tmp/evil", tarfile.REGTYPE),
        "extra": _member("images/extra.img", tarfile.REGTYPE),
    }[case]
    layer, ref, cfg = _layer_with(tmp_path, root, add)
    with pytest.raises(ImageFormatError, match=expect):
        unpack(layer, ref, cfg, root / "copy", root, "img")
    assert sorted(q.name for q in root.iterdir()) == ["ck"] and not (tmp_path / "evil").exists()


# -- containerd's own checkpoint image (ctr c checkpoint --task) -----------------------------------------------------

def _ctr_index(blobs: dict[str, bytes]) -> tuple[bytes, BlobRef]:
    """An index as ``ctr c checkpoint`` writes it: its entries are the blobs (media type -> content)."""
    idx = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": mt, "digest": "sha256:" + hashlib.sha256(b).hexdigest(), "size": len(b)}
        for mt, b in blobs.items()]}).encode()
    return idx, BlobRef("application/vnd.oci.image.index.v1+json", "sha256:" + hashlib.sha256(idx).hexdigest(),
                        len(idx))


def _criu_tar(tmp_path: Path, *extra: object) -> tuple[Path, bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        top = tarfile.TarInfo(".")
        top.type = tarfile.DIRTYPE
        t.addfile(top)
        for name, data in (("descriptors.json", b'["/dev/null"]'), ("pages-1.img", os.urandom(4096)),
                           ("core-1.img", b"core")):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            t.addfile(ti, io.BytesIO(data))
        for add in extra:
            add(t)  # type: ignore[operator]
    p = tmp_path / "criu.tar"
    p.write_bytes(buf.getvalue())
    return p, buf.getvalue()


def test_ctr_checkpoint_image_unpacks_into_a_sealed_images_dir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    tar, data = _criu_tar(tmp_path)
    idx, iref = _ctr_index({CTR_CRIU_TAR: data, CTR_RW_TAR: b"rw",
                            "application/vnd.containerd.container.checkpoint.config.v1+proto": b"spec"})
    criu, rw, others = check_ctr_index(idx, iref, "img")
    assert criu.media_type == CTR_CRIU_TAR and rw is not None and rw.media_type == CTR_RW_TAR and others == [
        "application/vnd.containerd.container.checkpoint.config.v1+proto"]
    rw_path, rw_ref = _rw_layer(tmp_path, _member("etc/written", tarfile.REGTYPE, mode=0o644))
    meta = unpack_ctr(tar, criu, root / "ck", root, "img", {"via": "imported"}, (rw_path, rw_ref))
    assert sorted(meta.manifest) == ["images/core-1.img", "images/descriptors.json", "images/pages-1.img",
                                     "rootfs-diff.tar"]
    with tarfile.open(root / "ck" / "rootfs-diff.tar") as t:
        assert t.getnames() == ["etc/written"]
    src = open_source(root, "ck")
    staged = stage(src, root, "c1")
    assert staged.rootfs_diff is not None and staged.rootfs_diff.read_bytes() == \
        (root / "ck" / "rootfs-diff.tar").read_bytes()
    unstage(root, "c1")
    assert meta.extra["kind"] == "runtime" and meta.extra["via"] == "imported" and meta.extra["cuda_marker"] is False
    assert sorted(q.name for q in root.iterdir()) == [".restore", "ck"]
    assert oct((root / "ck" / "images" / "pages-1.img").stat().st_mode & 0o777) == "0o600"
    assert src.kind == "images"


def _rw_layer(tmp_path: Path, add: object) -> tuple[Path, BlobRef]:
    """containerd's rw layer: a gzipped OCI layer tar holding what ``add(tarfile)`` puts in."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        add(t)  # type: ignore[operator]
    p = tmp_path / "rw.tar"
    p.write_bytes(buf.getvalue())
    return p, BlobRef(CTR_RW_TAR, "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest(), len(buf.getvalue()))


def test_ctr_checkpoint_image_bad_input_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    tar, data = _criu_tar(tmp_path)
    idx, iref = _ctr_index({"application/vnd.oci.image.manifest.v1+json": b"{}"})
    with pytest.raises(ImageFormatError, match="is not a gpucr checkpoint, nor a containerd checkpoint image"):
        check_ctr_index(idx, iref, "img")
    idx, iref = _ctr_index({CTR_CRIU_TAR: data})
    with pytest.raises(ImageFormatError, match="tampered with"):
        check_ctr_index(idx + b" ", iref, "img")
    criu, _, _ = check_ctr_index(idx, iref, "img")
    raw = bytearray(data)
    raw[len(raw) // 2] ^= 0xFF
    tar.write_bytes(bytes(raw))
    with pytest.raises(ImageFormatError, match="does not match its digest"):
        unpack_ctr(tar, criu, root / "ck", root, "img", {})
    tar, data = _criu_tar(tmp_path, _member("evil", tarfile.SYMTYPE, linkname="/etc/shadow"))
    idx, iref = _ctr_index({CTR_CRIU_TAR: data})
    criu, _, _ = check_ctr_index(idx, iref, "img")
    with pytest.raises(ImageFormatError, match="a symlink"):
        unpack_ctr(tar, criu, root / "ck", root, "img", {})
    tar, data = _criu_tar(tmp_path)
    idx, iref = _ctr_index({CTR_CRIU_TAR: data})
    criu, _, _ = check_ctr_index(idx, iref, "img")
    rw = _rw_layer(tmp_path, _member("dev/evil", tarfile.CHRTYPE, devmajor=1, devminor=3))
    with pytest.raises(ImageFormatError, match="its rw layer is refused .*device node"):
        unpack_ctr(tar, criu, root / "ck", root, "img", {}, rw)
    tar, data = _criu_tar(tmp_path, _member("gpucr-cuda.json", tarfile.REGTYPE))  # empty: not JSON
    idx, iref = _ctr_index({CTR_CRIU_TAR: data})
    criu, _, _ = check_ctr_index(idx, iref, "img")
    with pytest.raises(ImageFormatError, match="CUDA marker in its CRIU images is unreadable"):
        unpack_ctr(tar, criu, root / "ck", root, "img", {})
    rw = _rw_layer(tmp_path, _member("etc/ok", tarfile.REGTYPE))
    rw[0].write_bytes(rw[0].read_bytes() + b"x")
    with pytest.raises(ImageFormatError, match="rw layer .* does not match its digest"):
        unpack_ctr(tar, criu, root / "ck", root, "img", {}, rw)
    assert list(root.iterdir()) == []

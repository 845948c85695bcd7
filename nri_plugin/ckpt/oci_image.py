"""A gpucr checkpoint as an OCI image (an OCI 1.1 artifact): the one owner of that format, both ways.

The image (what ``gpucr export`` writes into containerd's content store and ``gpucr import`` reads back)::

    manifest  application/vnd.oci.image.manifest.v1+json, artifactType ARTIFACT_TYPE,
              annotations io.gpucr.checkpoint.{name,kind,format,gpucr-version,container-id}
    config    CONFIG_TYPE: {"architecture", "os", "gpucr": {format, name, kind, diff_id, metadata_sha256, ...}}
    layer     LAYER_TYPE, LAYER_TYPE+gzip or LAYER_TYPE+zstd (one): a tar of the checkpoint dir, ``gpucr.json``
              first, then every file its manifest lists (nothing else: no logs), dirs 0700, files 0600, uid 0

Packing reads a sealed checkpoint (``gpucr.json`` with a manifest: ``gpucr checkpoint``, ``--via-runtime``, or a
``ctr``/CRI/kubelet checkpoint after ``gpucr seal``) after checking it whole. Unpacking trusts nothing it reads:
the layer's digest and the tar's own digest (``diff_id``) are checked, every member must be a regular file or a
directory with a plain relative name (no link, device, fifo, ``..`` or absolute name, no duplicate), what comes
out is checked against ``gpucr.json`` (every file's size and sha256, and no file it does not list), and only then is
the staged dir renamed to its final name. Deliberately not here: containerd (``containerd/content.py``) and the
joining of the two (``handlers/oci_transfer.py``).

containerd's own checkpoint image (``ctr c checkpoint --task [--rw]``) is read too (``check_ctr_index``,
``unpack_ctr``): its CRIU tar becomes ``images/`` and its rw layer ``rootfs-diff.tar``, checked the same way, and the
result is sealed (``gpucr.json`` written here, as ``gpucr seal`` does), since that image carries no gpucr metadata.

zstd goes through the ``zstd`` program (``/usr/bin``; no Python binding is a dependency): optional.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import marker as _marker
from .durable import DIR_MODE, FILE_MODE, fsync_path, fsync_tree
from .layout import IMAGES, METADATA, CheckpointDir, LayoutError, Metadata, check_owner, staging_path

__all__ = ["ARTIFACT_TYPE", "COMPRESSIONS", "CONFIG_TYPE", "CTR_CRIU_TAR", "CTR_RW_TAR", "INDEX_TYPES", "LAYER_TYPE",
           "MANIFEST_TYPE", "RW_TYPES", "BlobRef", "ImageFormatError", "Packed", "check_config", "check_ctr_index",
           "check_manifest", "check_name", "pack", "sha256_file", "unpack", "unpack_ctr"]

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.gpucr.checkpoint.v1"
CONFIG_TYPE = "application/vnd.gpucr.checkpoint.config.v1+json"
LAYER_TYPE = "application/vnd.gpucr.checkpoint.layer.v1.tar"
COMPRESSIONS = {"none": "", "gzip": "+gzip", "zstd": "+zstd"}
FORMAT = 1
ANN = "io.gpucr.checkpoint."
DIFF_ID = ANN + "diff-id"
#: manifests and configs are small; anything larger is not ours
MAX_JSON_BYTES = 1 << 20
_ZSTD_PATH = "/usr/bin:/bin"
_CHUNK = 4 << 20


class ImageFormatError(LayoutError):
    """An image is not a gpucr checkpoint, or its content does not match what it claims."""


@dataclass(frozen=True)
class BlobRef:
    """An OCI descriptor (what a manifest says about one blob)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    def oci(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d


@dataclass(frozen=True)
class Packed:
    """An exported checkpoint: the manifest and config (bytes) and the layer (a spooled file)."""

    manifest: bytes
    manifest_ref: BlobRef
    config: bytes
    config_ref: BlobRef
    layer: Path
    layer_ref: BlobRef
    kind: str


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def check_name(name: str) -> None:
    """A checkpoint name for import: one plain component (letters, digits, ``._-``; not starting with ``.``)."""
    ok = bool(name) and len(name) <= 200 and not name.startswith(".") and \
        all(c.isalnum() or c in "._-" for c in name)
    if not ok:
        raise ImageFormatError(f"checkpoint name {name!r} is not a plain name (letters, digits, '.', '_', '-'; not "
                               "starting with '.'): choose one such name under the checkpoint root")


def _zstd() -> str:
    z = shutil.which("zstd", path=_ZSTD_PATH)
    if z is None:
        raise ImageFormatError("zstd compression needs the zstd program in /usr/bin (apt-get install zstd), or "
                               "use --compress gzip or none")
    return z


def _arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _kind(meta: Metadata) -> str:
    if "checkpoint.tar" in meta.manifest:
        return "cri-archive"
    if f"{IMAGES}/descriptors.json" in meta.manifest:
        return "images"
    return "direct"


# -- pack ----------------------------------------------------------------------------------------------------------

class _HashingWriter:
    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h = f, hashlib.sha256()

    def write(self, b: bytes) -> int:
        self.h.update(b)
        return self.f.write(b)


def _open_source(path: Path, root: Path) -> tuple[Metadata, bytes]:
    """The sealed checkpoint at ``path``, checked whole (ownership, every file's size and sha256)."""
    CheckpointDir.check_root(path, root)
    if not path.is_dir():
        raise ImageFormatError(f"no checkpoint at {path}: name a checkpoint dir under {root}")
    if not (path / METADATA).is_file():
        raise ImageFormatError(f"{path} has no {METADATA}: seal it first (`gpucr seal {path}`), so what is exported "
                               "can be checked on import")
    for p, what in ((path, "checkpoint dir"), (path / METADATA, "metadata file")):
        check_owner(p, what=what)
    raw = (path / METADATA).read_bytes()
    meta = Metadata.from_json(raw.decode(errors="replace"), str(path / METADATA))
    CheckpointDir(path).verify(meta, full=True)
    return meta, raw


def _tar_checkpoint(path: Path, meta: Metadata, raw_meta: bytes, out: IO[bytes]) -> None:
    mtime = int(meta.created_at)

    def info(name: str, kind: bytes, size: int = 0) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.size, ti.mtime = kind, size, mtime
        ti.mode = DIR_MODE if kind == tarfile.DIRTYPE else FILE_MODE
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    import io
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as t:  # type: ignore[call-overload]
        t.addfile(info(METADATA, tarfile.REGTYPE, len(raw_meta)), io.BytesIO(raw_meta))
        dirs: set[str] = set()
        for name in sorted(meta.manifest):
            parts = Path(name).parts
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    t.addfile(info(d, tarfile.DIRTYPE))
            fd = os.open(path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_size != meta.manifest[name].size:
                    raise ImageFormatError(f"{path / name} changed while it was exported: export again")
                t.addfile(info(name, tarfile.REGTYPE, st.st_size), f)


def pack(path: Path, root: Path, spool: Path, *, compress: str = "none") -> Packed:
    """The sealed checkpoint ``path`` (under ``root``) as an image: its layer written into the private dir
    ``spool``, manifest and config returned as bytes.

    Raises:
        ImageFormatError / LayoutError: not a sealed gpucr checkpoint, corrupt, outside the root, or zstd missing.
    """
    if compress not in COMPRESSIONS:
        raise ImageFormatError(f"unknown compression {compress!r}: one of {', '.join(COMPRESSIONS)}")
    zstd = _zstd() if compress == "zstd" else ""
    meta, raw_meta = _open_source(path, root)
    kind = _kind(meta)
    tar_path = spool / "layer.tar"
    fd = os.open(tar_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        hw = _HashingWriter(f)
        _tar_checkpoint(path, meta, raw_meta, hw)  # type: ignore[arg-type]
    diff_id = f"sha256:{hw.h.hexdigest()}"
    layer = tar_path
    if compress != "none":
        layer = spool / f"layer.tar{'.gz' if compress == 'gzip' else '.zst'}"
        fd = os.open(layer, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "wb") as out, open(tar_path, "rb") as src:
            if compress == "gzip":
                with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
                    shutil.copyfileobj(src, gz, _CHUNK)
            else:
                r = subprocess.run([zstd, "-q", "-3", "-T0", "-c"], stdin=src, stdout=out, stderr=subprocess.PIPE)
                if r.returncode != 0:
                    raise ImageFormatError(f"zstd failed compressing {path}: {r.stderr.decode(errors='replace')}")
        tar_path.unlink()
    layer_ref = BlobRef(LAYER_TYPE + COMPRESSIONS[compress],
                        diff_id if compress == "none" else sha256_file(layer), layer.stat().st_size,
                        {"org.opencontainers.image.title": f"{path.name}.tar", DIFF_ID: diff_id})
    name = path.name
    config = json.dumps({"architecture": _arch(), "os": "linux", "gpucr": {
        "format": FORMAT, "name": name, "kind": kind, "compression": compress, "diff_id": diff_id,
        "metadata_sha256": _digest(raw_meta), "gpucr_version": meta.gpucr_version,
        "container_id": meta.container_id or "", "created_at": meta.created_at,
        "files": len(meta.manifest), "bytes": sum(e.size for e in meta.manifest.values())}},
        sort_keys=True, separators=(",", ":")).encode()
    config_ref = BlobRef(CONFIG_TYPE, _digest(config), len(config))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(meta.created_at))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": ARTIFACT_TYPE,
        "config": config_ref.oci(), "layers": [layer_ref.oci()],
        "annotations": {ANN + "name": name, ANN + "kind": kind, ANN + "format": str(FORMAT),
                        ANN + "gpucr-version": meta.gpucr_version, ANN + "container-id": meta.container_id or "",
                        "org.opencontainers.image.created": created}}, sort_keys=True, separators=(",", ":")).encode()
    return Packed(manifest, BlobRef(MANIFEST_TYPE, _digest(manifest), len(manifest)), config, config_ref, layer,
                  layer_ref, kind)


# -- check ---------------------------------------------------------------------------------------------------------

def _ref(d: Any, where: str) -> BlobRef:
    try:
        ann = d.get("annotations") or {}
        ref = BlobRef(str(d["mediaType"]), str(d["digest"]), int(d["size"]), {str(k): str(v) for k, v in ann.items()})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ImageFormatError(f"{where}: malformed descriptor ({exc!r})") from exc
    if not ref.digest.startswith("sha256:") or len(ref.digest) != 71 or ref.size < 0:
        raise ImageFormatError(f"{where}: digest {ref.digest!r} / size {ref.size} is not a sha256 descriptor")
    return ref


def check_blob(data: bytes, ref: BlobRef, what: str) -> None:
    if len(data) != ref.size or _digest(data) != ref.digest:
        raise ImageFormatError(f"{what} does not match its descriptor ({len(data)} bytes, {_digest(data)}; expected "
                               f"{ref.size} bytes, {ref.digest}): the image is corrupt or was tampered with")


def check_manifest(data: bytes, ref: BlobRef, image: str) -> tuple[BlobRef, BlobRef, dict[str, str]]:
    """The config and layer descriptors of image ``image``'s manifest ``data`` (checked against ``ref``), and its
    annotations.

    Raises:
        ImageFormatError: not an OCI manifest of a gpucr checkpoint (names what it is instead), or tampered with.
    """
    if ref.media_type != MANIFEST_TYPE:
        raise ImageFormatError(f"image {image} is not a gpucr checkpoint: its target is a {ref.media_type}, not an "
                               f"OCI manifest of artifact type {ARTIFACT_TYPE}")
    if ref.size > MAX_JSON_BYTES:
        raise ImageFormatError(f"image {image}: its manifest is {ref.size} bytes: not a gpucr checkpoint")
    check_blob(data, ref, f"image {image}: the manifest")
    try:
        m = json.loads(data)
        art, cfg, layers = m.get("artifactType"), m["config"], m["layers"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageFormatError(f"image {image}: its manifest is not an OCI manifest ({exc!r})") from exc
    config = _ref(cfg, f"image {image}: config")
    if art != ARTIFACT_TYPE or config.media_type != CONFIG_TYPE:
        raise ImageFormatError(f"image {image} is not a gpucr checkpoint (artifact type {art!r}, config "
                               f"{config.media_type!r}; gpucr export writes {ARTIFACT_TYPE}): import only images "
                               "made by `gpucr export`")
    if not isinstance(layers, list) or len(layers) != 1:
        raise ImageFormatError(f"image {image}: a gpucr checkpoint has one layer, this manifest lists "
                               f"{len(layers) if isinstance(layers, list) else layers!r}")
    layer = _ref(layers[0], f"image {image}: layer")
    if layer.media_type not in {LAYER_TYPE + s for s in COMPRESSIONS.values()}:
        raise ImageFormatError(f"image {image}: layer type {layer.media_type!r} is not one gpucr writes")
    ann = m.get("annotations") or {}
    return config, layer, {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {}


def check_config(data: bytes, ref: BlobRef, image: str) -> dict[str, Any]:
    """gpucr's part of the config blob (checked against ``ref``). Raises ImageFormatError."""
    if ref.size > MAX_JSON_BYTES:
        raise ImageFormatError(f"image {image}: its config is {ref.size} bytes: not a gpucr checkpoint")
    check_blob(data, ref, f"image {image}: the config")
    try:
        g = json.loads(data)["gpucr"]
        if not isinstance(g, dict):
            raise TypeError("not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageFormatError(f"image {image}: its config holds no gpucr section ({exc!r})") from exc
    if g.get("format") != FORMAT:
        raise ImageFormatError(f"image {image} has gpucr image format {g.get('format')!r}; this gpucr reads "
                               f"{FORMAT}: import it with the gpucr that exported it")
    for key in ("diff_id", "metadata_sha256"):
        if not isinstance(g.get(key), str) or not str(g[key]).startswith("sha256:"):
            raise ImageFormatError(f"image {image}: its config's gpucr.{key} is missing or not a sha256 digest")
    return g


# -- unpack --------------------------------------------------------------------------------------------------------

class _HashingReader:
    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.h.update(b)
        self.n += len(b)
        return b

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


@contextmanager
def _decompressed(layer: Path, media_type: str) -> Iterator[IO[bytes]]:
    if media_type.endswith("+zstd"):
        p = subprocess.Popen([_zstd(), "-d", "-q", "-c", str(layer)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout is not None
        try:
            yield p.stdout
            p.stdout.read()
        except BaseException:
            p.kill()
            raise
        finally:
            p.stdout.close()
            err = p.stderr.read() if p.stderr else b""
            p.stderr.close() if p.stderr else None
            rc = p.wait()
        if rc != 0:
            raise ImageFormatError(f"zstd could not decompress the layer: {err.decode(errors='replace').strip()}")
    elif media_type.endswith("+gzip"):
        with gzip.open(layer, "rb") as f:
            yield f  # type: ignore[misc]
    else:
        with open(layer, "rb") as f:
            yield f


def _member_path(m: tarfile.TarInfo, image: str) -> Path:
    name = m.name.rstrip("/") if m.isdir() else m.name
    rel = Path(name)
    if not name or rel.is_absolute() or any(p in ("..", "") for p in name.split("/") if p != ".") \
            or rel == Path("."):
        raise ImageFormatError(f"image {image}: the layer names {m.name!r}, outside the checkpoint: refusing it")
    if not (m.isfile() or m.isdir()):
        what = "a symlink" if m.issym() else "a hard link" if m.islnk() else \
            "a fifo" if m.isfifo() else "a device" if m.isdev() else f"type {m.type!r}"
        raise ImageFormatError(f"image {image}: the layer holds {m.name!r}, {what}: a gpucr checkpoint holds only "
                               "regular files and directories; refusing it")
    return rel


def _extract(tar_stream: IO[bytes], dst: Path, image: str, *, skip_top: bool = False) -> set[str]:
    files: set[str] = set()
    with tarfile.open(fileobj=tar_stream, mode="r|") as t:  # type: ignore[call-overload]
        for m in t:
            if skip_top and m.isdir() and m.name.strip("/") in ("", "."):
                continue  # the tar's own top dir (dst itself)
            rel = _member_path(m, image)
            out = dst / rel
            for parent in reversed(rel.parents[:-1]):  # our own dirs only: never a link to follow
                q = dst / parent
                if not os.path.lexists(q):
                    os.mkdir(q, DIR_MODE)
                elif not stat.S_ISDIR(os.lstat(q).st_mode):
                    raise ImageFormatError(f"image {image}: the layer puts {m.name!r} under a file: refusing it")
            if m.isdir():
                if not os.path.lexists(out):
                    os.mkdir(out, DIR_MODE)
                elif not stat.S_ISDIR(os.lstat(out).st_mode):
                    raise ImageFormatError(f"image {image}: the layer names {m.name!r} twice: refusing it")
                continue
            f = t.extractfile(m)
            assert f is not None
            try:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
            except FileExistsError as exc:
                raise ImageFormatError(f"image {image}: the layer names {m.name!r} twice: refusing it") from exc
            with os.fdopen(fd, "wb") as o:
                shutil.copyfileobj(f, o, _CHUNK)
            files.add(rel.as_posix())
    return files


@contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A fresh staged dir beside ``final`` (``.NAME.gpucr-tmp-<node>-<pid>``; a crashed import's leftovers tidied
    first), removed on any failure inside the block: an import leaves a whole checkpoint or nothing."""
    staged = staging_path(final)
    CheckpointDir.tidy_after_crash(final)
    if os.path.lexists(staged):
        shutil.rmtree(staged)
    os.mkdir(staged, DIR_MODE)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _publish(staged: Path, final: Path, root: Path) -> None:
    """The checked ``staged`` checkpoint made durable and renamed to ``final``; refused if that name appeared
    meanwhile (another import). Inside :func:`_staging`, which removes ``staged`` when this raises."""
    fsync_tree(staged, tighten=True)
    if os.path.lexists(final):
        raise ImageFormatError(f"checkpoint {final.name!r} appeared under {root} during the import: import under "
                               "another name")
    os.rename(staged, final)
    fsync_path(final.parent, directory=True)


def unpack(layer: Path, layer_ref: BlobRef, config: dict[str, Any], final: Path, root: Path, image: str) -> Metadata:
    """Unpack the spooled ``layer`` (checked against ``layer_ref``) into a new checkpoint at ``final`` under
    ``root``: staged beside it (``.NAME.gpucr-tmp-<node>-<pid>``), checked whole, fsynced, then renamed. Nothing is
    written under ``final`` unless every check passes; the staged dir is removed on any failure.

    Raises:
        ImageFormatError: the layer is tampered with or holds something a checkpoint does not; ``final`` exists.
        LayoutError: outside the root.
    """
    CheckpointDir.check_root(final, root)
    if os.path.lexists(final):
        raise ImageFormatError(f"checkpoint {final.name!r} exists already under {root}: import under another name, "
                               "or remove it first")
    if layer.stat().st_size != layer_ref.size or sha256_file(layer) != layer_ref.digest:
        raise ImageFormatError(f"image {image}: its layer does not match its digest {layer_ref.digest}: the image is "
                               "corrupt or was tampered with; export it again")
    diff_id = layer_ref.annotations.get(DIFF_ID, "")
    if diff_id != config.get("diff_id"):
        raise ImageFormatError(f"image {image}: the layer's diff-id {diff_id!r} differs from the config's "
                               f"{config.get('diff_id')!r}: tampered with")
    with _staging(final) as staged:
        try:
            with _decompressed(layer, layer_ref.media_type) as stream:
                hr = _HashingReader(stream)
                files = _extract(hr, staged, image)  # type: ignore[arg-type]
                hr.drain()
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
            raise ImageFormatError(f"image {image}: its layer is not a readable tar ({exc}): corrupt") from exc
        if f"sha256:{hr.h.hexdigest()}" != diff_id:
            raise ImageFormatError(f"image {image}: the unpacked layer does not match its diff-id {diff_id}: the "
                                   "image is corrupt or was tampered with")
        raw = (staged / METADATA).read_bytes() if METADATA in files else b""
        if not raw:
            raise ImageFormatError(f"image {image}: the layer holds no {METADATA}: not a gpucr checkpoint")
        if _digest(raw) != config.get("metadata_sha256"):
            raise ImageFormatError(f"image {image}: its {METADATA} differs from the one its config names: tampered")
        meta = Metadata.from_json(raw.decode(errors="replace"), f"image {image}: {METADATA}")
        extra = sorted(files - set(meta.manifest) - {METADATA})
        if extra:
            raise ImageFormatError(f"image {image}: the layer holds files that {METADATA} does not list "
                                   f"({', '.join(extra[:5])}): refusing it")
        CheckpointDir(staged).verify(meta, full=True)
        CheckpointDir(staged).stamp_times(meta)  # the content is proven: its sealing times make it restorable
        _publish(staged, final, root)
        return meta


# -- containerd's own checkpoint image (``ctr c checkpoint --task``) -------------------------------------------------

#: what ``ctr c checkpoint`` writes (containerd's ``images/mediatypes.go``, 1.7 and 2.x): the image's target is an
#: index whose entries are the blobs themselves, not manifests
INDEX_TYPES = frozenset({"application/vnd.oci.image.index.v1+json",
                         "application/vnd.docker.distribution.manifest.list.v2+json"})
CTR_CRIU_TAR = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
CTR_RW_TAR = "application/vnd.containerd.container.rw.tar"
#: the rw layer (``ctr c checkpoint --rw``): containerd's diff of the container's snapshot, which 1.7 and 2.x write
#: as an ordinary gzipped OCI layer (seen here on 1.7.24 and 2.1.9), not as CTR_RW_TAR; any of these is taken
RW_TYPES = frozenset({CTR_RW_TAR, "application/vnd.oci.image.layer.v1.tar",
                      "application/vnd.oci.image.layer.v1.tar+gzip",
                      "application/vnd.docker.image.rootfs.diff.tar.gzip"})
_DESCRIPTORS = "descriptors.json"
#: where an imported rw layer lies, beside ``images/`` (the name CRI's archive gives it; ``restore_source.stage``)
ROOTFS_DIFF = "rootfs-diff.tar"


def check_ctr_index(data: bytes, ref: BlobRef, image: str) -> tuple[BlobRef, BlobRef | None, list[str]]:
    """The CRIU tar's and the rw layer's (None without ``--rw``) descriptors in containerd's checkpoint index
    ``data`` (checked against ``ref``), and the media types of the index's other entries (the container's record,
    the checkpoint and runtime options, its base image with ``--image``): not imported.

    Raises:
        ImageFormatError: not an index holding exactly one CRIU tar (names what it is instead), or tampered with.
    """
    if ref.size > MAX_JSON_BYTES:
        raise ImageFormatError(f"image {image}: its index is {ref.size} bytes: not a containerd checkpoint image")
    check_blob(data, ref, f"image {image}: the index")
    try:
        entries = [_ref(d, f"image {image}: index entry") for d in json.loads(data)["manifests"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageFormatError(f"image {image}: its index is not an OCI index ({exc!r})") from exc
    criu = [e for e in entries if e.media_type == CTR_CRIU_TAR]
    if len(criu) != 1:
        raise ImageFormatError(
            f"image {image} is not a gpucr checkpoint, nor a containerd checkpoint image: its index lists "
            f"{len(criu)} CRIU images ({CTR_CRIU_TAR}) among {sorted({e.media_type for e in entries})}; import an "
            "image made by `gpucr export` or by `ctr c checkpoint --task`")
    rw = [e for e in entries if e.media_type in RW_TYPES]
    if len(rw) > 1:
        raise ImageFormatError(f"image {image}: its index lists {len(rw)} rw layers "
                               f"({sorted(e.media_type for e in rw)}): not what `ctr c checkpoint --rw` writes")
    return criu[0], (rw[0] if rw else None), sorted(e.media_type for e in entries if e.media_type != CTR_CRIU_TAR
                                                    and e.media_type not in RW_TYPES)


def _check_spooled(path: Path, ref: BlobRef, what: str, image: str) -> None:
    if path.stat().st_size != ref.size or sha256_file(path) != ref.digest:
        raise ImageFormatError(f"image {image}: its {what} ({ref.media_type}) does not match its digest "
                               f"{ref.digest}: the content store's copy is corrupt or was tampered with; "
                               "checkpoint the container again")


def _place_rw(rw: Path, dst: Path, image: str) -> None:
    """The rw layer as ``dst`` (``rootfs-diff.tar``, what the restore applies: ``ckpt.rootfs_diff``), gunzipped
    when containerd compressed it, and judged member by member now (refused whole, as the restore would)."""
    from .rootfs_diff import RootfsDiffError, check_archive

    with open(rw, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if gz:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "wb") as out, gzip.open(rw, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
    else:
        os.rename(rw, dst)
    try:
        check_archive(dst)
    except RootfsDiffError as exc:
        raise ImageFormatError(f"image {image}: its rw layer is refused ({exc})") from exc


def unpack_ctr(criu_tar: Path, criu_ref: BlobRef, final: Path, root: Path, image: str, extra: dict[str, Any],
               rw: tuple[Path, BlobRef] | None = None) -> Metadata:
    """Unpack the spooled CRIU tar of containerd's checkpoint image ``image`` (checked against ``criu_ref``) into
    ``final/images``, its spooled rw layer (``rw``: the container's rootfs changes, ``ctr c checkpoint --rw``) as
    ``final/rootfs-diff.tar``, and seal it (``gpucr.json``, kind "runtime" as ``gpucr seal`` writes, plus
    ``extra``): staged beside ``final``, fsynced, then renamed; nothing stays behind on a failure. The same member
    rules as :func:`unpack` (regular files and dirs, plain relative names); containerd's tar names its top dir ``.``.

    Raises:
        ImageFormatError: a blob does not match its digest, the CRIU tar holds something a checkpoint does not, no
            runc ``descriptors.json`` (not a container checkpoint runc can restore) or an unreadable CUDA marker,
            the rw layer holds what a restore refuses; ``final`` exists.
        LayoutError: outside the root.
    """
    CheckpointDir.check_root(final, root)
    if os.path.lexists(final):
        raise ImageFormatError(f"checkpoint {final.name!r} exists already under {root}: import under another name, "
                               "or remove it first")
    _check_spooled(criu_tar, criu_ref, "CRIU tar", image)
    if rw is not None:
        _check_spooled(rw[0], rw[1], "rw layer", image)
    with _staging(final) as staged:
        os.mkdir(staged / IMAGES, DIR_MODE)
        try:
            with open(criu_tar, "rb") as f:
                files = _extract(f, staged / IMAGES, image, skip_top=True)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ImageFormatError(f"image {image}: its CRIU images are not a readable tar ({exc}): corrupt") from exc
        if _DESCRIPTORS not in files:
            raise ImageFormatError(f"image {image}: its CRIU images hold no runc {_DESCRIPTORS}: not a container "
                                   "checkpoint runc can restore")
        cuda = _marker.MARKER in files
        if cuda:  # the front's CUDA marker, kept as it is; unreadable, the restore would refuse it: refused now
            try:
                _marker.read(str(staged / IMAGES))
            except (_marker.MarkerError, ValueError, OSError) as exc:
                raise ImageFormatError(f"image {image}: gpucr's CUDA marker in its CRIU images is unreadable "
                                       f"({exc}): checkpoint the container again") from exc
        if rw is not None:
            _place_rw(rw[0], staged / ROOTFS_DIFF, image)
        meta = CheckpointDir(staged).finalize(Metadata(extra={"kind": "runtime", "mounts": {}, "cuda_marker": cuda,
                                                              **extra}))
        _publish(staged, final, root)
        return meta

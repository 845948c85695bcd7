"""The checkpoint directory: private creation, refusal rules, ``gpucr.json`` metadata with a manifest, and host
resource checks made before the expensive steps; :class:`CheckpointStore` is the engine's dict view of it.

Layout of a checkpoint ``DIR`` (dirs 0700, files 0600, because images hold the process's whole memory)::

    DIR/gpucr.json      metadata (written last, atomically: its presence marks a complete checkpoint)
    DIR/images/         CRIU's images, with dump.log (and later restore.log) beside them

A checkpoint is written under a temporary sibling name, ``.DIR.gpucr-tmp-<pid>`` (:meth:`CheckpointDir.stage`);
every file and directory is fsynced, ``gpucr.json`` is written last, and the directory is renamed into place and its
parent fsynced (:meth:`CheckpointDir.commit`). So ``DIR`` is either absent, the previous checkpoint (``--force``
replaces it only by that rename), or a complete, durable one; a crash leaves only the temporary name, which
:meth:`CheckpointDir.open` refuses.

``gpucr.json`` records the format version, gpucr, driver, CRIU and kernel versions, per-process GPU facts (filled by
the engine), the container id, timings, sizes, and a manifest (size + sha256) of every file of the checkpoint, so a
truncated or corrupt checkpoint is refused *before* CRIU runs on restore.

Who may have written a checkpoint: restore runs as root and feeds the images to CRIU, so a checkpoint dir (and the
dirs gpucr creates for it) must be owned by this user (root) and not group- or world-writable, and must lie inside
the node's ``checkpoint_root`` (``/etc/gpucr/config.toml``) once symlinks are resolved. Nothing here follows a
symlink: ``--force`` replaces only a complete gpucr checkpoint (a valid ``gpucr.json``), removing its entries without
following links, and modes are set through ``O_NOFOLLOW`` descriptors.

Deliberately not here: what goes into the images (CRIU), GPU discovery (the CUDA engine).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import mmap
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import GpucrError
from ..host import _mount
from ..host.nodeid import node_tag, tag_is_this_node
from ..host.proc import alive
from .durable import DIR_MODE, FILE_MODE, fsync_path, fsync_tree

__all__ = [
    "CRIU_DUMP", "DUMP_FLAGS", "FORMAT_VERSION", "IMAGES", "METADATA", "CheckpointDir", "FileEntry", "GpuProcess", "LayoutError", "Metadata",
    "CheckpointStore", "check_disk_space", "check_owner", "dump_record", "leftover_pid", "orphan_pid", "own_suffix",
    "staging_path",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA = "gpucr.json"
IMAGES = "images"
#: gpucr.json's record of the CRIU options a dump used that its restore must be given again (runc restore's
#: --tcp-established, --ext-unix-sk, --file-locks, --shell-job): without them CRIU fails on those objects or, for file
#: locks, silently restores none
CRIU_DUMP = "criu_dump"
DUMP_FLAGS = ("tcp_established", "ext_unix_sk", "file_locks", "shell_job")
_CHUNK = 4 << 20
_EXCLUDED = frozenset({METADATA, f".{METADATA}.tmp"})
#: CRIU's logs: restore.log is written by every restore, dump.log (and stats-dump) still by CRIU after ``post-dump``,
#: when a checkpoint may already be sealed; never part of the manifest
_LOGS = frozenset({"restore.log", "dump.log", "stats-dump", "stats-restore"})
#: a filesystem with less free space than this after a failed dump is reported full
FULL_BELOW_BYTES = 2 << 20
#: the marker of a checkpoint dir's temporary name while it is written: ``.NAME.gpucr-tmp-<node tag>-<pid>`` (the
#: node's tag, host/nodeid.py: a checkpoint root may be shared by several nodes, where a pid alone is not unique)
STAGING_MARK = ".gpucr-tmp-"
#: the marker of a replaced checkpoint moved aside until the new one stands: ``.NAME.gpucr-old-<node tag>-<pid>``
ASIDE_MARK = ".gpucr-old-"


class LayoutError(GpucrError):
    """A checkpoint directory is unusable: refused, missing, corrupt, or the host lacks room for it."""


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str
    #: the file's modification time when the checkpoint was sealed (None: sealed before gpucr recorded it). With
    #: the size it lets a restore refuse a changed file at once, without hashing (:meth:`CheckpointDir.verify`)
    mtime_ns: int | None = None


@dataclass
class GpuProcess:
    """One process that held CUDA state at checkpoint time (the engine fills this)."""

    pid: int
    gpu_uuids: list[str] = field(default_factory=list)
    chips: list[str] = field(default_factory=list)     # e.g. "NVIDIA H200", one per UUID
    memory_bytes: int = 0


def dump_record(options: Mapping[str, Any]) -> dict[str, bool]:
    """The ``criu_dump`` record of a dump made with CRIU ``options`` (DumpOptions' field names)."""
    return {k: bool(options.get(k)) for k in DUMP_FLAGS}


@dataclass
class Metadata:
    """The content of ``gpucr.json``. Unknown keys from a newer gpucr are kept in ``extra``."""

    format_version: int = FORMAT_VERSION
    gpucr_version: str = __version__
    created_at: float = field(default_factory=time.time)
    root_pid: int | None = None
    container_id: str | None = None
    driver_version: str | None = None
    processes: list[GpuProcess] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    manifest: dict[str, FileEntry] = field(default_factory=dict)
    #: ``gpucr checkpoint``'s record of the workload: the CUDA facts restore checks against the node (driver API,
    #: GPU inventory by UUID, processes with their GPU bytes per UUID), the cgroup freezer it lived in, and for a
    #: container what CRIU needs to restore it (:mod:`.container`)
    leave_running: bool = False
    frozen_before: bool = False
    freezer: dict[str, Any] = field(default_factory=dict)
    cuda: dict[str, Any] = field(default_factory=dict)
    container: dict[str, Any] = field(default_factory=dict)
    #: how the driver copied the GPU memory (THP mode, the node's own, CustomStorage): ``CudaSteps.stage``
    driver_stage: dict[str, Any] = field(default_factory=dict)
    #: the CRIU that dumped (e.g. "4.2.1") and the kernel release it ran on (``uname -r``): a restore is refused on
    #: an older CRIU or kernel (:mod:`.versions`). None: unknown (sealed before gpucr recorded them,
    #: or imported from a runtime's checkpoint image that does not say)
    criu_version: str | None = None
    kernel_release: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a key of a typed field given in ``extra`` (by a caller that predates it) goes to that field, which
        # to_json would otherwise write over it
        for name in [k for k in self.extra if k in self.__dataclass_fields__ and k != "extra"]:
            value = self.extra.pop(name)
            if getattr(self, name) in (None, {}, [], False):
                setattr(self, name, value)

    def to_json(self) -> str:
        d = asdict(self)
        extra = d.pop("extra")
        return json.dumps({**extra, **d}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = METADATA) -> Metadata:
        """Parse and validate.

        Raises:
            LayoutError: not JSON, an unknown format version, or a field of the wrong type (names it).
        """
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LayoutError(f"{where} is not valid JSON ({exc}): the checkpoint is corrupt or truncated") from exc
        if not isinstance(raw, dict):
            raise LayoutError(f"{where} does not hold a JSON object: the checkpoint is corrupt")
        fv = raw.get("format_version")
        if fv != FORMAT_VERSION:
            raise LayoutError(f"{where} has format version {fv!r}; this gpucr ({__version__}) reads version "
                              f"{FORMAT_VERSION}: restore with the gpucr that wrote it")

        def want(key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
            value = raw.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
                raise LayoutError(f"{where}: field {key!r} is {value!r}, not a {getattr(kind, '__name__', kind)}: "
                                  "the checkpoint is corrupt")
            return value

        try:
            manifest = {name: FileEntry(int(e["size"]), str(e["sha256"]),
                                        None if e.get("mtime_ns") is None else int(e["mtime_ns"]))
                        for name, e in want("manifest", dict).items()}
            procs = [GpuProcess(int(p["pid"]), list(p.get("gpu_uuids", [])), list(p.get("chips", [])),
                                int(p.get("memory_bytes", 0))) for p in want("processes", list)]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LayoutError(f"{where}: malformed manifest or processes entry ({exc!r}): the checkpoint is "
                              "corrupt") from exc
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            format_version=fv, gpucr_version=want("gpucr_version", str), created_at=want("created_at", (int, float)),
            root_pid=want("root_pid", int, True), container_id=want("container_id", str, True),
            driver_version=want("driver_version", str, True), processes=procs,
            timings=want("timings", dict), sizes=want("sizes", dict), manifest=manifest,
            leave_running=bool(want("leave_running", bool, True)), frozen_before=bool(want("frozen_before", bool, True)),
            freezer=want("freezer", dict, True) or {}, cuda=want("cuda", dict, True) or {},
            container=want("container", dict, True) or {}, driver_stage=want("driver_stage", dict, True) or {},
            criu_version=want("criu_version", str, True), kernel_release=want("kernel_release", str, True),
            extra={k: v for k, v in raw.items() if k not in known},
        )


#: files larger than this are hashed as a tree of pieces of this size, the pieces in parallel (a GPU process's
#: pages image holds all its GPU memory: tens of GiB hashed on one core doubled the checkpoint's wall time)
PIECE_BYTES = 256 << 20
_TREE_PREFIX = "sha256-tree-256MiB:"


def _sha256_range(fd: int, start: int, length: int, stop: threading.Event | None = None) -> bytes:
    h = hashlib.sha256()
    end = start + length
    while start < end:
        if stop is not None and stop.is_set():
            raise _Stopped()
        chunk = os.pread(fd, min(_CHUNK, end - start), start)
        if not chunk:
            break
        h.update(chunk)  # hashlib releases the GIL on large buffers: pieces hash on several cores
        start += len(chunk)
    return h.digest()


class _Stopped(Exception):
    """A background hash was cancelled (the restore it belonged to failed first)."""


def _pieces(size: int) -> list[tuple[int, int]]:
    """(start, length) of the pieces a file of ``size`` bytes is hashed in (one piece up to :data:`PIECE_BYTES`)."""
    if size <= PIECE_BYTES:
        return [(0, size)]
    return [(st, min(PIECE_BYTES, size - st)) for st in range(0, size, PIECE_BYTES)]


def _combine(size: int, digests: list[bytes]) -> str:
    """The manifest digest of a file from its pieces' digests (see :func:`_sha256`)."""
    if size <= PIECE_BYTES:
        return digests[0].hex()
    return _TREE_PREFIX + hashlib.sha256(b"".join(digests)).hexdigest()


def _workers(n: int) -> int:
    return max(1, min(n, os.cpu_count() or 1, IO_THREADS))


#: threads that copy, hash and prefetch image pieces (the disk measured flat from 1 to 16 threads with O_DIRECT,
#: sha256 runs at about 1.5-2 GB/s per core: several keep the disk busy)
IO_THREADS = 8
_IO_CHUNK = 8 << 20
_ALIGN = 4096
_io_local = threading.local()


def _io_buffer() -> memoryview:
    """This thread's page-aligned copy buffer (an anonymous mmap: O_DIRECT needs aligned memory)."""
    buf = getattr(_io_local, "buf", None)
    if buf is None:
        buf = _io_local.buf = mmap.mmap(-1, _IO_CHUNK)
    return memoryview(buf)


def _copy_piece(sfd: int, dfd: int, direct_fd: int | None, start: int, length: int) -> bytes:
    """Copy ``length`` bytes at ``start`` from ``sfd`` to ``dfd`` and return their sha256, in one pass over one
    buffer: aligned chunks go through ``direct_fd`` (O_DIRECT: no second copy in the page cache), a short tail
    through ``dfd``."""
    h = hashlib.sha256()
    mv = _io_buffer()
    off, end = start, start + length
    while off < end:
        n = os.preadv(sfd, [mv[:min(_IO_CHUNK, end - off)]], off)
        if n <= 0:
            raise OSError(errno.EIO, f"short read at offset {off}")
        h.update(mv[:n])
        fd = direct_fd if direct_fd is not None and n % _ALIGN == 0 else dfd
        done = 0
        while done < n:
            done += os.pwritev(fd, [mv[done:n]], off + done)
        off += n
    return h.digest()


def _sha256(path: Path) -> str:
    """The file's digest: plain sha256 hex up to :data:`PIECE_BYTES`; above, ``sha256-tree-256MiB:`` + the sha256
    of the pieces' sha256 digests in order (computed in parallel threads)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pieces = _pieces(size)
        if len(pieces) == 1:
            return _sha256_range(fd, 0, size).hex()
        with ThreadPoolExecutor(max_workers=_workers(len(pieces)), thread_name_prefix="gpucr-sha256") as pool:
            digests = list(pool.map(lambda p: _sha256_range(fd, *p), pieces))
        return _combine(size, digests)
    finally:
        os.close(fd)


def _is_pages(name: str) -> bool:
    """CRIU's page data (``images/pages-N.img``): raw memory that CRIU copies into the tasks and never parses."""
    p = Path(name)
    return p.parent == Path(IMAGES) and p.name.startswith("pages-") and p.name.endswith(".img")


class PendingVerify:
    """The sha256 check of a checkpoint's page images, running in threads while CRIU restores (it reads the pages
    ahead of CRIU, so it is also the prefetch from disk). Every image CRIU parses is checked before CRIU starts;
    page data only fills the restored tasks' memory, and :meth:`wait` (at CRIU's ``post-restore``, before the tasks
    run again: a failure there makes CRIU kill them) refuses a checkpoint whose pages were changed."""

    def __init__(self, cp: CheckpointDir, entries: dict[str, FileEntry]) -> None:
        self.cp = cp
        self._verdict: str | None = None
        self._stop = threading.Event()
        n = sum(len(_pieces(e.size)) for e in entries.values())
        self._pool = ThreadPoolExecutor(max_workers=_workers(n), thread_name_prefix="gpucr-verify")
        self._fds: list[int] = []
        self._jobs: list[tuple[str, FileEntry, list[Future[bytes]]]] = []
        try:
            for name, entry in entries.items():
                fd = os.open(cp.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                self._fds.append(fd)
                futs = [self._pool.submit(_sha256_range, fd, st, ln, self._stop) for st, ln in _pieces(entry.size)]
                self._jobs.append((name, entry, futs))
        except OSError as exc:
            self.cancel()
            raise LayoutError(f"cannot read checkpoint {cp.path}: {exc}") from exc

    def wait(self) -> None:
        """Block until every page image is hashed (again: the first verdict).

        Raises:
            LayoutError: the first page image that does not match its sha256 (or could not be read).
        """
        if self._verdict is None:
            try:
                self._check()
                self._verdict = ""
            except LayoutError as exc:
                self._verdict = str(exc)
        if self._verdict:
            raise LayoutError(self._verdict)

    def _check(self) -> None:
        try:
            for name, entry, futs in self._jobs:
                try:
                    digest = _combine(entry.size, [f.result() for f in futs])
                except (_Stopped, CancelledError) as exc:
                    raise LayoutError(f"the check of {name} of checkpoint {self.cp.path} was cancelled") from exc
                except OSError as exc:
                    raise LayoutError(f"cannot read {name} of checkpoint {self.cp.path}: {exc}") from exc
                if digest != entry.sha256:
                    raise LayoutError(f"checkpoint {self.cp.path} is corrupt: {name} does not match its sha256")
        finally:
            self.cancel()

    def cancel(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def check_owner(path: Path, st: os.stat_result | None = None, *, what: str = "checkpoint dir") -> None:
    """``path`` (not followed when a symlink) is owned by this user (root) and not group- or world-writable.

    Raises:
        LayoutError: names the path, what is wrong, and the fix.
    """
    try:
        st = st or os.lstat(path)
    except OSError as exc:
        raise LayoutError(f"cannot check {what} {path}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise LayoutError(f"{what} {path} is a symlink: give the real path (gpucr never follows links there)")
    fix = f"chown {os.geteuid()}:{os.getegid()} {path} && chmod go-w {path}, or choose another dir"
    if st.st_uid != os.geteuid():
        raise LayoutError(f"{what} {path} is owned by uid {st.st_uid}, not by uid {os.geteuid()} who runs gpucr: "
                          f"another user could change what restore feeds to CRIU; {fix}")
    if st.st_mode & 0o022:
        raise LayoutError(f"{what} {path} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o}): "
                          f"another user could change what restore feeds to CRIU; {fix}")


def _chmod_nofollow(path: Path, mode: int) -> None:
    """chmod a dir or regular file through an O_NOFOLLOW descriptor (a symlink is refused, never followed)."""
    try:
        fd = os.open(path, _NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LayoutError(f"{path} is a symlink: a checkpoint holds none; remove it") from exc
        raise
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind not in (stat.S_IFDIR, stat.S_IFREG):
            raise LayoutError(f"{path} is not a regular file or directory: a checkpoint holds none; remove it")
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _lstat(path: Path) -> os.stat_result | None:
    """``path``'s own status (a link's, not its target's); None when nothing is there."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove_checkpoint(path: Path) -> None:
    """Remove the checkpoint in the dir ``path`` (``images/``, ``gpucr.json`` and its temporary file; other entries
    stay) without following links: a link is removed itself, a dir through rmtree's fd-based walk."""
    for name in (IMAGES, METADATA, f".{METADATA}.tmp"):
        p = path / name
        st = _lstat(p)
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def _remove_entry(path: Path) -> None:
    """Remove ``path`` without following it: a symlink or file is unlinked, a dir removed by rmtree's fd-based walk."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _non_empty(path: Path) -> bool:
    with os.scandir(path) as it:
        return any(True for _ in it)


def _mkdirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 and owned by us (an existing symlinked parent is fine:
    the root check resolved it)."""
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        os.mkdir(d, DIR_MODE)
        _chmod_nofollow(d, DIR_MODE)


# --- durability: fsync and the atomic final rename ------------------------------------------------------------------


def staging_path(path: Path, pid: int | None = None) -> Path:
    """The temporary sibling a checkpoint for ``path`` is written under: ``.NAME.gpucr-tmp-<node tag>-<pid>``."""
    return path.with_name(f".{path.name}{STAGING_MARK}{node_tag()}-{os.getpid() if pid is None else pid}")


def _marked(path: Path, mark: str) -> tuple[str, int] | None:
    """(node tag, pid) in ``.NAME<mark><tag>-<pid>`` (or the older ``.NAME<mark><pid>``: tag ""), or None."""
    name = path.name
    if not name.startswith(".") or mark not in name:
        return None
    tag, _, pid = name.rsplit(mark, 1)[1].rpartition("-")
    return (tag, int(pid)) if pid.isdigit() else None


def _aside_owner(path: Path) -> int | None:
    """The pid in the name of a replaced checkpoint moved aside (``.NAME.gpucr-old-<tag>-<pid>``), or None."""
    m = _marked(path, ASIDE_MARK)
    return m[1] if m else None


def _staging_owner(path: Path) -> int | None:
    """The pid in a temporary checkpoint name (of any node), or None when ``path`` is not one."""
    m = _marked(path, STAGING_MARK)
    return m[1] if m else None


def own_suffix(mark: str) -> str:
    """``<mark><node tag>-<pid>``: the tail of a temporary name this process writes (unique on a shared root)."""
    return f"{mark}{node_tag()}-{os.getpid()}"


def leftover_pid(path: Path, mark: str) -> int | None:
    """The pid in ``path``'s ``<mark><tag>-<pid>`` tail when the tag is this node's (or absent: names written before
    tags); None for another node's name (its pid means nothing here: it is left alone) or no such tail."""
    m = _marked(path, mark)
    return m[1] if m and tag_is_this_node(m[0]) else None


def orphan_pid(path: Path, mark: str) -> int | None:
    """The pid of the dead gpucr process of this node that left the dir ``path`` (named ``...<mark><tag>-<pid>``),
    when ``path`` is a real dir of ours: it may be removed. None for anything to leave alone: no such name, a live
    owner (or this process), a symlink or another file, a dir that is not ours (logged)."""
    owner = leftover_pid(path, mark)
    if owner is None or owner == os.getpid() or alive(owner):
        return None
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return None
        check_owner(path, st)
    except (OSError, LayoutError) as exc:
        log.warning("leaving %s alone: %s", path, exc)
        return None
    return owner


class ImageCopier:
    """Copies a dump from the memory stage into a checkpoint's ``images/`` at disk rate, hashing each piece from
    the buffer it is written from (the manifest then costs no extra pass): pieces of :data:`PIECE_BYTES` in parallel
    threads, O_DIRECT for the aligned part (no second copy in the page cache) into blocks allocated just before
    (:attr:`PREALLOCATE`), every file fdatasynced and checked to have the dump's size.

    With :meth:`follow` it starts while CRIU is still dumping: CRIU appends to its page images (``pages-N.img``)
    sequentially, so every whole piece below a page image's current size is final and is copied at once; the rest
    (the last pieces, and every other image, small) once CRIU is done (:meth:`finish`). The disk then works while
    CRIU copies memory, and the dump and the write overlap."""

    POLL_S = 0.05
    #: allocate the blocks of the pieces before they are written (``fallocate``, never past the source's size): an
    #: O_DIRECT write into allocated blocks inside the file's size is an overwrite, which ext4 lets run in parallel;
    #: one past the end or into a hole extends or allocates, each under the inode's exclusive lock (bench/NOTES.md)
    PREALLOCATE = True
    #: while following, the blocks are allocated this far ahead of the pieces queued: ext4's fallocate waits for every
    #: O_DIRECT write in flight on the file (its inode_dio_wait), so one per queued piece drained the writers each
    #: poll; at most as far again as the image already is (a small dump allocates little), the excess past the
    #: dump's final size cut at :meth:`finish` (or :meth:`cancel`)
    PREALLOCATE_AHEAD = 4 << 30

    def __init__(self, cp: CheckpointDir, src: Path) -> None:
        self.cp, self.src = cp, src
        self._pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="gpucr-write")
        self._fds: list[int] = []
        #: per copied file (relative to ``src``): source fd, destination fd, O_DIRECT fd, next piece, piece futures
        self._files: dict[str, tuple[int, int, int | None, list[int], list[Future[bytes]]]] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._poll_error: BaseException | None = None

    def follow(self) -> ImageCopier:
        """Start copying the page images' finished pieces while CRIU writes them."""
        self._poller = threading.Thread(target=self._poll, name="gpucr-follow", daemon=True)
        self._poller.start()
        return self

    def _poll(self) -> None:
        try:
            while not self._stop.wait(self.POLL_S):
                for name in os.listdir(self.src):
                    if name.startswith("pages-") and name.endswith(".img"):
                        size = os.stat(self.src / name).st_size
                        self._submit(name, size, final=False)
        except BaseException as exc:  # reported by finish()
            self._poll_error = exc

    def _open(self, rel: str) -> tuple[int, int, int | None, list[int], list[Future[bytes]]]:
        f = self._files.get(rel)
        if f is not None:
            return f
        sp, dp = self.src / rel, self.cp.images_dir / rel
        if not stat.S_ISREG(os.lstat(sp).st_mode):
            raise LayoutError(f"{sp} in the dump is not a regular file: CRIU writes none")
        sfd = os.open(sp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._fds.append(sfd)
        dfd = os.open(dp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        self._fds.append(dfd)
        direct: int | None = None
        try:
            direct = os.open(dp, os.O_WRONLY | os.O_DIRECT | os.O_NOFOLLOW | os.O_CLOEXEC)
            self._fds.append(direct)
        except OSError:  # a filesystem without O_DIRECT: buffered, fdatasynced all the same
            direct = None
        f = self._files[rel] = (sfd, dfd, direct, [0, 0], [])
        return f

    def _submit(self, rel: str, size: int, *, final: bool) -> None:
        """Queue the pieces of ``rel`` that are complete at ``size`` (with ``final``: all the rest), their blocks
        allocated first (see :attr:`PREALLOCATE`)."""
        sfd, dfd, direct, nxt, futs = self._open(rel)
        end = size if final else nxt[0] + (size - nxt[0]) // PIECE_BYTES * PIECE_BYTES
        if self.PREALLOCATE and direct is not None and end > nxt[1]:
            want = end if final else end + min(self.PREALLOCATE_AHEAD, end)  # ahead as far as the image has grown
            try:
                ok = _mount.fallocate(dfd, nxt[1], want - nxt[1])
            except OSError as exc:  # no room for the look-ahead: only what is queued (ENOSPC there is an error)
                if exc.errno != errno.ENOSPC or want == end:
                    raise
                want = end
                ok = _mount.fallocate(dfd, nxt[1], want - nxt[1])
            if not ok:
                self.PREALLOCATE = False  # this filesystem cannot: written as before
            nxt[1] = want
        while nxt[0] + PIECE_BYTES <= size or (final and (nxt[0] < size or not futs)):
            length = min(PIECE_BYTES, size - nxt[0])
            futs.append(self._pool.submit(_copy_piece, sfd, dfd, direct, nxt[0], length))
            nxt[0] += length
            if length == 0:
                break

    def finish(self) -> dict[str, FileEntry]:
        """CRIU is done: copy what is left, wait for every piece, fdatasync. Returns the manifest entries of the
        copied files (CRIU's logs excluded: they are not part of the manifest).

        Raises:
            LayoutError: a file could not be read or written (ENOSPC and EIO included).
        """
        try:
            self._stop.set()
            if self._poller is not None:
                self._poller.join()
            if self._poll_error is not None:
                raise self._poll_error
            for dirpath, dirnames, filenames in os.walk(self.src):
                rel_dir = Path(dirpath).relative_to(self.src)
                for d in sorted(dirnames):
                    os.makedirs(self.cp.images_dir / rel_dir / d, DIR_MODE, exist_ok=True)
                for name in sorted(filenames):
                    rel = str(rel_dir / name)
                    self._submit(rel, os.lstat(Path(dirpath, name)).st_size, final=True)
            known: dict[str, FileEntry] = {}
            for rel, (sfd, dfd, _direct, nxt, futs) in sorted(self._files.items()):
                digests = [f.result() for f in futs]
                size = os.fstat(sfd).st_size
                if size != nxt[0]:
                    raise LayoutError(f"{self.src / rel} changed while it was copied ({nxt[0]} of {size} bytes)")
                if os.fstat(dfd).st_size > size:
                    os.ftruncate(dfd, size)  # the look-ahead's blocks past the dump's end
                os.fdatasync(dfd)
                if os.fstat(dfd).st_size != size:
                    raise LayoutError(f"{self.cp.images_dir / rel} is {os.fstat(dfd).st_size} bytes after the copy, "
                                      f"not the dump's {size}")
                if Path(rel).name not in _LOGS:
                    known[str(Path(IMAGES) / rel)] = FileEntry(size, _combine(size, digests))
            return known
        except OSError as exc:
            raise LayoutError(f"cannot write the images of {self.cp.path}: {exc.strerror or exc}") from exc
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop following and close every file (a failed dump; after :meth:`finish`, a no-op)."""
        self._stop.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for _sfd, dfd, _direct, nxt, _futs in self._files.values():
            try:
                if os.fstat(dfd).st_size > nxt[0]:  # never left longer than what was queued from the dump
                    os.ftruncate(dfd, nxt[0])
            except OSError:
                pass  # closing is all that is left to do; the caller removes the staged checkpoint
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._files.clear()


class CheckpointDir:
    """A checkpoint directory (see the module docstring for its layout)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: where a staged checkpoint goes on :meth:`commit` (None: ``path`` is already its final name)
        self.final: Path | None = None
        #: the previous checkpoint that :meth:`commit` moved aside, until :meth:`settle` or :meth:`discard`
        self.replaced: Path | None = None
        #: the background check of the page images started by :meth:`open` with ``defer_pages``
        self.pending: PendingVerify | None = None

    @property
    def images_dir(self) -> Path:
        return self.path / IMAGES

    @property
    def metadata_file(self) -> Path:
        return self.path / METADATA

    @staticmethod
    def holds_checkpoint(path: Path) -> bool:
        """True when ``path`` holds a checkpoint, complete (gpucr.json) or not (CRIU images)."""
        return os.path.lexists(path / METADATA) or os.path.lexists(path / IMAGES / "inventory.img") \
            or os.path.lexists(path / "inventory.img")

    @staticmethod
    def holds_gpucr_checkpoint(path: Path) -> bool:
        """True when ``path`` holds a complete gpucr checkpoint: a regular ``gpucr.json`` that parses."""
        f = path / METADATA
        try:
            if not stat.S_ISREG(os.lstat(f).st_mode):
                return False
            Metadata.from_json(f.read_text(), str(f))
        except (OSError, UnicodeDecodeError, LayoutError):
            return False
        return True

    @staticmethod
    def check_root(path: Path, root: Path | None) -> Path:
        """``path`` resolved (symlinks followed); it must have no ``..`` and lie strictly inside ``root``.

        Raises:
            LayoutError: outside the root (or the root itself), or a ``..`` in it.
        """
        if ".." in path.parts:
            raise LayoutError(f"checkpoint dir {path} contains '..': give a plain path")
        real = path.resolve()
        if root is not None and (real == root.resolve() or not _inside(real, root.resolve())):
            raise LayoutError(f"checkpoint dir {path} (really {real}) is outside the configured checkpoint root "
                              f"{root} (or is the root itself): choose a new dir under {root} (checkpoint_root in "
                              f"/etc/gpucr/config.toml)")
        return real

    _check_root = check_root

    @classmethod
    def _check_existing(cls, path: Path, st: os.stat_result, *, force: bool, renamed: bool = False) -> bool:
        """The rules for a dir already at ``path`` (``st`` its lstat): a real directory, ours and not writable by
        others, not a mount point when a staged checkpoint is to be ``renamed`` onto it, and either empty or a
        complete gpucr checkpoint (which only ``force`` replaces). Returns whether it holds such a checkpoint.

        Raises:
            LayoutError: naming the dir, what is wrong and the fix.
        """
        if stat.S_ISLNK(st.st_mode):
            raise LayoutError(f"checkpoint dir {path} is a symlink: give the real path")
        if not stat.S_ISDIR(st.st_mode):
            raise LayoutError(f"checkpoint dir {path} exists and is not a directory: choose another path")
        check_owner(path, st)
        if renamed and os.lstat(path.parent).st_dev != st.st_dev:
            raise LayoutError(f"checkpoint dir {path} is a mount point: a checkpoint is written beside it and "
                              f"renamed into place, which a mount point cannot be; give a new dir inside it "
                              f"(e.g. {path / 'ck'})")
        if cls.holds_gpucr_checkpoint(path):
            if not force:
                raise LayoutError(f"{path} already holds a checkpoint: choose another dir, or pass --force to "
                                  "replace it")
            return True
        if _non_empty(path):
            what = ("holds CRIU images but no valid gpucr.json (an unfinished or foreign checkpoint)"
                    if cls.holds_checkpoint(path) else "is not empty and holds no gpucr checkpoint")
            raise LayoutError(f"checkpoint dir {path} {what}: choose an empty or new dir (--force replaces only a "
                              "complete gpucr checkpoint)")
        return False

    @classmethod
    def create(cls, path: Path, *, force: bool = False, root: Path | None = None) -> CheckpointDir:
        """Make ``path`` ready for a new checkpoint: created 0700 (parents too), ``images/`` inside.

        Args:
            force: replace a complete gpucr checkpoint already there (its ``images/`` and ``gpucr.json`` are
                removed, links themselves and never their targets; other files stay); any other dir that is not
                empty is still refused.
            root: refuse any dir that does not resolve to a place under it.

        Raises:
            LayoutError: a checkpoint is already there (without ``force``), the dir is not empty and not a
                complete gpucr checkpoint, is a symlink, is not ours or is writable by others, is outside ``root``,
                or cannot be created.
        """
        cls.check_root(path, root)
        try:
            st = _lstat(path)
            if st is not None:
                if cls._check_existing(path, st, force=force):
                    _remove_checkpoint(path)
            else:
                _mkdirs(path)
            _chmod_nofollow(path, DIR_MODE)
            os.mkdir(path / IMAGES, DIR_MODE)
            _chmod_nofollow(path / IMAGES, DIR_MODE)
        except OSError as exc:
            raise LayoutError(f"cannot prepare checkpoint dir {path}: {exc.strerror}") from exc
        cls.check_root(path, root)  # a symlink swapped in meanwhile is caught here
        check_owner(path)
        return cls(path)

    @classmethod
    def create_empty(cls, path: Path, *, root: Path | None = None) -> Path:
        """An empty private dir (0700, ours, inside ``root``) for a checkpoint another program writes (the
        runtime's, ``gpucr checkpoint --via-runtime``): same rules as :meth:`create`, nothing replaced.

        Raises:
            LayoutError: as :meth:`create`, and for any dir that is not empty.
        """
        cls.check_root(path, root)
        try:
            if os.path.lexists(path):
                check_owner(path)
                if not os.path.isdir(path) or _non_empty(path):
                    raise LayoutError(f"checkpoint dir {path} is not an empty directory: choose an empty or new dir")
            else:
                _mkdirs(path)
            _chmod_nofollow(path, DIR_MODE)
        except OSError as exc:
            raise LayoutError(f"cannot prepare checkpoint dir {path}: {exc.strerror}") from exc
        cls.check_root(path, root)
        check_owner(path)
        return path

    @classmethod
    def stage(cls, path: Path, *, force: bool = False, root: Path | None = None) -> CheckpointDir:
        """Start a checkpoint for ``path`` under its temporary sibling name (:func:`staging_path`, in the same dir and
        so inside the same ``root``), leaving ``path`` untouched until :meth:`commit`. The rules of :meth:`create`
        apply to ``path`` itself: never a symlink, ours and not writable by others when it exists, ``--force``
        replaces only a complete gpucr checkpoint, missing parents created 0700. Returns the staging dir (``final``
        names ``path``).

        Raises:
            LayoutError: ``path`` already holds a checkpoint (without ``force``), is a symlink, not a directory, not
                ours or writable by others, a mount point, a non-empty directory that holds no complete gpucr
                checkpoint (never replaced), or is outside ``root``.
        """
        cls.check_root(path, root)
        try:
            st = _lstat(path)
            if st is not None:
                cls._check_existing(path, st, force=force, renamed=True)
            tmp = staging_path(path)
            _mkdirs(path.parent)
            cls.tidy_after_crash(path)
            if os.path.lexists(tmp):  # a previous run of a process with our pid
                _remove_entry(tmp)
        except OSError as exc:
            raise LayoutError(f"cannot prepare checkpoint dir {path}: {exc.strerror or exc}") from exc
        cp = cls.create(tmp, root=root)
        cp.final = path
        return cp

    @staticmethod
    def tidy_after_crash(path: Path) -> None:
        """What a gpucr killed mid-checkpoint left beside ``path``: its temporary dir is removed; a previous
        checkpoint it had moved aside goes back in place when nothing took that place (else it is removed). Only
        dirs of ours are touched (never a symlink, nor what another user put there)."""
        for p in path.parent.glob(f".{path.name}.gpucr-*"):
            owner = orphan_pid(p, STAGING_MARK if STAGING_MARK in p.name else ASIDE_MARK)
            if owner is None:
                continue
            if STAGING_MARK not in p.name and not os.path.lexists(path):
                log.warning("putting back checkpoint %s that gpucr (pid %d) moved aside before it died", path, owner)
                os.rename(p, path)
                continue
            log.warning("removing %s, left by gpucr (pid %d) killed mid-checkpoint", p, owner)
            shutil.rmtree(p)

    def commit(self) -> None:
        """The atomic final step of a staged checkpoint (after :meth:`finalize`): rename it into place, replacing a
        previous checkpoint only now (renamed aside to ``.NAME.gpucr-old-<pid>``, kept until :meth:`settle`), then
        fsync the parent so the rename survives a crash. Afterwards ``path`` is the final name.

        Raises:
            LayoutError: the rename or the fsync failed (the staged dir is left for :meth:`discard`).
        """
        final = self.final
        if final is None or _staging_owner(self.path) is None:
            return
        old: Path | None = None
        try:
            try:
                os.rename(self.path, final)  # absent or an empty dir: replaced atomically
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not self.holds_gpucr_checkpoint(final):
                    raise
                check_owner(final)  # what stage() found there, still ours (--force replaces nothing else)
                # the old checkpoint goes aside only now that the new one is complete and durable; a crash between
                # the two renames leaves the old one whole at .NAME.gpucr-old-<pid>
                old = final.with_name(f".{final.name}{own_suffix(ASIDE_MARK)}")
                if os.path.lexists(old):
                    _remove_entry(old)
                os.rename(final, old)
                try:
                    os.rename(self.path, final)
                except OSError:
                    os.rename(old, final)
                    raise
            fsync_path(final.parent, directory=True)
        except OSError as exc:
            raise LayoutError(f"cannot move the finished checkpoint {self.path} into place at {final}: "
                              f"{exc.strerror or exc}; check the filesystem, then checkpoint again") from exc
        self.path = final
        self.replaced = old

    @property
    def committed(self) -> bool:
        return self.final is None or self.path == self.final

    def settle(self) -> None:
        """The checkpoint stands: remove the one it replaced."""
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None

    def discard(self) -> None:
        """Undo this checkpoint: remove its staged dir; a committed one is moved back out of place (and the one it
        replaced put back) before it is removed, so the final name holds what it held before."""
        if self.final is not None and self.committed:
            staged = staging_path(self.final)
            try:
                os.rename(self.final, staged)
                if self.replaced is not None:
                    os.rename(self.replaced, self.final)
                    self.replaced = None
                fsync_path(self.final.parent, directory=True)
            except OSError as exc:
                log.warning("could not withdraw checkpoint %s: %s", self.final, exc)
                return
            self.path = staged
        if _staging_owner(self.path) is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def _files(self) -> list[Path]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath, name)
                rel = p.relative_to(self.path)
                if str(rel) in _EXCLUDED or (rel.parent == Path(IMAGES) and name in _LOGS):
                    continue
                out.append(p)
        return out

    def fill_from(self, src: Path) -> dict[str, FileEntry]:
        """Copy CRIU's images from ``src`` (the memory stage, :mod:`.memstage`) into ``images/`` at disk rate
        (:class:`ImageCopier`); returns the manifest entries of the copied files, for :meth:`finalize` ``known``."""
        return ImageCopier(self, src).finish()

    def finalize(self, meta: Metadata, progress: Callable[[str], None] | None = None,
                 known: dict[str, FileEntry] | None = None) -> Metadata:
        """Tighten modes (0700/0600), fill ``meta.manifest`` and ``meta.sizes['total_bytes']``, then write
        ``gpucr.json`` atomically (its appearance marks the checkpoint complete). Returns ``meta``. ``known``: entries
        hashed while :meth:`fill_from` wrote them (taken when the size still matches; every other file is hashed).

        Raises:
            LayoutError: a file could not be read or the metadata not written.
        """
        try:
            _chmod_nofollow(self.path, DIR_MODE)
            manifest: dict[str, FileEntry] = {}
            for dirpath, dirnames, _ in os.walk(self.path):  # never into a linked dir; _chmod_nofollow refuses it
                for d in dirnames:
                    _chmod_nofollow(Path(dirpath, d), DIR_MODE)
            for p in self._files():
                if p.is_symlink() or not p.is_file():
                    raise LayoutError(f"{p} in checkpoint dir {self.path} is not a regular file: remove it")
                _chmod_nofollow(p, FILE_MODE)
                if progress is not None:
                    progress(str(p.relative_to(self.path)))
                rel, st = str(p.relative_to(self.path)), p.stat()
                k = (known or {}).get(rel)
                manifest[rel] = FileEntry(st.st_size, k.sha256 if k is not None and k.size == st.st_size
                                          else _sha256(p), st.st_mtime_ns)
            meta.manifest = manifest
            meta.sizes["total_bytes"] = sum(e.size for e in manifest.values())
            meta.sizes["files"] = len(manifest)
            fsync_tree(self.path, tighten=True)  # images private and durable before the metadata vouching for them
            tmp = self.path / f".{METADATA}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with os.fdopen(fd, "w") as f:
                f.write(meta.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.metadata_file)
            fsync_path(self.path, directory=True)
        except OSError as exc:
            raise LayoutError(f"cannot finalize checkpoint {self.path}: {exc}") from exc
        return meta

    @classmethod
    def open(cls, path: Path, *, root: Path | None = None, verify: bool = True,
             defer_pages: bool = False) -> tuple[CheckpointDir, Metadata]:
        """Load a checkpoint for restore and check it before CRIU sees it.

        Args:
            verify: check every manifest entry's size *and* sha256 (False: sizes only, for speed).
            defer_pages: with ``verify``, hash CRIU's page images in background threads (:class:`PendingVerify`,
                in ``.pending``) instead of before returning; every other file is hashed now.

        Raises:
            LayoutError: missing, outside ``root``, incomplete (no gpucr.json), not ours or writable by others (the
                dir, ``images/`` or ``gpucr.json``), corrupt or truncated (names the file).
        """
        cls.check_root(path, root)
        owner = _staging_owner(path)
        if owner is not None:
            raise LayoutError(f"{path} is the temporary dir of a checkpoint that never finished (gpucr pid {owner} was "
                              "interrupted or failed): not a valid checkpoint; remove it and checkpoint again")
        if not path.is_dir():
            raise LayoutError(f"checkpoint dir {path} does not exist")
        cp = cls(path)
        if not cp.metadata_file.exists():
            hint = " (CRIU images are there: the checkpoint did not finish)" if cls.holds_checkpoint(path) else ""
            raise LayoutError(f"{path} holds no {METADATA}{hint}: not a complete gpucr checkpoint")
        for p, what in ((path, "checkpoint dir"), (cp.images_dir, "images dir"), (cp.metadata_file, "metadata file")):
            check_owner(p, what=what)
        try:
            text = cp.metadata_file.read_text()
        except OSError as exc:
            raise LayoutError(f"cannot read {cp.metadata_file}: {exc.strerror}") from exc
        meta = Metadata.from_json(text, str(cp.metadata_file))
        cp.pending = cp.verify(meta, full=verify, defer_pages=defer_pages)
        return cp, meta

    def stamp_times(self, meta: Metadata) -> None:
        """Give each file the modification time the manifest recorded at sealing: for files written again elsewhere
        (an import) after :meth:`verify` with ``full`` proved their content."""
        for name, entry in meta.manifest.items():
            if entry.mtime_ns is not None:
                os.utime(self.path / name, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)

    def verify(self, meta: Metadata, *, full: bool = True, defer_pages: bool = False) -> PendingVerify | None:
        """Every manifest file present, with its size (and with ``full`` its sha256); nothing missing. With
        ``defer_pages`` the page images' sha256 is checked in the background: returns that check. Without ``full``
        (the bounded check at CreateContainer) a file whose modification time differs from the one recorded at
        sealing is refused too: a change of content that kept the size (the digests, checked later, catch a change
        that also restored the time).

        Raises:
            LayoutError: names the first bad file and what is wrong with it.
        """
        deferred: dict[str, FileEntry] = {}
        if not meta.manifest:
            raise LayoutError(f"{self.metadata_file} lists no files: the checkpoint is empty or corrupt")
        for name, entry in meta.manifest.items():
            p = self.path / name
            if not _inside(p.resolve(), self.path.resolve()) or ".." in Path(name).parts:
                raise LayoutError(f"{self.metadata_file} names {name!r}, outside the checkpoint: refusing it")
            try:
                size = p.stat().st_size
            except FileNotFoundError as exc:
                raise LayoutError(f"checkpoint {self.path} is incomplete: {name} is missing") from exc
            if size != entry.size:
                raise LayoutError(f"checkpoint {self.path} is corrupt: {name} has {size} bytes, the manifest says "
                                  f"{entry.size} (truncated or changed)")
            if not full and entry.mtime_ns is not None and p.stat().st_mtime_ns != entry.mtime_ns:
                raise LayoutError(f"checkpoint {self.path}: {name} was modified after the checkpoint was sealed (its "
                                  "modification time is not the one recorded then), so it cannot be trusted: "
                                  "refusing it. A copy must keep the files' times (cp -a, rsync -a, or gpucr "
                                  "export/import); otherwise checkpoint again")
            if full and defer_pages and _is_pages(name):
                deferred[name] = entry
            elif full and _sha256(p) != entry.sha256:
                raise LayoutError(f"checkpoint {self.path} is corrupt: {name} does not match its sha256")
        return PendingVerify(self, deferred) if deferred else None


# --- host resource checks ------------------------------------------------------------------------------------------


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_disk_space(path: Path, needed_bytes: int, *, what: str = "the checkpoint images") -> None:
    """Refuse up front when the filesystem of ``path`` has less free space than ``needed_bytes``.

    Raises:
        LayoutError: names the dir, what is needed, what is free and the fix.
    """
    try:
        st = os.statvfs(path)
    except OSError as exc:
        raise LayoutError(f"cannot check free space at {path}: {exc.strerror}") from exc
    free = st.f_bavail * st.f_frsize
    if needed_bytes > free:
        raise LayoutError(f"not enough disk space in {path} for {what}: need {_gib(needed_bytes)} "
                          f"({needed_bytes} bytes), {_gib(free)} ({free} bytes) free; choose a dir on a larger "
                          "filesystem or free space")


# --- the engine's view: checkpoint directories by the path the caller named ---------------------------------------


class CheckpointStore:
    """Checkpoint directories, optionally confined to ``root`` (the daemon's configured checkpoint root).

    Args:
        root: refuse dirs outside it.
        verify_sha256: on restore check every file's sha256 (True: the page images in the background while CRIU
            restores, :class:`PendingVerify`) or only its size (False).
    """

    def __init__(self, root: Path | None = None, *, verify_sha256: bool = True) -> None:
        self.root = root
        self.verify_sha256 = verify_sha256
        self._staged: dict[Path, CheckpointDir] = {}
        self._opened: dict[Path, CheckpointDir] = {}

    def prepare(self, images_dir: Path, *, force: bool) -> Path:
        """Stage the checkpoint dir under its temporary name (0700; an existing checkpoint is refused unless
        ``force``, and stays until the new one is committed); return CRIU's dir."""
        cp = CheckpointDir.stage(images_dir, force=force, root=self.root)
        self._staged[images_dir] = cp
        return cp.images_dir

    def _dir(self, images_dir: Path) -> CheckpointDir:
        return self._staged.get(images_dir) or CheckpointDir(images_dir)

    def sync(self, images_dir: Path) -> int:
        """fsync CRIU's images and their dirs, made private (at CRIU's ``post-dump``: before it may kill the tasks;
        again once CRIU is done, for the logs it wrote after); returns the number of files.

        Raises:
            LayoutError: an fsync failed (the images are not safe on disk).
        """
        d = self._dir(images_dir)
        try:
            return fsync_tree(d.images_dir, tighten=True)
        except OSError as exc:
            raise LayoutError(f"cannot write the images of {images_dir} to disk (fsync of {d.images_dir}): "
                              f"{exc.strerror or exc}") from exc

    def copier(self, images_dir: Path, src: Path) -> ImageCopier:
        """The copier of a dump made in memory (``src``) into the staged checkpoint for ``images_dir`` at disk rate,
        hashed on the way (:class:`ImageCopier`)."""
        return ImageCopier(self._dir(images_dir), src)

    def discard(self, images_dir: Path) -> None:
        """Undo the checkpoint for ``images_dir`` (a failed checkpoint): its temporary dir removed, or, committed
        already, withdrawn with the previous checkpoint put back."""
        cp = self._staged.pop(images_dir, None)
        if cp is not None:
            cp.discard()

    def settle(self, images_dir: Path) -> None:
        """The checkpoint for ``images_dir`` stands (reported done): drop the one it replaced."""
        cp = self._staged.pop(images_dir, None)
        if cp is not None:
            cp.settle()

    def committed(self, images_dir: Path) -> bool:
        """Whether the checkpoint for ``images_dir`` has been committed (moved into place)."""
        cp = self._staged.get(images_dir)
        return cp is None or cp.committed

    def no_space(self, images_dir: Path) -> bool:
        """Whether the filesystem the checkpoint for ``images_dir`` is written to is (nearly) full: after a failed
        dump, that is the cause to report."""
        try:
            st = os.statvfs(self._dir(images_dir).path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < FULL_BELOW_BYTES

    def images_of(self, images_dir: Path) -> Path:
        """CRIU's dir of the checkpoint for ``images_dir``, wherever it is now (staged or committed)."""
        return self._dir(images_dir).images_dir

    def check_space(self, path: Path, need_bytes: int, what: str) -> None:
        """Refuse when the filesystem of ``path`` (or of its nearest existing parent) has less than ``need_bytes``
        free (LayoutError naming the dir, the need and what is free)."""
        p = path
        while not os.path.lexists(p) and p != p.parent:
            p = p.parent
        check_disk_space(p, need_bytes, what=what)

    def write_metadata(self, images_dir: Path, meta: Metadata, known: dict[str, FileEntry] | None = None) -> None:
        """Seal the staged checkpoint: manifest (``known`` entries taken as hashed while written), ``gpucr.json``
        written last, then the atomic rename into place."""
        cp = self._dir(images_dir)
        cp.finalize(meta, known=known)
        cp.commit()

    def read_metadata(self, images_dir: Path) -> tuple[Metadata, Path]:
        """The checkpoint's metadata and CRIU's images dir, every file checked (the page images' sha256 in the
        background until :meth:`finish_verify`). Raises LayoutError for a corrupt/truncated checkpoint."""
        cp, md = CheckpointDir.open(images_dir, root=self.root, verify=self.verify_sha256,
                                    defer_pages=self.verify_sha256)
        self._opened[images_dir] = cp
        return md, cp.images_dir

    def finish_verify(self, images_dir: Path) -> None:
        """Wait for the background check of the page images :meth:`read_metadata` started (none: returns).

        Raises:
            LayoutError: a page image does not match its sha256.
        """
        cp = self._opened.get(images_dir)
        if cp is not None and cp.pending is not None:
            cp.pending.wait()

    def drop_verify(self, images_dir: Path) -> None:
        """Stop a background check still running (the restore failed first)."""
        cp = self._opened.pop(images_dir, None)
        if cp is not None and cp.pending is not None:
            cp.pending.cancel()

"""A restore into an existing pid namespace (a pod's shared one: CRI ``pid: POD``, Kubernetes'
``shareProcessNamespace``): the checkpoint's pids must be free there, and stay free during the restore.

CRIU restores every task and thread with ``clone3(set_tid)`` at its old pid, so each must be free in the target
namespace; a pid held by another process of the pod (its pause, a container started before) fails the restore with
``Can't fork for N: File exists`` (measured: docs/design.md, "Limits measured"). :func:`check_free` refuses that
case before anything starts, naming the pids and their holders. :func:`prepare` checks again at the start and moves
the namespace's ``ns_last_pid`` to the highest pid of the image: CRIU enters the namespace with ``setns`` in its own
main process (``fork_with_pid`` in ``criu/cr-restore.c``) and never leaves it, so every helper it forks afterwards
(action scripts, ``tar`` for tmpfs, iptables, sysctl workers) is born there at the kernel's next *cyclic* pid, which
in a new pod sits among the old container's pids; above them it cannot take one.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

from ..errors import GpucrError

__all__ = ["PSTREE", "PidNsError", "check_free", "image_pids", "prepare", "pstree_pids", "taken_pids"]

PSTREE = "pstree.img"
_IMG_COMMON_MAGIC, _PSTREE_MAGIC = 0x54564319, 0x50273030
#: where nsenter is taken from (root runs it: never from the caller's PATH)
_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class PidNsError(GpucrError):
    """The checkpoint cannot be restored into this pid namespace (pids taken, image unreadable)."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        out |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return out, i
        shift += 7


def _entry(buf: bytes) -> tuple[set[int], set[int]]:
    """One ``pstree_entry`` (images/pstree.proto): (pid and threads, pgid and sid)."""
    own: set[int] = set()
    group: set[int] = set()
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            (own if field in (1, 5) else group if field in (3, 4) else set()).add(v)
        elif wire == 2:  # threads, packed
            n, i = _varint(buf, i)
            end = i + n
            while i < end:
                v, i = _varint(buf, i)
                if field == 5:
                    own.add(v)
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return own, group


def pstree_pids(data: bytes, where: str) -> tuple[set[int], set[int]]:
    """The pids a restore of this ``pstree.img`` content takes: (every task's pid and thread ids, the pgids and
    sids it names).

    Raises:
        PidNsError: not a CRIU pstree image.
    """
    own: set[int] = set()
    group: set[int] = set()
    try:
        if len(data) < 8 or struct.unpack_from("<II", data) != (_IMG_COMMON_MAGIC, _PSTREE_MAGIC):
            raise ValueError("no pstree magic")
        i = 8
        while i < len(data):
            (n,) = struct.unpack_from("<I", data, i)
            o, g = _entry(data[i + 4:i + 4 + n])
            own |= o
            group |= g
            i += 4 + n
    except (ValueError, struct.error) as exc:
        raise PidNsError(f"cannot read the process tree of the checkpoint ({where}: {exc}): the checkpoint is "
                         "corrupt") from exc
    own.discard(0)
    group.discard(0)
    if not own:
        raise PidNsError(f"the process tree of the checkpoint ({where}) is empty: the checkpoint is corrupt")
    return own, group


def image_pids(images: Path) -> tuple[set[int], set[int]]:
    """:func:`pstree_pids` of CRIU's images dir ``images``. Raises PidNsError (unreadable, not a pstree image)."""
    path = images / PSTREE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PidNsError(f"cannot read the process tree of the checkpoint ({path}: {exc.strerror})") from exc
    return pstree_pids(data, str(path))


def _nspid_last(status: str) -> int | None:
    for ln in status.splitlines():
        if ln.startswith("NSpid:"):
            return int(ln.split()[-1])
    return None


def taken_pids(ns_ino: int) -> dict[int, str]:
    """The pids (threads included) in use in the pid namespace with inode ``ns_ino``: pid there -> comm."""
    out: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}/ns/pid").st_ino != ns_ino:
                continue
            tids = os.listdir(f"/proc/{name}/task")
        except OSError:
            continue  # gone meanwhile, or not ours to see
        for tid in tids:
            try:
                st = Path(f"/proc/{name}/task/{tid}/status").read_text()
            except OSError:
                continue  # a thread that ended meanwhile
            v = _nspid_last(st)
            if v is not None:
                out[v] = next((ln.split(None, 1)[1].strip() for ln in st.splitlines() if ln.startswith("Name:")), "?")
    return out


def _set_last_pid(ns_path: str, last: int) -> None:
    """``ns_last_pid`` of the namespace at ``ns_path`` := ``last``. The sysctl acts on the writer's own pid
    namespace, so the writer must be born there: nsenter (util-linux) forks into it, as CRIU's own ``set_next_pid``
    helper does where there is no clone3."""
    nsenter = shutil.which("nsenter", path=_SYSTEM_PATH)
    if nsenter is None:
        raise PidNsError(f"cannot move the pid cursor of the pod's pid namespace: no nsenter in {_SYSTEM_PATH} "
                         "(install util-linux)")
    try:
        r = subprocess.run([nsenter, f"--pid={ns_path}", "--", "/bin/sh", "-c",
                            'echo "$0" > /proc/sys/kernel/ns_last_pid', str(last)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PidNsError(f"cannot move the pid cursor of the pod's pid namespace: {exc}") from exc
    if r.returncode != 0:
        raise PidNsError(f"cannot move the pid cursor of the pod's pid namespace: {r.stderr.strip()}")


def _open_ns(ns_path: str, what: str) -> int:
    try:
        return os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise PidNsError(f"{what}: cannot open the pod's pid namespace {ns_path} ({exc.strerror}): is the pod "
                         "sandbox running?") from exc


def _check_free(fd: int, own: set[int], what: str) -> None:
    taken = taken_pids(os.fstat(fd).st_ino)
    clash = sorted(p for p in own if p in taken)
    if clash:
        raise PidNsError(
            f"{what}: the checkpoint's pid(s) {clash[:10]} are taken in the pod's shared PID namespace "
            f"({', '.join(f'{p} by {taken[p]}' for p in clash[:5])}), and CRIU restores every process at its old pid; "
            "restore it into a pod where no other process holds them (e.g. create this container before the pod's "
            "other containers), or give the container its own PID namespace (the Kubernetes default)")


def check_free(ns_path: str, own: set[int], what: str) -> None:
    """Refuse (PidNsError naming the pids and their holders) when a pid of ``own`` is taken in the pid namespace at
    ``ns_path``."""
    fd = _open_ns(ns_path, what)
    try:
        _check_free(fd, own, what)
    finally:
        os.close(fd)


def prepare(images: Path, ns_path: str, what: str) -> int:
    """Make the restore of ``images`` into the pid namespace at ``ns_path`` as safe as it can be: its pids free there
    (else PidNsError naming the first taken ones and their holders), and the namespace's next cyclic pid above all of
    them. Returns the pid the cursor was set to. ``what`` names the container in errors."""
    own, group = image_pids(images)
    fd = _open_ns(ns_path, what)
    try:
        _check_free(fd, own, what)
        last = max(own | group)
        _set_last_pid(f"/proc/{os.getpid()}/fd/{fd}", last)
        return last
    finally:
        os.close(fd)

"""Processes as /proc shows them: a tree, its CUDA candidates, a pid's cgroup and the container it belongs to,
its pid namespace, memory, and a tree kill.

The CRIU front decides on every dump whether gpucr has work, and must do so cheaply and without the driver (a frozen
process would block any driver call): this module imports nothing but ``os`` (and :mod:`nri_plugin.errors`, which
imports nothing).

Container identity: one parser of ``/proc/PID/cgroup`` (:func:`parse_proc_cgroup`) and one rule for the container
id a cgroup path names (:func:`container_id`), for the cgroupfs driver (``/<parent>/<id>``,
``/kubepods/<qos>/pod<uid>/<id>``; v1 lines per controller, v2 ``0::``) and the systemd driver
(``.../cri-containerd-<id>.scope``, ``docker-<id>.scope``, ``crio-<id>.scope``).
"""

from __future__ import annotations

import os

from ..errors import GpucrError

TYPE_CHECKING = False  # not typing's: start-up cost on the front's path
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "HostError", "alive", "cgroup_path", "cgroup_procs", "comm", "container_id", "cuda_candidates", "external_pid_ns",
    "kill_tree", "mem_available", "names_container", "nvidia_minors", "parent_pid", "parse_meminfo", "parse_proc_cgroup",
    "pid_ns_init", "rss_bytes", "runc_cgroup", "start_time", "tree_pids", "unified_host",
]

#: systemd scope prefixes of the container managers, ``<prefix>-<id>.scope`` (kubelet+containerd, Docker, CRI-O)
SCOPE_PREFIXES = ("cri-containerd-", "docker-", "crio-")


class HostError(GpucrError):
    """A host fact could not be read or parsed (the message names the file)."""


# --- /proc/PID/cgroup and the container id -------------------------------------------------------------------------


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/PID/cgroup`` as {controller: path}; the v2 entry (``0::/x``) is under the key ``""``; a named v1
    hierarchy is under ``name=systemd``; a line listing several controllers (``cpu,cpuacct``) yields one key each.

    Raises:
        HostError: a line is not ``ID:CONTROLLERS:PATH``.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise HostError(f"malformed /proc/PID/cgroup line {line!r}")
        _, ctrls, path = parts
        for ctrl in ctrls.split(",") if ctrls else [""]:
            out[ctrl] = path
    return out


def runc_cgroup(text: str, *, unified: bool = False) -> str:
    """Where runc freezes a process, from its ``/proc/PID/cgroup`` text: the v1 freezer entry (hybrid hosts), else
    the v2 (``0::``) entry; "" when it has neither. ``unified`` (cgroup2 on /sys/fs/cgroup, runc's own test for a
    v2-only host): always the v2 entry, as a hybrid kernel still lists v1 lines there (e.g. in a mount namespace
    with cgroup2 mounted on /sys/fs/cgroup).

    Raises:
        HostError: the text is malformed.
    """
    entries = parse_proc_cgroup(text)
    if unified:
        return entries.get("", "")
    return entries.get("freezer") or entries.get("", "")


def unified_host(mountinfo: str) -> bool:
    """cgroup2 is mounted on /sys/fs/cgroup in this ``/proc/self/mountinfo`` (runc then uses v2 only)."""
    for line in mountinfo.splitlines():
        fields = line.split(" ", 5)
        if len(fields) > 4 and fields[4] == "/sys/fs/cgroup" and " - cgroup2 " in line:
            return True
    return False


def cgroup_path(pid: int | str = "self") -> str:
    """:func:`runc_cgroup` of ``pid`` as runc on this host sees it; "" when the pid is gone or unreadable."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            unified = unified_host(f.read())
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="surrogateescape") as f:
            return runc_cgroup(f.read(), unified=unified)
    except (OSError, HostError):
        return ""


def container_id(path: str) -> str:
    """The container id a cgroup path names, or "" when it names none.

    systemd driver: the inner part of the last component ``<prefix>-<id>.scope`` for the prefixes in
    :data:`SCOPE_PREFIXES` (CRI-O's ``crio-conmon-<id>.scope`` is its monitor, not the container: ""); any other
    ``.scope`` or ``.slice`` names no container. cgroupfs driver: the last component, as runc names the container's
    cgroup after its id under the parent (``/<parent>/<id>``, ``/kubepods/<qos>/pod<uid>/<id>``).
    """
    base = path.rstrip("/").rpartition("/")[2]
    if base.endswith(".scope"):
        inner = base[:-len(".scope")]
        for prefix in SCOPE_PREFIXES:
            if inner.startswith(prefix):
                cid = inner[len(prefix):]
                return "" if prefix == "crio-" and cid.startswith("conmon-") else cid
        return ""
    if base.endswith(".slice"):
        return ""
    return base


def _ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        rest = raw[raw.rfind(b")") + 2:].split()
        out[int(name)] = int(rest[1])
    return out


def parent_pid(pid: int) -> int:
    """The parent of ``pid``; 0 when it is gone (or is the kernel's)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0
    return int(raw[raw.rfind(b")") + 2:].split()[1])


def start_time(pid: int) -> int:
    """When ``pid`` started (clock ticks after boot, /proc/PID/stat field 22): with the pid, a process's identity
    across pid reuse. 0 when it is gone or a zombie (a zombie holds nothing any more)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0
    rest = raw[raw.rfind(b")") + 2:].split()
    if len(rest) < 20 or rest[0] in (b"Z", b"X"):
        return 0
    return int(rest[19])


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (processes, not threads), root first. Empty when ``root`` is gone."""
    if not os.path.exists(f"/proc/{root}"):
        return []
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(sorted(children.get(p, [])))
    return out


def _maps_cuda(pid: int, lib_names: tuple[str, ...]) -> bool:
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return any(n.encode() in data for n in lib_names)


def _has_nvidia_fd(pid: int) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/dev/nvidia"):
                return True
        except OSError:
            continue
    return False


def cuda_candidates(pids: Iterable[int], driver_path: str) -> list[int]:
    """The pids that map the CUDA driver library or hold an NVIDIA device fd (a cheap filter before the driver)."""
    names = tuple({"libcuda.so", os.path.basename(driver_path)})
    return [p for p in pids if p != os.getpid() and (_maps_cuda(p, names) or _has_nvidia_fd(p))]


def cgroup_procs(top: str) -> list[int]:
    """Every process in the cgroup directory ``top`` and its descendants (sorted).

    Raises:
        FileNotFoundError: ``top`` is not a directory.
    """
    if not os.path.isdir(top):
        raise FileNotFoundError(f"cgroup {top} does not exist")
    pids: set[int] = set()
    for dirpath, _, _ in os.walk(top):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                pids.update(int(x) for x in f.read().split())
        except FileNotFoundError:  # removed while walking
            continue
    return sorted(pids)


# --- small per-process facts ---------------------------------------------------------------------------------------


def nvidia_minors(pid: int) -> set[int]:
    """GPU minor numbers of the /dev/nvidiaN fds a process holds (NVML may not see processes in some VMs)."""
    out: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        tail = target.removeprefix("/dev/nvidia")
        if tail != target and tail.isdigit():
            out.add(int(tail))
    return out


def comm(pid: int) -> str:
    """The process's command name; "" when it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def rss_bytes(pid: int) -> int:
    """The process's resident memory (VmRSS) in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as {key: bytes}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        out[key.strip()] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def mem_available(meminfo: str = "/proc/meminfo") -> int:
    """MemAvailable in bytes.

    Raises:
        HostError: the file cannot be read or lacks MemAvailable (kernel < 3.14).
    """
    try:
        with open(meminfo) as f:
            info = parse_meminfo(f.read())
    except OSError as exc:
        raise HostError(f"cannot read {meminfo}: {exc.strerror}") from exc
    if "MemAvailable" not in info:
        raise HostError(f"{meminfo} has no MemAvailable: cannot check host memory")
    return info["MemAvailable"]


def kill_tree(root: int) -> list[int]:
    """SIGKILL ``root`` and its descendants; the pids it found."""
    import signal

    pids = tree_pids(root)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


# --- pid namespaces ------------------------------------------------------------------------------------------------


def _nspid(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/status") as f:
        return next((ln.split()[1:] for ln in f if ln.startswith("NSpid:")), [])


def external_pid_ns(pid: int) -> str | None:
    """``pid[INODE]:extRootPidNS`` when ``pid`` lives in a pid namespace it is not the init of (a container that
    shares its pod's pid namespace): CRIU cannot dump such a namespace and must treat it as external, as runc does."""
    try:
        ours = os.stat("/proc/self/ns/pid").st_ino
        theirs = os.stat(f"/proc/{pid}/ns/pid").st_ino
        nspid = _nspid(pid)
    except OSError:
        return None
    if theirs == ours or not nspid or nspid[-1] == "1":
        return None
    return f"pid[{theirs}]:extRootPidNS"


def pid_ns_init(ino: int) -> int | None:
    """The host pid of the init (pid 1) of the pid namespace with inode ``ino``; None when none is found."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}/ns/pid").st_ino != ino:
                continue
            nspid = _nspid(name)
        except OSError:
            continue
        if nspid and nspid[-1] == "1":
            return int(name)
    return None

"""The /proc-only part of discovery: a process tree, and which pids look like CUDA processes.

Kept apart from :mod:`.discovery` (which re-exports it) because the CRIU front decides on every dump whether gpucr
has work, and must do so cheaply and without the driver (a frozen process would block any driver call): this module
imports nothing but ``os``.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: start-up cost on the front's path
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["cgroup_procs", "cuda_candidates", "tree_pids"]


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

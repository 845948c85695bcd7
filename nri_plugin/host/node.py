"""Read-only facts about the node for ``gpucr doctor``: cgroup version, THP mode, overlayfs parameters, free space,
whether a unix socket accepts connections, and the first line a tool prints for ``--version``.

Each probe returns a plain value or None (unknown); none raises for a missing file or tool, since a doctor reports
what it cannot see instead of failing on it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

__all__ = ["cgroup_version", "thp_mode", "overlay_params", "free_bytes", "socket_accepts", "tool_version",
           "parse_version"]

_CGROUP2_MAGIC = 0x63677270  # statfs f_type of cgroup2 (linux/magic.h)


def cgroup_version(root: str = "/sys/fs/cgroup") -> int | None:
    """2 (unified), 1 (legacy or hybrid), None when ``root`` is not mounted. Decided by ``cgroup.controllers`` at the
    root: only cgroup2 has it."""
    if Path(root, "cgroup.controllers").exists():
        return 2
    return 1 if Path(root).is_dir() and any(Path(root).iterdir()) else None


def thp_mode(path: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> str | None:
    """The bracketed choice of the THP ``enabled`` file (``always``, ``madvise`` or ``never``)."""
    try:
        m = re.search(r"\[(\w+)\]", Path(path).read_text())
    except OSError:
        return None
    return m.group(1) if m else None


def overlay_params(path: str = "/sys/module/overlay/parameters") -> dict[str, str]:
    """The overlay module's parameters (``index``, ``nfs_export``, ...); empty when overlay is not loaded."""
    out: dict[str, str] = {}
    try:
        for p in Path(path).iterdir():
            try:
                out[p.name] = p.read_text().strip()
            except OSError:
                continue
    except OSError:
        pass
    return out


def free_bytes(path: str) -> int | None:
    """Bytes available to root on the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bfree * st.f_frsize


def socket_accepts(path: str, timeout_s: float = 2.0) -> str | None:
    """None when a unix stream socket at ``path`` accepts a connection, else why not."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    finally:
        s.close()
    return None


def tool_version(tool: str, *args: str, timeout_s: float = 10.0) -> tuple[str | None, str]:
    """(absolute path or None, first output line of ``tool args`` or why it failed)."""
    path = tool if "/" in tool else shutil.which(tool)
    if not path or not os.access(path, os.X_OK):
        return None, f"{tool} not found"
    try:
        r = subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return path, f"{path} {' '.join(args)} failed: {exc}"
    out = (r.stdout or r.stderr).strip().splitlines()
    return path, out[0] if out else f"{path} printed nothing (exit {r.returncode})"


def parse_version(text: str) -> tuple[int, ...] | None:
    """The first ``N.N[.N]`` in ``text`` as a tuple of ints."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None

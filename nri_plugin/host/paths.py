"""Whether a path on the host is root's alone: what gpucr runs or reads as root must not be changeable by anyone else.

The rule is the one the CRIU front applies to its own code and configuration (``nri_plugin/front/trust.py``, as sudo
does): the path and every existing directory above it, on the link side and on the target side of any symlink, owned
by root and not group- or world-writable; a sticky world-writable directory (``/tmp``, ``/var/tmp``) is not
acceptable either. What ``install/hook.sh`` installs at its default places passes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

__all__ = ["DIR", "EXEC", "FILE", "PathProblem", "root_path_problem"]

#: what a path must be: an executable file, a directory (may be missing: created by root when needed), a file
EXEC, DIR, FILE = "executable", "directory", "file"


@dataclass(frozen=True)
class PathProblem:
    """Why a path is not root's alone: ``component`` (the path or a directory above it) and what is wrong with it.
    ``unsafe``: others could change it (owner, mode); otherwise it is missing or not what it should be."""

    component: str
    why: str
    unsafe: bool

    def __str__(self) -> str:
        return f"{self.component} {self.why}"


def _chain(path: str) -> list[str]:
    out = [path]
    while (up := os.path.dirname(path)) != path:
        out.append(up)
        path = up
    return out


def _owner_mode_problem(path: str, st: os.stat_result) -> PathProblem | None:
    if st.st_uid != 0:
        return PathProblem(path, f"is owned by uid {st.st_uid}, not root", True)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        return PathProblem(path, f"is group- or world-writable (mode {mode:04o})", True)
    return None


def root_path_problem(path: str, kind: str, *, required: bool = True) -> PathProblem | None:
    """Why ``path`` is not a root-only ``kind`` (:data:`EXEC`, :data:`DIR`, :data:`FILE`), or None when it is.

    A missing path is a problem when ``required``; otherwise only the directories above it are judged (it will be
    created by root, or is optional). ``str()`` of the answer names the component, e.g. ``/opt is owned by uid 1000,
    not root``.
    """
    if not os.path.isabs(path):
        return PathProblem(path, "is not an absolute path", False)
    here = os.path.normpath(path)
    try:
        st = os.stat(here)
    except FileNotFoundError:
        if required:
            return PathProblem(here, "does not exist", False)
        st = None
    except OSError as exc:
        return PathProblem(here, f"cannot be checked: {exc.strerror}", False)
    if st is not None:
        if kind == DIR and not stat.S_ISDIR(st.st_mode):
            return PathProblem(here, "is not a directory", False)
        if kind in (EXEC, FILE) and not stat.S_ISREG(st.st_mode):
            return PathProblem(here, "is not a regular file", False)
        if kind == EXEC and not st.st_mode & stat.S_IXUSR:
            return PathProblem(here, f"is not executable (mode {stat.S_IMODE(st.st_mode):04o})", False)
    seen: set[str] = set()
    for start in (here, os.path.realpath(here)):
        for p in _chain(start):
            if p in seen:
                continue
            seen.add(p)
            try:
                pst = os.stat(p)
            except FileNotFoundError:
                continue  # a missing leaf (not required) or a missing directory root will create
            except OSError as exc:
                return PathProblem(p, f"cannot be checked: {exc.strerror}", False)
            problem = _owner_mode_problem(p, pst)
            if problem:
                return problem
    return None

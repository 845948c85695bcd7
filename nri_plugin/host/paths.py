"""Whether a path on the host is root's alone: what gpucr runs or reads as root must not be changeable by anyone else.

The rule, as sudo applies it to its own files, and the one owner of it (the CRIU front's checks of its code,
configuration and caches, ``nri_plugin/front/trust.py``, and the install scripts' checks, ``install/code.sh``, use
it): the path and every existing directory above it, on the link side and on the target side of any symlink, owned
by root and not group- or world-writable; a sticky world-writable directory (``/tmp``, ``/var/tmp``) is not
acceptable either. What ``install/hook.sh`` installs at its default places passes.

Imports ``os`` and ``stat`` only (no dataclasses): the CRIU front imports it on every start. Run as a script by
install/code.sh (``python3 -S -E nri_plugin/host/paths.py PATH``: :func:`place_problem`).
"""

from __future__ import annotations

import os
import stat

__all__ = ["DIR", "EXEC", "FILE", "PathProblem", "owner_mode_problem", "place_problem", "places", "root_path_problem"]

#: what a path must be: an executable file, a directory (may be missing: created by root when needed), a file
EXEC, DIR, FILE = "executable", "directory", "file"


class PathProblem:
    """Why a path is not root's alone: ``component`` (the path or a directory above it) and what is wrong with it.
    ``unsafe``: others could change it (owner, mode); otherwise it is missing or not what it should be. ``fix``: the
    command that mends an unsafe component ("" otherwise)."""

    __slots__ = ("component", "why", "unsafe", "fix")

    def __init__(self, component: str, why: str, unsafe: bool, fix: str = "") -> None:
        self.component, self.why, self.unsafe, self.fix = component, why, unsafe, fix

    def __str__(self) -> str:
        return f"{self.component} {self.why}"

    def __repr__(self) -> str:
        return f"PathProblem({self.component!r}, {self.why!r}, {self.unsafe!r}, {self.fix!r})"


def _chain(path: str) -> list[str]:
    out = [path]
    while (up := os.path.dirname(path)) != path:
        out.append(up)
        path = up
    return out


def places(path: str) -> list[str]:
    """``path`` and each directory above it, link side then target side (symlinks resolved), each once."""
    here = os.path.abspath(path)
    out: list[str] = []
    for p in _chain(here) + _chain(os.path.realpath(here)):
        if p not in out:
            out.append(p)
    return out


def owner_mode_problem(path: str, st: os.stat_result, owners: tuple[int, ...] = (0,)) -> PathProblem | None:
    """Why ``path`` itself (``st``, not what is above it) could be changed by a user not in ``owners``."""
    if st.st_uid not in owners:
        return PathProblem(path, f"is owned by uid {st.st_uid}, not root", True, f"chown root {path}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        return PathProblem(path, f"is group- or world-writable (mode {mode:04o})", True, f"chmod go-w {path}")
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
    for p in places(here):
        try:
            pst = os.stat(p)
        except FileNotFoundError:
            continue  # a missing leaf (not required) or a missing directory root will create
        except OSError as exc:
            return PathProblem(p, f"cannot be checked: {exc.strerror}", False)
        problem = owner_mode_problem(p, pst)
        if problem:
            return problem
    return None


def place_problem(path: str) -> str | None:
    """Why the CRIU front could not trust what an install writes at ``path`` (install/code.sh asks, for --dir,
    --prefix and --path, so an install refuses exactly what the front would refuse): the rule, applied from the
    deepest existing directory above ``path`` (what the install creates below it is root's); one line with the fix."""
    here = os.path.abspath(path)
    while not os.path.lexists(here):
        here = os.path.dirname(here)
    for p in places(here):
        try:
            problem = owner_mode_problem(p, os.stat(p), (0, os.geteuid()))
        except OSError as exc:
            return f"cannot check {p}: {exc.strerror}"
        if problem:
            return f"{problem}; fix: {problem.fix}"
    return None


if __name__ == "__main__":  # install/code.sh: python3 -S -E nri_plugin/host/paths.py PATH (the checkout's copy)
    import sys
    _why = place_problem(sys.argv[1])
    if _why:
        print(_why)
    sys.exit(1 if _why else 0)

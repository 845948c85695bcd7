"""What the front may trust: it runs as root inside every checkpoint, so its code, its configuration and its caches
must be changeable by root only.

The rule is :mod:`nri_plugin.host.paths`' (as sudo applies it: the file and every directory above it, link and target
side, owned by root, or by the user the front runs as, and not group- or world-writable; a sticky world-writable
directory such as /tmp is not acceptable either); this module words it as the front's refusal to start, walks the
front's code tree and keeps its caches. The cache directory is the front's own: root-only (0700), created so if
missing.

Imports ``os`` and :mod:`nri_plugin.host.paths` (``os`` and ``stat``) only: it runs first on every start of the front.
"""

from __future__ import annotations

import os

from ..host.paths import owner_mode_problem, places

__all__ = ["CACHE_MODE", "path_problem", "tree_problem", "code_problem", "cache_dir_problem", "read_cache",
           "write_cache"]

CACHE_MODE = 0o700
_PREFIX = "gpucr criu front: refusing to start"


def _fault(path: str, st: os.stat_result) -> str | None:
    """Why ``path`` itself (not what is above it) could be changed by a user other than root (or the front's own
    user), with the fix."""
    problem = owner_mode_problem(path, st, (0, os.geteuid()))
    return None if problem is None else f"{problem}; fix: {problem.fix}"


def _judge(path: str, what: str, top: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{_PREFIX}: cannot check {what} {top}: {path}: {exc.strerror}"
    fault = _fault(path, st)
    return fault and f"{_PREFIX}: {what} {top} is not safe: {fault} (or install the front with install/front.sh)"


def path_problem(path: str, what: str) -> str | None:
    """One line saying why ``path`` (and each directory above it, link and target side) cannot be trusted, else None."""
    for p in places(path):
        problem = _judge(p, what, path)
        if problem:
            return problem
    return None


def tree_problem(top: str, what: str) -> str | None:
    """:func:`path_problem` of ``top``, then every directory and file below it (bytecode caches included)."""
    problem = path_problem(top, what)
    if problem:
        return problem
    stack = [os.path.realpath(top)]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as exc:
            return f"{_PREFIX}: cannot check {what} {top}: {d}: {exc.strerror}"
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022 and not e.is_symlink():
                return _judge(e.path, what, top) or f"{_PREFIX}: {what} {top} is not safe: {e.path}"
            if e.is_symlink():
                problem = path_problem(e.path, what)
                if problem:
                    return problem
            elif e.is_dir(follow_symlinks=False):
                stack.append(e.path)
    return None


def code_problem(launcher: str, package: str) -> str | None:
    """The front's own code: the program the runtime ran (a link to ``hooks/criu_front.py``, or that file) and the
    ``nri_plugin`` package tree it imports from."""
    return path_problem(launcher, "the CRIU front's program") or tree_problem(package, "the CRIU front's code")


def _usable(cache_dir: str) -> bool:
    """Create the cache dir (0700) if missing; False when that is impossible (a read-only /var: no caching)."""
    try:
        os.makedirs(cache_dir, mode=CACHE_MODE, exist_ok=True)
    except OSError:
        return False
    return True


def cache_dir_problem(cache_dir: str) -> str | None:
    """The cache dir must be root-only: checked like the code, and not readable by others either (the caches say
    which libraries a root process loads)."""
    problem = path_problem(cache_dir, "the cache dir")
    if problem:
        return problem
    mode = os.stat(cache_dir).st_mode & 0o777
    if mode & 0o077:
        return (f"{_PREFIX}: the cache dir {cache_dir} is not root-only (mode {mode:04o}); fix: chmod 0700 "
                f"{cache_dir}")
    return None


def read_cache(cache_dir: str | None, name: str) -> str | None:
    """The text of cache file ``name``, None when there is none (or the cache dir cannot be created: no caching).

    Raises:
        FrontError: the cache dir or file is not root-only; the message is one line naming the path and the fix.
    """
    if not cache_dir or not _usable(cache_dir):
        return None
    from .errors import FrontError
    problem = cache_dir_problem(cache_dir)
    path = os.path.join(cache_dir, name)
    if not problem and os.path.lexists(path):
        problem = path_problem(path, "the cache file")
        if not problem and os.path.islink(path):
            problem = f"{_PREFIX}: the cache file {path} is a symlink; fix: rm {path} (the front writes it again)"
    if problem:
        raise FrontError(problem)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def write_cache(cache_dir: str | None, name: str, text: str) -> None:
    """Replace cache file ``name`` atomically (0600); best effort: a cache that cannot be written is recomputed."""
    if not cache_dir or not _usable(cache_dir) or cache_dir_problem(cache_dir):
        return
    path = os.path.join(cache_dir, name)
    tmp = f"{path}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass

"""Which CRIU binary gpucr uses on this node, and its version as ``criu --version`` prints it.

One rule for every caller (``gpucr setup``'s real criu for the front, the CLI's ``--criu`` default, the node
config's ``criu_path``): gpucr-criu's launcher when that package is installed, else ``criu`` on PATH. The version is
asked once per installed binary (path, mtime, size) and process: the plugin checks it at every restore's
CreateContainer, which containerd gives 2 s, and the daemon's periodic checkpoints record it in ``gpucr.json``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

from .errors import CriuError

__all__ = ["GPUCR_CRIU", "SBIN", "VERSION_TIMEOUT_S", "cli_version", "default_criu", "node_criu", "parse_cli_version"]

#: gpucr-criu's launcher (packaging/build.sh): the real criu of the front and the CLI when installed
GPUCR_CRIU = Path("/usr/lib/gpucr/criu/criu")
#: the longest ``criu --version`` may take (it answers in about 10 ms)
VERSION_TIMEOUT_S = 1.5
#: where criu is looked for after PATH (root's PATH may lack them)
SBIN = "/usr/sbin:/sbin"
_cache: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def default_criu() -> str | None:
    """gpucr-criu's launcher if installed, else ``criu`` on PATH (or in /usr/sbin, /sbin); None when neither."""
    if GPUCR_CRIU.exists():
        return str(GPUCR_CRIU)
    return shutil.which("criu", path=f"{os.environ.get('PATH', '')}:{SBIN}")


def node_criu(configured: str = "") -> str:
    """The node's CRIU: ``configured`` (the node config's ``criu_path``) when set, else :func:`default_criu`.

    Raises:
        CriuError: none is set and none is installed (names the fix).
    """
    found = configured or default_criu()
    if not found:
        raise CriuError(f"no criu found (neither gpucr-criu's {GPUCR_CRIU} nor criu on PATH): install the gpucr-criu "
                        "package (or CRIU >= 4.1), or set criu_path in /etc/gpucr/config.toml")
    return found


def parse_cli_version(text: str) -> str | None:
    """The version in ``criu --version``'s output ("Version: 4.2.1" -> "4.2.1"); None when it names none."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Version" and value.strip():
            return value.strip()
    return None


def cli_version(binary: str) -> str:
    """``binary``'s version as ``criu --version`` prints it (e.g. "4.2.1"), cached by the binary's resolved path,
    mtime and size (an upgraded CRIU is asked again).

    Raises:
        CriuError: the binary is missing, does not run, or prints no version (names it and the fix).
    """
    path = binary if "/" in binary else shutil.which(binary)
    fix = ("install gpucr-criu (or CRIU >= 4.1), or set criu_path in /etc/gpucr/config.toml to the CRIU gpucr's "
           "front runs")
    try:
        if path is None:
            raise FileNotFoundError(f"{binary} is not on PATH")
        st = os.stat(path)
    except OSError as exc:
        raise CriuError(f"cannot run criu {binary!r} ({exc}): {fix}") from exc
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    with _lock:
        if key in _cache:
            return _cache[key]
    try:
        r = subprocess.run([path, "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=VERSION_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CriuError(f"`{path} --version` failed ({exc}): {fix}") from exc
    version = parse_cli_version(r.stdout) if r.returncode == 0 else None
    if version is None:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CriuError(f"`{path} --version` printed no version (exit {r.returncode}: {tail[0]}): {fix}")
    with _lock:
        _cache[key] = version
    return version

"""The clean-slate check: what the suite created on the host and left behind.

``Snapshot.take`` at session start, ``leftovers`` at session end (tests/conftest.py fails the run when the list is
not empty). Checked: mounts under the test root, ``/run/containerd`` or the session's pytest temp dir; processes
whose executable, working directory or command line points there; cgroups named ``gpucr-*`` at the top of any
visible hierarchy; entries of the test root (private containerd dirs with their NRI sockets, front routes); shim
sockets in ``/run/containerd/s`` that no process listens on; ``/run/containerd`` itself when the suite created it.
Only what appeared after the snapshot and is attributable to this run counts: in the session's temp dir, or named
after its ``GPUCR_INSTANCE`` (the default names when unset), so runs of several developers on one machine do not
fail each other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nri_plugin.host.cgroup import cgroup_mounts

RUN_CONTAINERD = Path("/run/containerd")
# what the suite names things without GPUCR_INSTANCE (install/containerd.sh, tests/front, tests/nri, tests/cgroups.py):
# on a machine shared with other runs only these (and the session's temp dir) are this run's
_DEFAULT_NAMES = re.compile(r"(^|[/ ])(ctrd-[0-9.]+(-default-fr|-gpucr-pre)?|front-route-default-fr|gpufront-fake-default"
                            r"|rig-v2|gpucr-test-([0-9.]+(-default-fr|-gpucr-pre)?|front|[a-z]+-[0-9a-f]{8}))($|[/ ])")


def _unescape(s: str) -> str:
    return s.encode().decode("unicode_escape") if "\\" in s else s


def _mountpoints() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4:
            out.append(_unescape(fields[4]))
    return out


def _procs() -> dict[tuple[int, str], str]:
    """{(pid, start time): "exe | cwd | cmdline"} of every process (those that vanish while read are skipped)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            start = (d / "stat").read_text().rsplit(")", 1)[1].split()[19]
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            parts = [cmd]
            for link in ("exe", "cwd"):
                try:
                    parts.insert(0, os.readlink(d / link))
                except OSError:
                    pass
            out[(int(d.name), start)] = " | ".join(parts)
        except (OSError, IndexError):
            continue
    return out


def _cgroups() -> set[str]:
    out = set()
    for m in cgroup_mounts(Path("/proc/self/mountinfo").read_text()):
        if m.root != "/":
            continue
        try:
            out.update(str(p) for p in m.mountpoint.iterdir() if p.name.startswith("gpucr") and p.is_dir())
        except OSError:
            continue
    return out


def _entries(d: Path) -> set[str]:
    try:
        return {str(p) for p in d.iterdir()}
    except OSError:
        return set()


def _bound_unix_paths() -> set[str]:
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {ln.split()[7] for ln in lines if len(ln.split()) >= 8}


@dataclass
class Snapshot:
    roots: tuple[str, ...]
    instance: str | None
    mounts: set[str] = field(default_factory=set)
    procs: set[tuple[int, str]] = field(default_factory=set)
    cgroups: set[str] = field(default_factory=set)
    root_entries: set[str] = field(default_factory=set)
    shim_sockets: set[str] = field(default_factory=set)
    run_containerd: bool = False

    @classmethod
    def take(cls, test_root: Path, tmp_root: Path, instance: str | None) -> Snapshot:
        s = cls((str(test_root), str(RUN_CONTAINERD), str(tmp_root)), instance)
        s.mounts = set(s._watched(_mountpoints()))
        s.procs = set(_procs())
        s.cgroups = _cgroups()
        s.root_entries = _entries(test_root)
        s.shim_sockets = _entries(RUN_CONTAINERD / "s")
        s.run_containerd = RUN_CONTAINERD.exists()
        return s

    def _watched(self, paths: Iterable[str]) -> Iterable[str]:
        return (p for p in paths if any(p == r or p.startswith(r + "/") for r in self.roots))

    def _mine(self, text: str) -> bool:
        """Attributable to this run: in the session's temp dir, or named with its instance (the default names when
        GPUCR_INSTANCE is unset)."""
        if self.roots[2] in text:
            return True
        return self.instance in text if self.instance else bool(_DEFAULT_NAMES.search(text))

    def leftovers(self) -> list[str]:
        """One line per thing created since the snapshot and still there."""
        out = [f"mount {m}" for m in sorted(set(self._watched(_mountpoints())) - self.mounts) if self._mine(m)]
        me = os.getpid()
        for (pid, start), what in sorted(_procs().items()):
            if pid == me or (pid, start) in self.procs or not self._mine(what):
                continue
            if any(r in what for r in self.roots):
                out.append(f"process {pid}: {what[:300]}")
        out += [f"cgroup {c}" for c in sorted(_cgroups() - self.cgroups) if self._mine(c)]
        test_root = Path(self.roots[0])
        out += [f"test-root entry {e}" for e in sorted(_entries(test_root) - self.root_entries) if self._mine(e)]
        bound = _bound_unix_paths()
        # neither shim socket names nor /run/containerd say whose they are: checked only when the run has no instance
        if self.instance is None:
            out += [f"shim socket nobody listens on {s}"
                    for s in sorted(_entries(RUN_CONTAINERD / "s") - self.shim_sockets) if s not in bound]
        if (self.instance is None and RUN_CONTAINERD.exists() and not self.run_containerd
                and not list(test_root.glob("ctrd-*/containerd.pid"))):
            out.append(f"{RUN_CONTAINERD} (created during the run, no private containerd left to use it)")
        return out

#!/usr/bin/env python3
"""Check nri_plugin.host.cgroup on a cgroup-v2-only host (the H200 device machine), stdlib only.

Makes a cgroup with a child cgroup under the v2 root, puts a busy shell loop and a sleeper in them, then: finds them
with cgroups_of, freezes (timed), proves the loop stopped, checks self/parent-frozen detection and the refusal to
thaw a child of a frozen parent, thaws (timed), and cleans up. Prints one JSON line; exit status 0 when every check
holds. Run as root: ``python3 bench/cgroup_v2_probe.py``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nri_plugin.host.cgroup import CgroupError, Freezer, FreezerState, cgroups_of, cgroup_mounts  # noqa: E402


def main() -> int:
    mounts = cgroup_mounts(Path("/proc/self/mountinfo").read_text())
    v2 = [m for m in mounts if m.version == 2 and m.root == "/"]
    v1 = [m for m in mounts if m.version == 1]
    checks: dict[str, object] = {"host": platform.node(), "kernel": platform.release(),
                                 "v1_mounts": len(v1), "v2_mount": str(v2[0].mountpoint) if v2 else None}
    if not v2:
        print(json.dumps({**checks, "ok": False, "error": "no cgroup2 mount"}))
        return 1
    top = v2[0].mountpoint / f"gpucr-probe-{uuid.uuid4().hex[:8]}"
    top.mkdir()
    (top / "sub").mkdir()
    out = Path(tempfile.mkdtemp()) / "ticks"
    loop = subprocess.Popen(["sh", "-c", f"while :; do echo x >> {out}; sleep 0.01; done"])
    sleeper = subprocess.Popen(["sleep", "1000"])
    ok = True
    try:
        (top / "cgroup.procs").write_text(str(loop.pid))
        (top / "sub" / "cgroup.procs").write_text(str(sleeper.pid))
        f, sub = Freezer(top, 2), Freezer(top / "sub", 2)
        pc = cgroups_of(sleeper.pid)
        checks["found_v2"] = pc.unified == top / "sub"
        if not any("freezer" in m.controllers for m in v1):  # v2-only: the v2 freezer is the one to use
            checks["picks_v2_freezer"] = pc.v1_freezer is None and pc.freezer == sub
        checks["pids_recursive"] = set(f.pids()) >= {loop.pid, sleeper.pid}
        t = time.monotonic()
        f.freeze()
        checks["freeze_ms"] = round((time.monotonic() - t) * 1e3, 2)
        size = out.stat().st_size
        time.sleep(0.3)
        checks["loop_stopped"] = out.stat().st_size == size
        checks["state_frozen"] = f.state() == FreezerState.FROZEN and f.self_frozen()
        deadline = time.monotonic() + 5
        while sub.state() != FreezerState.FROZEN and time.monotonic() < deadline:
            time.sleep(0.005)
        checks["child_parent_frozen"] = sub.parent_frozen() and not sub.self_frozen() and sub.frozen()
        try:
            sub.thaw()
            checks["child_thaw_refused"] = False
        except CgroupError:
            checks["child_thaw_refused"] = True
        t = time.monotonic()
        f.thaw()
        checks["thaw_ms"] = round((time.monotonic() - t) * 1e3, 2)
        time.sleep(0.2)
        checks["loop_runs_again"] = out.stat().st_size > size and f.state() == FreezerState.THAWED
        me = cgroups_of(os.getpid())
        checks["root_is_thawed"] = Freezer(v2[0].mountpoint, 2).state() == FreezerState.THAWED
        checks["own_cgroup"] = str(me.unified)
        ok = all(v for k, v in checks.items() if isinstance(v, bool))
    except Exception as exc:  # report, then clean up
        checks["error"] = f"{type(exc).__name__}: {exc}"
        ok = False
    finally:
        try:
            Freezer(top, 2).thaw()
        except CgroupError:
            pass
        for p in (loop, sleeper):
            p.kill()
            p.wait()
        for d in (top / "sub", top):
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)
    print(json.dumps({**checks, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Added latency of the CRIU front per checkpoint (issue 5: target < 50 ms; the prototype's Python start cost 150 ms).

Two measurements, both against the real components:

1. ``ctr t checkpoint`` of a running counter container on a private containerd whose runc finds ``criu`` in a route
   directory (install/front.sh route). "off": that ``criu`` is a symlink to the real criu; "handoff": the front with
   no hooks (the default for unmanaged containers: it answers runc's VERSION call from the cached answer and execs
   the real criu for the DUMP); "gpucr": the product default (``hooks = nri_plugin.handlers.front_cuda:make``, which looks at
   the node config, the state dir and /proc for this non-CUDA container, then hands over); "relay": the front with
   hooks that want every session and do nothing
   (``bench/_want_all.py``: VERSION from the cache, the DUMP fully relayed with fd rewrite), i.e. what a managed
   container pays before any engine work. Modes are
   swapped by rename/conf edit between runs, interleaved after a warm-up, so all see the same container, daemon and
   disk state. Each checkpoint runs criu twice (VERSION, then DUMP).
2. One ``criu swrk`` VERSION exchange driven from this process (no containerd), same three modes, which isolates
   the front's start-up plus relay cost per criu invocation.

Usage (root): .venv/bin/python bench/front_latency.py [--version 1.7.24] [--runs 7] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nri_plugin.ckpt.criu._pb import rpc_pb2  # noqa: E402
from tests import testenv  # noqa: E402

REAL_CRIU = testenv.TEST_ROOT / "bin/criu"
INSTANCE = f"{os.environ.get('GPUCR_INSTANCE') or 'default'}-bench"


def version_exchange(criu: str) -> float:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    t0 = time.perf_counter()
    p = subprocess.Popen([criu, "swrk", str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    ours.send(rpc_pb2.criu_req(type=rpc_pb2.VERSION).SerializeToString())
    resp = rpc_pb2.criu_resp.FromString(ours.recv(1 << 16))
    ours.shutdown(socket.SHUT_WR)
    ours.recv(1 << 16)
    rc = p.wait()
    dt = time.perf_counter() - t0
    ours.close()
    assert resp.success and rc == 0, (resp, rc)
    return dt * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default="1.7.24")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--markdown", action="store_true", help="print a results section for bench/results/")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("front_latency: run as root (it starts containerd, runc and CRIU)")
    route = testenv.TEST_ROOT / f"front-route-{INSTANCE}"
    shutil.rmtree(route, ignore_errors=True)
    subprocess.run(["bash", str(REPO / "install/front.sh"), "route", "--dir", str(route), "--real-criu",
                    str(REAL_CRIU), "--log-dir", str(route / "log"), "--hooks", "none"], check=True,
                   capture_output=True)
    front = route / "path/criu"

    conf = route / "path/front.conf"
    base_conf = conf.read_text()
    front_target = os.readlink(front)
    modes = ("off", "handoff", "gpucr", "relay")
    hooks = {"gpucr": "nri_plugin.handlers.front_cuda:make", "relay": "bench._want_all:make"}

    def mode(m: str) -> None:
        tmp = route / "path/criu.swap"
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(REAL_CRIU if m == "off" else front_target)
        os.replace(tmp, front)
        conf.write_text(base_conf + (f"hooks = {hooks[m]}\n" if m in hooks else ""))

    env = {**os.environ, "GPUCR_INSTANCE": INSTANCE, "GPUCR_CRIU_DIR": str(route / "path")}
    r = subprocess.run(["bash", str(REPO / "install/containerd.sh"), "start", args.version], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"containerd start failed:\n{r.stderr}")
    import json
    ctrd = testenv.Containerd(json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text()))
    name = f"bench-{uuid.uuid4().hex[:6]}"
    work = Path(ctrd.info["dir"]) / "bench"
    work.mkdir()
    load0 = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results: dict[str, list[float]] = {m: [] for m in modes}
    version: dict[str, list[float]] = {m: [] for m in modes}
    try:
        d = ctrd.info["dir"]
        ctrd.ctr("run", "-d", "--null-io", "--fifo-dir", f"{d}/fifo", "--cgroup", f"{ctrd.cgroup_parent}/{name}",
                 ctrd.image, name, "/bin/sh", "-c", "i=0; while :; do i=$((i+1)); sleep 0.1; done")
        time.sleep(0.5)
        for i in range(args.runs + 1):
            for m in modes:
                mode(m)
                t0 = time.perf_counter()
                ctrd.ctr("t", "checkpoint", "--image-path", str(work / f"{m}-{i}"), name)
                dt = (time.perf_counter() - t0) * 1000
                shutil.rmtree(work / f"{m}-{i}", ignore_errors=True)
                if i:  # run 0 is the warm-up
                    results[m].append(dt)
        for i in range(args.runs + 1):
            for m in modes:
                mode(m)
                dt = version_exchange(str(front))
                if i:
                    version[m].append(dt)
    finally:
        mode("handoff")
        ctrd.ctr("t", "kill", "-s", "KILL", name, check=False)
        subprocess.run(["bash", str(REPO / "install/containerd.sh"), "stop", args.version], env=env,
                       capture_output=True)
        shutil.rmtree(route, ignore_errors=True)

    def cell(xs: list[float]) -> str:
        return f"{', '.join(f'{x:.0f}' for x in xs)} (median **{statistics.median(xs):.0f}**, min {min(xs):.0f})"

    def row(label: str, res: dict[str, list[float]]) -> str:
        off, off_min = statistics.median(res["off"]), min(res["off"])
        added = " / ".join(f"**{statistics.median(res[m]) - off:+.0f}** (min {min(res[m]) - off_min:+.0f})"
                           for m in modes[1:])
        return f"| {label} | {' | '.join(cell(res[m]) for m in modes)} | {added} |"

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine())
    print(f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, containerd {args.version}, {args.runs} runs each\n")
    print(f"Load average before/after: {load0} / {' '.join(Path('/proc/loadavg').read_text().split()[:3])} "
          "(the machine is shared; other sessions' tests ran meanwhile).\n")
    print(f"Machine: {platform.node()}, {cpu}, {os.cpu_count()} cores, kernel {platform.release()}, "
          f"Python {platform.python_version()} (front: /usr/bin/python3 -S -E).\n")
    print("| what (ms) | real criu (off) | front, handoff (no hooks) | front, gpucr hooks (non-CUDA: handed over) "
          "| front, relay (hooks want all, no-op) | added: handoff / gpucr / relay |")
    print("|---|---|---|---|---|---|")
    print(row(f"`ctr t checkpoint` (containerd {args.version})", results))
    print(row("one `criu swrk` VERSION exchange", version))
    floor = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run(["/usr/bin/python3", "-S", "-E", "-c", "pass"], check=True)
        floor.append((time.perf_counter() - t0) * 1000)
    print(f"\nFloor: `/usr/bin/python3 -S -E -c pass` alone takes {statistics.median(floor):.0f} ms median "
          f"(min {min(floor):.0f}) here; the front starts twice per checkpoint.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

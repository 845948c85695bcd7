#!/usr/bin/env python3
"""Benchmark (not a test): NRI handling latency and RSS of the ``gpucr plugin`` daemon.

1. fake: the daemon (a real subprocess, external mode) connects to the in-process fake runtime
   (tests/fakes/runtime.py, built on gpucr's own mux/ttrpc) over a real unix socket; N CreateContainer round trips,
   one after another, as containerd sends them.
2. containerd: the daemon connects to a private containerd 2.1.9 (or --containerd VERSION) with NRI; 50 CRI pods,
   each with one container, are created concurrently; every NRI request the daemon handles is timed.

Plugin-side handling time is what the stub itself logs at debug level per request ("<what> handled in X ms":
request decoded -> handler -> response encoded); the runtime-side round trip is measured too in (1). RSS is the
daemon's VmRSS/VmHWM from /proc after the run. Prints a Markdown section; --out appends it to a results file.

Run as root from the repository root: ``GPUCR_INSTANCE=bench .venv/bin/python bench/nri_latency.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fakes.runtime import FakeRuntime, container, pod  # noqa: E402

HANDLED = re.compile(r"(\w+) handled in ([0-9.]+) ms")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def rss_kib(pid: int) -> tuple[int, int]:
    st = Path(f"/proc/{pid}/status").read_text()
    get = lambda k: int(re.search(rf"^{k}:\s+(\d+) kB", st, re.M).group(1))  # type: ignore[union-attr]  # noqa: E731
    return get("VmRSS"), get("VmHWM")


def start_daemon(sock: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "nri_plugin.cli.main", "-vv", "plugin", "--logger", "--socket", sock,
                             "--name", "bench", "--idx", "70", "--log-file", str(log)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def handled(log: Path, what: str | None = None) -> list[float]:
    return [float(ms) for w, ms in HANDLED.findall(log.read_text()) if what is None or w == what]


async def fake_run(n: int, tmp: Path) -> dict[str, object]:
    path = str(tmp / "fake-nri.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen()
    lst.setblocking(False)
    log = tmp / "fake-daemon.log"
    proc = start_daemon(path, log)
    loop = asyncio.get_running_loop()
    rt = FakeRuntime(pods=[pod(i) for i in range(10)], containers=[container(i, f"pod{i}") for i in range(10)])
    try:
        conn, _ = await asyncio.wait_for(loop.sock_accept(lst), 20)
        await rt.attach(conn)
        await asyncio.wait_for(rt.synchronized.wait(), 20)
        p = pod(1, **{"example.com/annotation": "x" * 200})
        rtt: list[float] = []
        for i in range(n):
            c = container(i, "pod1")
            t0 = time.perf_counter()
            await rt.create_container(p, c)
            rtt.append((time.perf_counter() - t0) * 1e3)
        await asyncio.sleep(0.5)  # let the daemon flush its log
        rss, hwm = rss_kib(proc.pid)
        side = handled(log, "create_container")
    finally:
        await rt.aclose()
        proc.terminate()
        proc.wait(10)
        lst.close()
    return {"n": n, "plugin_ms": side, "rtt_ms": rtt, "rss_kib": rss, "hwm_kib": hwm}


def containerd_run(version: str, pods: int, tmp: Path) -> dict[str, object]:
    from tests import testenv

    inst = testenv.start(version)
    log = tmp / "ctrd-daemon.log"
    proc = start_daemon(inst.nri_socket, log)
    try:
        testenv.wait_for(lambda: log.exists() and "synchronized" in log.read_text(), what="daemon to register")

        def one(i: int) -> float:
            t0 = time.perf_counter()
            with inst.cri() as c:
                cfg = testenv.pod_config(f"bench-{i}", cgroup_parent=inst.cgroup_parent)
                pid = c.run_pod_sandbox(cfg)
                cid = c.create_container(pid, testenv.container_config("c", inst.image, command=["sleep", "600"]),
                                         cfg)
                c.start_container(cid)
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(pods) as ex:
            per_pod = list(ex.map(one, range(pods)))
        wall = time.perf_counter() - t0
        time.sleep(1.0)
        rss, hwm = rss_kib(proc.pid)
        times = handled(log)
        creates = handled(log, "create_container")
        errors = [ln for ln in log.read_text().splitlines() if " ERROR " in ln]
    finally:
        proc.terminate()
        proc.wait(10)
        testenv.stop(version)
    return {"pods": pods, "wall_s": wall, "per_pod_s": per_pod, "all_ms": times, "create_ms": creates,
            "rss_kib": rss, "hwm_kib": hwm, "errors": errors, "version": version}


def report(fake: dict[str, object], real: dict[str, object]) -> str:
    def row(name: str, xs: list[float]) -> str:
        return (f"| {name} | {len(xs)} | {statistics.median(xs):.3f} | {pct(xs, 99):.3f} | {max(xs):.3f} |")

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} cores ({cpu}), {platform.platform()}, "
        f"Python {platform.python_version()}.",
        "",
        f"### 1. {fake['n']} CreateContainer round trips, daemon <-> in-process fake runtime (unix socket)",
        "",
        "| measure | n | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        row("plugin-side handling (create_container)", fake["plugin_ms"]),  # type: ignore[arg-type]
        row("runtime-side round trip", fake["rtt_ms"]),  # type: ignore[arg-type]
        "",
        f"Daemon RSS after the run: {fake['rss_kib'] / 1024:.1f} MiB (peak {fake['hwm_kib'] / 1024:.1f} MiB).",
        "",
        f"### 2. {real['pods']} CRI pods (one container each) created concurrently, containerd {real['version']}",
        "",
        "| measure | n | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        row("plugin-side handling, all NRI requests", real["all_ms"]),  # type: ignore[arg-type]
        row("plugin-side handling, create_container", real["create_ms"]),  # type: ignore[arg-type]
        "",
        f"All {real['pods']} pods + containers created in {real['wall_s']:.1f} s (per pod p50 "
        f"{statistics.median(real['per_pod_s']):.2f} s, CRI-side, dominated by containerd/runc on "  # type: ignore[arg-type]
        f"{os.cpu_count()} cores). Daemon errors logged: {len(real['errors'])}. "  # type: ignore[arg-type]
        f"Daemon RSS after the run: {real['rss_kib'] / 1024:.1f} MiB "  # type: ignore[operator]
        f"(peak {real['hwm_kib'] / 1024:.1f} MiB).",  # type: ignore[operator]
        "",
        "Targets (issue 3): p99 < 5 ms plugin-side, RSS < 60 MB.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("-n", type=int, default=1000, help="CreateContainer round trips against the fake runtime")
    ap.add_argument("--pods", type=int, default=50, help="concurrent CRI pods against containerd")
    ap.add_argument("--containerd", default="2.1.9", help="containerd version for part 2")
    ap.add_argument("--out", type=Path, help="append the Markdown report to this file")
    args = ap.parse_args()
    os.environ.setdefault("GPUCR_INSTANCE", "bench")
    with tempfile.TemporaryDirectory() as d:
        fake = asyncio.run(fake_run(args.n, Path(d)))
        real = containerd_run(args.containerd, args.pods, Path(d))
    text = report(fake, real)
    print(text)
    if real["errors"]:
        print("daemon errors:\n" + "\n".join(real["errors"][:10]), file=sys.stderr)  # type: ignore[index]
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")
    print(json.dumps({"fake_p99_ms": pct(fake["plugin_ms"], 99), "real_p99_ms": pct(real["all_ms"], 99)}))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())

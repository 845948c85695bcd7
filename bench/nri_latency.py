#!/usr/bin/env python3
"""Benchmark (not a test): NRI handling latency and RSS of the ``gpucr plugin`` daemon running gpucr's policy.

The daemon is the product's own (``gpucr plugin --config NODE.toml``, the PolicyPlugin), with a private node config
(state dir, CRIU config dir, the node's runc.conf, and gpucr-hook installed by ``install/hook.sh``, all in a
root-only dir under /run). Every pod carries
``gpucr.io/checkpoint: enabled`` plus two CRIU options, so every CreateContainer is a managed container: the policy
merges the node's runc.conf with the options, writes the CRIU config file, writes the container's state record, and
answers with the ``org.criu.config`` annotation and the createRuntime/poststop hooks. The bench checks that each
container got them (a run that did not exercise the policy fails instead of reporting numbers).

1. fake: the daemon (a real subprocess, external mode) connects to the in-process fake runtime
   (tests/fakes/runtime.py, built on gpucr's own mux/ttrpc) over a real unix socket; N CreateContainer round trips,
   one after another, as containerd sends them.
2. containerd: the daemon connects to a private containerd (each --containerd VERSION, default 2.1.9 and 1.7.24)
   with NRI; 50 CRI pods, each with one managed container, are created and started concurrently; every NRI request
   the daemon handles is timed, and each CRI CreateContainer call (which waits for the plugin) is timed end to end.

Plugin-side handling time is what the stub itself logs at debug level per request ("<what> handled in X ms":
request decoded -> handler -> response encoded). RSS is the daemon's VmRSS/VmHWM from /proc after the run. The load
average is read before and after each part (the machine may be shared). Prints a Markdown section; --out appends it.

Run as root from the repository root: ``GPUCR_INSTANCE=bench .venv/bin/python bench/nri_latency.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fakes.runtime import FakeRuntime, container, pod  # noqa: E402

HANDLED = re.compile(r"(\w+) handled in ([0-9.]+) ms")
#: what makes a pod managed, plus two CRIU options the policy merges into the container's CRIU config
ANNOTATIONS = {"gpucr.io/checkpoint": "enabled", "gpucr.io/file-locks": "true", "gpucr.io/tcp-established": "true"}
CRIU_CONFIG = "org.criu.config"


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


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def node_setup(tmp: Path, run: Path, hook: Path) -> dict[str, Path]:
    """A private node config: state and CRIU config dirs under ``run`` (where /run/gpucr would be), the node's
    runc.conf under ``tmp`` (a root-only dir), and the gpucr-hook installed by install/hook.sh."""
    tmp.mkdir(mode=0o700)
    runc_conf = tmp / "runc.conf"
    runc_conf.write_text("# the node's own runc CRIU config\nghost-limit 2M\n")
    paths = {"state": run / tmp.name, "criu": run / tmp.name / "criu", "hook": hook, "runc_conf": runc_conf,
             "config": tmp / "config.toml"}
    paths["config"].write_text(f'state_dir = "{paths["state"]}"\ncriu_config_dir = "{paths["criu"]}"\n'
                               f'hook_path = "{hook}"\nrunc_criu_config = "{runc_conf}"\n')
    return paths


@contextlib.contextmanager
def run_dir(tmp: Path, where: str) -> Iterator[tuple[Path, str]]:
    """Where the state and CRIU config dirs live: a private tmpfs (``tmpfs``: what /run, the default
    ``state_dir = /run/gpucr``, is on a systemd node) or the machine's disk (``disk``)."""
    run = tmp / "run"
    run.mkdir(mode=0o755)
    if where == "disk":
        yield run, subprocess.run(["findmnt", "-no", "FSTYPE", "-T", str(run)], capture_output=True,
                                  text=True).stdout.strip() + " (the machine's disk)"
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=256m", "gpucr-bench", str(run)], check=True)
    try:
        yield run, "tmpfs (as /run on a systemd node)"
    finally:
        if subprocess.run(["umount", str(run)]).returncode != 0:
            subprocess.run(["umount", "-l", str(run)])


def start_daemon(sock: str, log: Path, config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "nri_plugin.cli.main", "-vv", "plugin", "--config", str(config),
                             "--socket", sock, "--name", "bench", "--idx", "70", "--log-file", str(log)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def handled(log: Path, what: str | None = None) -> list[float]:
    return [float(ms) for w, ms in HANDLED.findall(log.read_text()) if what is None or w == what]


def records(node: dict[str, Path]) -> set[str]:
    d = node["state"] / "containers"
    return {p.stem for p in d.glob("*.json")} if d.is_dir() else set()


def check_policy_ran(node: dict[str, Path], ids: list[str], where: str) -> str:
    """Every container has its state record naming a CRIU config that holds the node's and the pod's options."""
    from nri_plugin.policy import load_record

    missing = sorted(set(ids) - records(node))
    if missing:
        raise SystemExit(f"{where}: no state record for {len(missing)} of {len(ids)} containers (e.g. {missing[0]}): "
                         "the policy did not run; no numbers reported")
    confs = {load_record(node["state"], i).criu_config for i in ids}
    for c in confs:
        text = Path(c).read_text()
        if not all(opt in text for opt in ("ghost-limit 2M", "file-locks", "tcp-established")):
            raise SystemExit(f"{where}: CRIU config {c} lacks the merged options:\n{text}")
    return f"{len(ids)} state records, {len(confs)} CRIU config file(s) ({', '.join(Path(c).name for c in confs)})"


async def fake_run(n: int, tmp: Path, run: Path, hook: Path) -> dict[str, object]:
    node = node_setup(tmp / "fake", run, hook)
    path = str(tmp / "fake-nri.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen()
    lst.setblocking(False)
    log = tmp / "fake-daemon.log"
    load0 = loadavg()
    proc = start_daemon(path, log, node["config"])
    loop = asyncio.get_running_loop()
    rt = FakeRuntime(pods=[pod(i) for i in range(10)], containers=[container(i, f"pod{i}") for i in range(10)])
    try:
        conn, _ = await asyncio.wait_for(loop.sock_accept(lst), 20)
        await rt.attach(conn)
        await asyncio.wait_for(rt.synchronized.wait(), 20)
        p = pod(1, **ANNOTATIONS, **{"example.com/annotation": "x" * 200})
        rtt: list[float] = []
        ids: list[str] = []
        for i in range(n):
            c = container(1000 + i, "pod1")
            t0 = time.perf_counter()
            resp = await rt.create_container(p, c)
            rtt.append((time.perf_counter() - t0) * 1e3)
            ids.append(c.id)
            if CRIU_CONFIG not in resp.adjust.annotations or len(resp.adjust.hooks.create_runtime) != 1:
                raise SystemExit(f"fake runtime: container {c.id} got no CRIU config/hooks from the plugin: {resp}")
        await asyncio.sleep(0.5)  # let the daemon flush its log
        rss, hwm = rss_kib(proc.pid)
        side = handled(log, "create_container")
        checked = check_policy_ran(node, ids, "fake runtime")
    finally:
        await rt.aclose()
        proc.terminate()
        proc.wait(10)
        lst.close()
    return {"n": n, "plugin_ms": side, "rtt_ms": rtt, "rss_kib": rss, "hwm_kib": hwm, "checked": checked,
            "load": (load0, loadavg())}


def containerd_run(version: str, pods: int, tmp: Path, run: Path, hook: Path) -> dict[str, object]:
    from nri_plugin.cri import CriError
    from tests import testenv

    node = node_setup(tmp / f"ctrd-{version}", run, hook)
    inst = testenv.start(version)
    binaries = (f"{_version([str(Path(inst.info['ctr']).parent / 'containerd'), '--version'])}; "
                f"{_version([shutil.which('runc') or 'runc', '--version'])}")
    log = tmp / f"ctrd-{version}-daemon.log"
    load0 = loadavg()
    proc = start_daemon(inst.nri_socket, log, node["config"])
    try:
        testenv.wait_for(lambda: log.exists() and "synchronized" in log.read_text(), what="daemon to register")

        def one(i: int) -> tuple[float, float, str, str]:
            t0 = time.perf_counter()
            with inst.cri() as c:
                cfg = testenv.pod_config(f"bench-{i}", cgroup_parent=inst.cgroup_parent, annotations=ANNOTATIONS)
                pid = c.run_pod_sandbox(cfg)
                t1 = time.perf_counter()
                cid = c.create_container(pid, testenv.container_config("c", inst.image, command=["sleep", "600"]),
                                         cfg)
                create = time.perf_counter() - t1
                try:
                    c.start_container(cid)
                except CriError as exc:  # runc/the OCI hook under load: counted and reported, the NRI part stands
                    return time.perf_counter() - t0, create, cid, str(exc)
            return time.perf_counter() - t0, create, cid, ""

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(pods) as ex:
            results = list(ex.map(one, range(pods)))
        wall = time.perf_counter() - t0
        time.sleep(1.0)
        rss, hwm = rss_kib(proc.pid)
        times = handled(log)
        creates = handled(log, "create_container")
        errors = [ln for ln in log.read_text().splitlines() if " ERROR " in ln]
        checked = check_policy_ran(node, [r[2] for r in results], f"containerd {version}")
        start_failures = [r[3] for r in results if r[3]]
        load1 = loadavg()
    finally:
        proc.terminate()
        proc.wait(10)
        testenv.stop(version)
    return {"pods": pods, "wall_s": wall, "per_pod_s": [r[0] for r in results],
            "cri_create_ms": [r[1] * 1e3 for r in results], "all_ms": times, "create_ms": creates,
            "rss_kib": rss, "hwm_kib": hwm, "errors": errors, "version": version, "checked": checked, "binaries": binaries,
            "start_failures": start_failures,
            "load": (load0, load1)}


def load_note(load: tuple[str, str]) -> str:
    """Says so when the machine was loaded past its core count during a part (other work shares it)."""
    peak = max(float(x.split()[0]) for x in load)
    cores = os.cpu_count() or 1
    return (f" **Loaded machine: 1-min load up to {peak:.1f} on {cores} cores during this part**; tails (p99/max) "
            "include waiting for a core." if peak > cores else "")


def _failures(errors: list[str]) -> str:
    if not errors:
        return ""
    return (f"**{len(errors)} of the containers failed to start** (after their NRI CreateContainer, which is what is "
            f"measured here), e.g.: {errors[0].split(': ', 2)[-1][:240]}. ")


def row(name: str, xs: list[float]) -> str:
    return f"| {name} | {len(xs)} | {statistics.median(xs):.3f} | {pct(xs, 99):.3f} | {max(xs):.3f} |"


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def report(fake: dict[str, object], reals: list[dict[str, object]], fs: str) -> str:
    import google.protobuf

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (policy plugin, gpucr {commit})",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} cores ({cpu}), {platform.platform()}, "
        f"Python {platform.python_version()}, protobuf {google.protobuf.__version__}. "
        f"Pods annotated {', '.join(f'`{k}: {v}`' for k, v in ANNOTATIONS.items())}. State and CRIU config "
        f"dirs on {fs}.",
        "",
        f"### 1. {fake['n']} CreateContainer round trips, daemon <-> in-process fake runtime (unix socket)",
        "",
        f"Load average (1/5/15 min) before {fake['load'][0]}, after {fake['load'][1]}."  # type: ignore[index]
        f"{load_note(fake['load'])}",  # type: ignore[arg-type]
        "",
        "| measure | n | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        row("plugin-side handling (create_container)", fake["plugin_ms"]),  # type: ignore[arg-type]
        row("runtime-side round trip (end to end)", fake["rtt_ms"]),  # type: ignore[arg-type]
        "",
        f"Policy checked: {fake['checked']}. Daemon RSS after the run: {fake['rss_kib'] / 1024:.1f} MiB "  # type: ignore[operator]
        f"(peak {fake['hwm_kib'] / 1024:.1f} MiB).",  # type: ignore[operator]
        "",
    ]
    for n, real in enumerate(reals, 2):
        lines += [
            f"### {n}. {real['pods']} CRI pods (one managed container each) created concurrently, containerd "
            f"{real['version']}",
            "",
            f"{real['binaries']}. Load average (1/5/15 min) before {real['load'][0]}, after "  # type: ignore[index]
            f"{real['load'][1]}.{load_note(real['load'])}",  # type: ignore[index, arg-type]
            "",
            "| measure | n | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|",
            row("plugin-side handling, all NRI requests", real["all_ms"]),  # type: ignore[arg-type]
            row("plugin-side handling, create_container", real["create_ms"]),  # type: ignore[arg-type]
            row("CRI CreateContainer call (end to end, includes the NRI round trip)",
                real["cri_create_ms"]),  # type: ignore[arg-type]
            "",
            f"Policy checked: {real['checked']}. {real['pods']} pods + containers created and started in "
            f"{real['wall_s']:.1f} s (per pod p50 {statistics.median(real['per_pod_s']):.2f} s, CRI-side, "  # type: ignore[arg-type]
            f"dominated by containerd/runc and the OCI hooks on {os.cpu_count()} cores). "
            f"{_failures(real['start_failures'])}Daemon errors logged: "  # type: ignore[arg-type]
            f"{len(real['errors'])}. Daemon RSS after the run: {real['rss_kib'] / 1024:.1f} MiB "  # type: ignore[operator, arg-type]
            f"(peak {real['hwm_kib'] / 1024:.1f} MiB).",  # type: ignore[operator]
            "",
        ]
    lines += ["Targets (issue 3, issue 9): p99 < 5 ms plugin-side, RSS < 60 MB.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("-n", type=int, default=1000, help="CreateContainer round trips against the fake runtime")
    ap.add_argument("--pods", type=int, default=50, help="concurrent CRI pods against containerd")
    ap.add_argument("--containerd", action="append", help="containerd version(s) for part 2 (default 2.1.9, 1.7.24)")
    ap.add_argument("--state-on", choices=("tmpfs", "disk"), default="tmpfs",
                    help="where the state and CRIU config dirs live (default: a private tmpfs, as /run/gpucr)")
    ap.add_argument("--out", type=Path, help="append the Markdown report to this file")
    args = ap.parse_args()
    os.environ.setdefault("GPUCR_INSTANCE", "bench")
    from tests.testenv import installed_hook

    # a root-only place (not the sticky /tmp): the plugin uses no hook, state or CRIU config dir others could change
    with tempfile.TemporaryDirectory(prefix="gpucr-nri-bench-", dir="/run") as d, \
            installed_hook(Path(d) / "libexec") as hook, run_dir(Path(d), args.state_on) as (run, fs):
        fake = asyncio.run(fake_run(args.n, Path(d), run, hook))
        reals = [containerd_run(v, args.pods, Path(d), run, hook) for v in (args.containerd or ["2.1.9", "1.7.24"])]
    text = report(fake, reals, fs)
    print(text)
    for real in reals:
        if real["errors"]:
            print(f"daemon errors ({real['version']}):\n" + "\n".join(real["errors"][:10]),  # type: ignore[index]
                  file=sys.stderr)
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")
    print(json.dumps({"fake_p99_ms": pct(fake["plugin_ms"], 99),  # type: ignore[arg-type]
                      **{f"{r['version']}_p99_ms": pct(r["all_ms"], 99) for r in reals}}))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())

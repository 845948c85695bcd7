"""Several CUDA processes of one workload checkpointed and restored at once, on one or two GPUs (device script).

    python3 bench/gpu_multi.py OUT_DIR [--gib 8] [--pair-gib 16] [--debs DIR] [--wheels DIR] [--skip-thp]

A "container" here is a process tree started by this script: a small launcher (no CUDA) whose children are PyTorch
workers, each holding its own GiB of ``torch.rand`` data on the GPU and running a small training loop (the workload
of ``bench/gpu_cr.py``). With two GPUs, worker i runs on GPU i (``CUDA_VISIBLE_DEVICES``); with one, both run on GPU
0 and the report says so. Every checkpoint is ``gpucr checkpoint --pid LAUNCHER --to DIR`` (the tree is dumped and
killed; gpucr locks, checkpoints, restores and unlocks every CUDA process of the tree concurrently) and every restore
is ``gpucr restore DIR`` after ``sync`` and dropping the page cache; each worker's data digest must be bit-identical
afterwards and its training must go on. Cases, in one run:

1. ``--gib`` GiB in one worker alone, then two workers of ``--gib`` GiB each (one per GPU): the two-worker
   checkpoint and restore against the single one (ideal: about the same CUDA stage time; CRIU and the disk carry
   twice the bytes);
2. ``--pair-gib`` GiB x 2: two workers in one tree (gpucr: concurrently) against the same two workers as two trees
   checkpointed one after the other (sequential), checkpoint and restore each; the ratio parallel/sequential for
   the CUDA stage and for the whole command;
3. unless ``--skip-thp``: the driver stage's copy rate of one ``--gib`` GiB worker with the node config's
   ``driver_thp = "keep"`` and ``"always"`` (``gpucr checkpoint --leave-running``; the THP mode that ran is read from
   the summary's ``driver_stage``).

Installs what it needs without network, as ``bench/gpu_cr.py`` does (CRIU from carried .debs, protobuf from carried
wheels). Writes ``OUT_DIR/gpu_multi.json`` (every gpucr summary) and ``OUT_DIR/gpu_multi.md`` (tables).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stage import gpucr_json, packaged  # noqa: E402
import _workload as wl  # noqa: E402
from _workload import WORKLOAD  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30

#: the "container": starts one worker per "GPU:DIR" argument (on that GPU), then waits for them
LAUNCHER = r'''
import os, subprocess, sys
code, gib, workers = sys.argv[1], sys.argv[2], sys.argv[3:]
kids = []
for w in workers:
    gpu, d = w.split(":", 1)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
    log = open(os.path.join(d, "log"), "wb")
    kids.append(subprocess.Popen([sys.executable, "-c", code, d, gib], stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, cwd=d, env=env))
for k in kids:
    k.wait()
'''


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


class Tree:
    """One launcher and its workers; ``dirs`` hold each worker's ready/step/digest files."""

    def __init__(self, proc: subprocess.Popen[bytes], dirs: list[Path], digests: list[str]) -> None:
        self.proc, self.dirs, self.digests = proc, dirs, digests

    @property
    def pid(self) -> int:
        return self.proc.pid


class Multi:
    def __init__(self, out: Path, criu: Path, site: Path, work: Path) -> None:
        self.out, self.criu, self.site, self.work = out, criu, site, work
        self.results: list[dict[str, Any]] = []
        self.trees: list[Tree] = []
        self.restored: list[int] = []
        work.mkdir(parents=True, exist_ok=True)
        self.ngpus = len(sh(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"]).stdout.split())
        self.base_env = {**os.environ, "PYTHONPATH": f"{REPO}:{site}", "GPUCR_CRIU": str(criu),
                         "PYTHONUNBUFFERED": "1"}
        self.config("keep")

    def config(self, thp: str) -> None:
        """The bench's node config: checkpoints confined to the work dir, leases in its own state dir."""
        path = self.work / f"gpucr-{thp}.toml"
        path.write_text(f'checkpoint_root = "{self.work}"\nstate_dir = "{self.work / "state"}"\n'
                        f'driver_thp = "{thp}"\n')
        os.chmod(path, 0o644)
        self.env = {**self.base_env, "GPUCR_CONFIG": str(path)}

    # -- gpucr ---------------------------------------------------------------------------------------------------
    def gpucr(self, *args: str) -> dict[str, Any]:
        return gpucr_json(self.env, args, timeout=550)

    @staticmethod
    def drop_caches() -> None:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")

    # -- workloads -----------------------------------------------------------------------------------------------
    def start(self, name: str, gib: float, workers: int, first_gpu: int = 0) -> Tree:
        """A tree of ``workers`` workers, worker i on GPU (first_gpu + i) mod the number of GPUs."""
        dirs = []
        for i in range(workers):
            d = self.work / f"{name}-w{i}"
            d.mkdir(parents=True)
            dirs.append(d)
        log = open(self.work / f"{name}.launcher.log", "wb")
        spec = [f"{(first_gpu + i) % self.ngpus}:{d}" for i, d in enumerate(dirs)]
        p = subprocess.Popen([sys.executable, "-c", LAUNCHER, WORKLOAD, str(gib), *spec],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             cwd=self.work, env=self.base_env)
        deadline = time.monotonic() + 300
        while not all((d / "ready").exists() for d in dirs):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"workload {name} failed: " + " | ".join(
                    (d / "log").read_text()[-1500:] for d in dirs if (d / "log").exists()))
            time.sleep(0.1)
        t = Tree(p, dirs, [json.loads((d / "ready").read_text())["digest"] for d in dirs])
        for d in dirs:
            self.wait_steps(d, 3)
        self.trees.append(t)
        return t

    @staticmethod
    def step(d: Path) -> int:
        return wl.step(d)

    def wait_steps(self, d: Path, n: int, timeout: float = 120) -> int:
        return wl.wait_steps(d, n, timeout, poll=0.05)

    @staticmethod
    def verify(d: Path, tag: str, timeout: float = 300) -> str:
        got = wl.ask_digest(d, tag, timeout)
        if got is None:
            raise RuntimeError(f"no digest from {d}")
        return got

    @staticmethod
    def wait_gone(pid: int, timeout: float = 60) -> None:
        wl.wait_gone(pid, timeout, poll=0.05)

    def kill(self, pid: int) -> None:
        """The restored launcher and its workers (a restored tree is no child of ours)."""
        kids = _children(pid)
        for p in [pid, *kids]:
            try:
                os.kill(p, 9)
            except ProcessLookupError:
                pass
        for p in [pid, *kids]:
            self.wait_gone(p)

    # -- one checkpoint + restore of a tree ----------------------------------------------------------------------
    def round_trip(self, t: Tree, tag: str) -> dict[str, Any]:
        ck = self.work / f"ck-{tag}"
        tree = [t.pid, *_children(t.pid)]
        c = self.gpucr("checkpoint", "--pid", str(t.pid), "--to", str(ck))
        for pid in tree:  # every pid free again (workers too: the restore wants their pids and session back)
            self.wait_gone(pid)
        self.drop_caches()
        r = self.gpucr("restore", str(ck))
        self.restored.append(int(r["pid"]))
        ok = True
        for d, dig in zip(t.dirs, t.digests):
            self.wait_steps(d, 3)
            ok = ok and self.verify(d, tag) == dig
        self.kill(int(r["pid"]))
        shutil.rmtree(ck)
        return {"checkpoint": c, "restore": r, "digest_ok": ok, "workers": len(t.dirs)}

    def record(self, **kw: Any) -> None:
        self.results.append(kw)
        print(json.dumps(kw), flush=True)
        self.save()

    def save(self) -> None:
        (self.out / "gpu_multi.json").write_text(json.dumps({"env": self.envinfo(), "runs": self.results}, indent=1))

    def envinfo(self) -> dict[str, Any]:
        if not hasattr(self, "_envinfo"):
            q = sh(["nvidia-smi", "--query-gpu=name,uuid,driver_version,memory.total", "--format=csv,noheader"])
            thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
            self._envinfo = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
                             "kernel": platform.release(), "gpus": q.stdout.strip().splitlines(),
                             "criu": sh([str(self.criu), "--version"]).stdout.split("\n")[0],
                             "cpus": os.cpu_count(), "thp": thp, "ngpus": self.ngpus,
                             "placement": "worker i on GPU i" if self.ngpus >= 2 else
                             "ONE GPU: both workers on GPU 0"}
        return self._envinfo

    # -- the cases -----------------------------------------------------------------------------------------------
    def one_vs_two(self, gib: float) -> None:
        for n in (1, 2):
            t = self.start(f"c{n}", gib, n)
            self.record(case=f"{n} x {gib:g} GiB, one tree", **self.round_trip(t, f"c{n}"))

    def parallel_vs_sequential(self, gib: float) -> None:
        t = self.start("par", gib, 2)
        self.record(case=f"2 x {gib:g} GiB, one tree (parallel)", **self.round_trip(t, "par"))
        # the same two workers (one per GPU), live side by side, as two trees checkpointed one after the other
        a, b = self.start("seqa", gib, 1, first_gpu=0), self.start("seqb", gib, 1, first_gpu=1)
        ra = self.round_trip(a, "seqa")
        rb = self.round_trip(b, "seqb")
        self.record(case=f"2 x {gib:g} GiB, two trees one after the other (sequential)", parts=[ra, rb],
                    digest_ok=ra["digest_ok"] and rb["digest_ok"], workers=2,
                    checkpoint=_sum(ra["checkpoint"], rb["checkpoint"]), restore=_sum(ra["restore"], rb["restore"]))

    def thp_rates(self, gib: float) -> None:
        t = self.start("thp", gib, 1)
        for mode in ("keep", "always"):
            self.config(mode)
            ck = self.work / f"ck-thp-{mode}"
            s = self.gpucr("checkpoint", "--pid", str(t.pid), "--to", str(ck), "--leave-running")
            ok = self.verify(t.dirs[0], f"thp-{mode}") == t.digests[0]
            tm = s["timings_s"]
            self.record(case=f"1 x {gib:g} GiB, driver_thp = {mode}", checkpoint=s, digest_ok=ok, workers=1,
                        driver_stage=s.get("driver_stage", {}),
                        ckpt_gib_s=round(s["gpu_bytes"] / GIB / tm["cuda-checkpoint"], 2),
                        restore_gib_s=round(s["gpu_bytes"] / GIB / tm["cuda-restore"], 2))
            shutil.rmtree(ck)
        self.config("keep")

    def cleanup(self) -> None:
        for t in self.trees:
            try:
                os.killpg(t.pid, 9)
            except OSError:
                pass
        for pid in self.restored:
            try:
                self.kill(pid)
            except (OSError, RuntimeError):
                pass


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _sum(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two summaries one after the other: step times and wall added."""
    keys = set(a.get("timings_s", {})) | set(b.get("timings_s", {}))
    return {"timings_s": {k: round(a["timings_s"].get(k, 0) + b["timings_s"].get(k, 0), 4) for k in keys},
            "wall_s": round(a["wall_s"] + b["wall_s"], 3), "image_bytes": a.get("image_bytes", 0) + b.get(
                "image_bytes", 0), "gpu_bytes": a.get("gpu_bytes", 0) + b.get("gpu_bytes", 0)}


def markdown(doc: dict[str, Any]) -> str:
    e = doc["env"]
    lines = ["# gpucr: several CUDA processes of one workload, checkpointed and restored at once", "",
             f"- date: {e['date']}; machine: {e['host']} ({e['cpus']} CPUs, kernel {e['kernel']}); THP: {e['thp']}",
             f"- GPU(s): {'; '.join(e['gpus'])}; placement: {e['placement']}", f"- {e['criu']}", "",
             "Seconds, from gpucr's per-step timings; 'wall' = the whole `gpucr` command (restore after `sync` and "
             "dropping the page cache). A tree is killed by its checkpoint and restored; 'digest' = every worker's "
             "random GPU data bit-identical after restore (and its training going on).", "",
             "| case | CUDA lock | CUDA ckpt | criu dump | ckpt wall | criu restore | CUDA restore | restore wall | "
             "images GiB | digest |", "|---|---|---|---|---|---|---|---|---|---|"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if v < 1 else f"{v:.2f}"
    by_case: dict[str, dict[str, Any]] = {}
    for r in doc["runs"]:
        by_case[r["case"]] = r
        if "ckpt_gib_s" in r or "error" in r:
            continue
        c, rs = r["checkpoint"], r.get("restore") or {}
        ct, rt = c.get("timings_s", {}), rs.get("timings_s", {})
        lines.append(f"| {r['case']} | {f(ct.get('cuda-lock'))} | {f(ct.get('cuda-checkpoint'))} | "
                     f"{f(ct.get('criu-dump'))} | {f(c.get('wall_s'))} | {f(rt.get('criu-restore'))} | "
                     f"{f(rt.get('cuda-restore'))} | {f(rs.get('wall_s'))} | {c.get('image_bytes', 0) / GIB:.2f} | "
                     f"{'identical' if r['digest_ok'] else 'DIFFERENT'} |")
    ratios = []
    for a, b, what in _pairs(by_case):
        for key, label in (("cuda-checkpoint", "CUDA checkpoint"), ("cuda-restore", "CUDA restore")):
            side = "restore" if key == "cuda-restore" else "checkpoint"
            x = (a.get(side) or {}).get("timings_s", {}).get(key)
            y = (b.get(side) or {}).get("timings_s", {}).get(key)
            if x and y:
                ratios.append(f"| {what} | {label} | {x / y:.2f} |")
        for side in ("checkpoint", "restore"):
            x, y = (a.get(side) or {}).get("wall_s"), (b.get(side) or {}).get("wall_s")
            if x and y:
                ratios.append(f"| {what} | whole {side} command | {x / y:.2f} |")
    if ratios:
        lines += ["", "| comparison | stage | ratio |", "|---|---|---|", *ratios]
    thp = [r for r in doc["runs"] if "ckpt_gib_s" in r]
    if thp:
        lines += ["", "Driver stage alone (`gpucr checkpoint --leave-running`), by the node config's `driver_thp`:", "",
                  "| case | THP mode that ran (node's) | CUDA checkpoint GiB/s | CUDA restore GiB/s | digest |",
                  "|---|---|---|---|---|"]
        for r in thp:
            st = r.get("driver_stage") or {}
            lines.append(f"| {r['case']} | {st.get('thp')} ({st.get('thp_node')}) | {r['ckpt_gib_s']} | "
                         f"{r['restore_gib_s']} | {'identical' if r['digest_ok'] else 'DIFFERENT'} |")
    errors = [r for r in doc["runs"] if "error" in r]
    for r in errors:
        lines += ["", f"FAILED {r['case']}: {r['error'][-1500:]}"]
    return "\n".join(lines) + "\n"


def _pairs(by_case: dict[str, dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(numerator, denominator, label) for the ratios the issue asks about."""
    out = []
    one = next((r for c, r in by_case.items() if c.startswith("1 x") and c.endswith("one tree")), None)
    two = next((r for c, r in by_case.items() if c.startswith("2 x") and c.endswith("one tree")), None)
    par = next((r for c, r in by_case.items() if c.endswith("(parallel)")), None)
    seq = next((r for c, r in by_case.items() if c.endswith("(sequential)")), None)
    if one and two:
        out.append((two, one, "two workers / one worker alone"))
    if par and seq:
        out.append((par, seq, "two workers in one tree (parallel) / two trees one after the other"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--gib", type=float, default=8.0, help="GiB per worker for the one-vs-two and THP cases")
    ap.add_argument("--pair-gib", type=float, default=16.0, help="GiB per worker for parallel vs sequential")
    ap.add_argument("--debs", type=Path, default=REPO / "dist", help="where gpucr_*.deb and gpucr-criu_*.deb are")
    ap.add_argument("--work", type=Path, default=None, help="where checkpoints go (default: a temp dir)")
    ap.add_argument("--skip-thp", action="store_true", help="leave out the driver_thp keep/always case")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    criu, site, _ = packaged(a.debs)  # bench/_stage.py: gpucr's packages, as gpu_cr.py
    work = a.work or Path(tempfile.mkdtemp(prefix="gpucr-multi-"))
    m = Multi(a.out, criu, site, work)
    failures = 0
    cases = [("one vs two", lambda: m.one_vs_two(a.gib)), ("parallel vs sequential",
             lambda: m.parallel_vs_sequential(a.pair_gib))]
    if not a.skip_thp:
        cases.append(("driver_thp", lambda: m.thp_rates(a.gib)))
    try:
        for name, fn in cases:
            t0 = time.monotonic()
            try:
                fn()
            except Exception as exc:
                failures += 1
                m.record(case=name, error=str(exc)[-3000:], digest_ok=False)
            print(f"{name}: {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        m.cleanup()
        doc = {"env": m.envinfo(), "runs": m.results}
        (a.out / "gpu_multi.json").write_text(json.dumps(doc, indent=1))
        (a.out / "gpu_multi.md").write_text(markdown(doc))
        print(markdown(doc))
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures or not all(r["digest_ok"] for r in m.results) else 0


if __name__ == "__main__":
    sys.exit(main())

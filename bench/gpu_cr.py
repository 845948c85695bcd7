"""GPU checkpoint/restore speed on a real NVIDIA GPU: gpucr against the by-hand baseline, and the hardware's ceilings.

    python3 bench/gpu_cr.py OUT_DIR [--sizes 1,8,32] [--parallel 16] [--ceilings 2 [--probe-gib 8]] [--driver-probe 8]
                            [--thp-always] [--config-extra 'driver_thp = "always"'] [--work DIR] [--debs DIR]

For each size (GiB of ``torch.rand`` data a live PyTorch process holds on the GPU, with a training loop running), in
the same run, each flow on its own fresh process (leave-running first, then kill + restore):
1. leave-running, the workload's downtime: baseline = CUDA lock + checkpoint (a tiny ctypes helper, as
   ``cuda-checkpoint`` does), ``criu dump --leave-running``, CUDA restore + unlock (its images are not fsynced
   afterwards: only the downtime is compared); gpucr = ``gpucr checkpoint
   --leave-running`` (its summary's ``downtime_s``), whose wall time includes making the checkpoint durable;
2. kill + restore: baseline = CUDA lock + checkpoint, ``criu dump``, fsync of every image (durable), page cache
   dropped, ``criu restore -d``, CUDA restore + unlock; gpucr = ``gpucr checkpoint`` (durable when it returns), page
   cache dropped, ``gpucr restore``.
After every leave-running checkpoint and every restore the GPU data's digest must be bit-identical and training must
advance. ``--parallel G``: two G GiB processes checkpointed (leave-running, durable) one after the other, then both at
once. ``--ceilings``: disk write/read rate (O_DIRECT with 4 threads, buffered with fsync / cold; bench/_diskprobe.py) on
the checkpoint's filesystem, O_DIRECT again with a ``--probe-gib`` file (the sustained rate the ceiling uses), and
pinned device-to-host copy rate. ``--driver-probe G``: the driver's checkpoint/restore rate alone on a
G GiB process in the node's THP mode, and with ``--thp-always`` also with THP ``always`` (the node's setting is put
back). Peak host memory = the highest MemTotal - MemAvailable seen during a step, less what was used before it.
Writes ``OUT_DIR/gpu_cr.json`` (a ``--merge`` file's results come first) and ``OUT_DIR/gpu_cr.md``; the plot is made
from the JSON by ``bench/gpu_cr_report.py``. Installs gpucr's packages without network (bench/_stage.py: ``make
package``'s dist/ with apt-get); the CLI runs the checkout's code with gpucr-criu's CRIU (the baseline runs that CRIU
too) and the package's pinned wheels on its PYTHONPATH only.
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _workload as wl  # noqa: E402
from _diskprobe import disk_rates, drop_caches  # noqa: E402
from _stage import gpucr_json, packaged  # noqa: E402
from _workload import WORKLOAD  # noqa: E402
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
DEFRAG = Path("/sys/kernel/mm/transparent_hugepage/defrag")
#: threads of the parallel cold read probe: as many as read page images ahead of CRIU at restore
#: (nri_plugin/ckpt/layout.py IO_THREADS)
PREFETCH_THREADS = 8


#: the by-hand driver calls (what NVIDIA's cuda-checkpoint tool does): ``suspend PID`` = lock + checkpoint,
#: ``resume PID`` = restore + unlock; prints the seconds of each call as JSON
CUDA_HELPER = r'''
import ctypes, json, sys, time
cu = ctypes.CDLL("libcuda.so.1")
assert cu.cuInit(0) == 0
class LockArgs(ctypes.Structure):
    _fields_ = [("timeoutMs", ctypes.c_uint), ("reserved0", ctypes.c_uint), ("reserved1", ctypes.c_uint64 * 7)]
op, pid = sys.argv[1], ctypes.c_int(int(sys.argv[2]))
calls = [("lock", "cuCheckpointProcessLock", ctypes.byref(LockArgs(30000, 0))),
         ("checkpoint", "cuCheckpointProcessCheckpoint", None)] if op == "suspend" else \
        [("restore", "cuCheckpointProcessRestore", None), ("unlock", "cuCheckpointProcessUnlock", None)]
out = {}
for name, fn, arg in calls:
    t = time.monotonic()
    rc = getattr(cu, fn)(pid, arg)
    out[name] = round(time.monotonic() - t, 4)
    if rc:
        sys.exit(f"{fn} failed: CUresult {rc}")
print(json.dumps(out))
'''

PINNED = r'''
import json, time, torch
x = torch.rand((4 << 30) // 4, device="cuda")
h = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
best = 0.0
for _ in range(3):
    torch.cuda.synchronize(); t = time.monotonic(); h.copy_(x, non_blocking=True); torch.cuda.synchronize()
    best = max(best, (4 << 30) / (time.monotonic() - t))
print(json.dumps({"pinned_d2h_GBps": round(best / 1e9, 2)}))
'''


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path, topdown=False):
        for n in files:
            fd = os.open(os.path.join(dirpath, n), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)


def anon_huge(pid: int) -> int:
    """Bytes of ``pid``'s anonymous memory on transparent huge pages (smaps_rollup's AnonHugePages)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    return 0


def du(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, n)).st_size for d, _, fs in os.walk(path) for n in fs)


def thp_mode(knob: Path = THP) -> str:
    text = knob.read_text()
    return text[text.index("[") + 1:text.index("]")]


class MemPeak:
    """Peak of MemTotal - MemAvailable while the block runs, less its value at the start (bytes)."""

    def __enter__(self) -> MemPeak:
        self.start = self.used()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def used() -> int:
        m = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()}
        return m["MemTotal"] - m["MemAvailable"]

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.used())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.used())

    @property
    def gib(self) -> float:
        return round((self.peak - self.start) / GIB, 2)


class Workload:
    def __init__(self, work: Path, name: str, gib: float) -> None:
        self.d = work / name
        self.d.mkdir(parents=True)
        log = open(self.d / "log", "wb")
        # stdio are files, stdin /dev/null, own session: CRIU needs no external pipes or ttys
        self.p = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(self.d), str(gib)], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.d)
        self.pid = self.p.pid
        self.gib = gib

    def ready(self) -> None:
        self.digest0 = wl.wait_ready(self.d, self.p)["digest"]
        self.wait_steps(3)

    def step(self) -> int:
        return wl.step(self.d)

    def wait_steps(self, n: int, timeout: float = 120) -> int:
        return wl.wait_steps(self.d, n, timeout)

    def check(self, tag: str) -> dict[str, Any]:
        """Training advances and the GPU data is bit-identical to what it was at start."""
        at = self.step()
        after = self.wait_steps(3)
        got = wl.ask_digest(self.d, tag)
        if got is None:
            raise RuntimeError(f"no digest from {self.d}: {(self.d / 'log').read_text()[-2000:]}")
        return {"identical": got == self.digest0, "steps": [at, after]}

    def wait_gone(self, timeout: float = 60) -> None:
        wl.wait_gone(self.pid, timeout)

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        try:
            self.wait_gone()
        except RuntimeError:
            pass


class Bench:
    def __init__(self, out: Path, criu: Path, site: Path, work: Path, config_extra: str) -> None:
        self.out, self.criu, self.work = out, criu, work
        self.doc: dict[str, Any] = {"env": {}, "ceilings": {}, "runs": [], "driver_probe": [], "parallel": []}
        work.mkdir(parents=True, exist_ok=True)
        os.chmod(work, 0o700)
        config = work / "gpucr.toml"
        config.write_text(f'checkpoint_root = "{work}"\n' + config_extra)
        os.chmod(config, 0o644)
        self.env = {**os.environ, "PYTHONPATH": f"{REPO}:{site}", "GPUCR_CRIU": str(criu), "PYTHONUNBUFFERED": "1",
                    "GPUCR_CONFIG": str(config)}
        nolibs = work / "criu-no-plugins"
        nolibs.mkdir(exist_ok=True)
        self.criu_env = {**os.environ, "CRIU_LIBS_DIR": str(nolibs)}  # the baseline loads no CRIU plugin either

    def save(self) -> None:
        (self.out / "gpu_cr.json").write_text(json.dumps(self.doc, indent=1))

    def envinfo(self, thp_always: bool) -> None:
        q = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
        mem = MemPeak.used()
        self.doc["env"] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
            "kernel": platform.release(), "cpus": os.cpu_count(), "gpus": q.stdout.strip().splitlines(),
            "criu": sh([str(self.criu), "--version"]).stdout.split("\n")[0], "thp": thp_mode(),
            "thp_always_allowed": thp_always, "host_mem_used_gib_at_start": round(mem / GIB, 1),
            "checkpoint_fs": sh(["df", "-hT", str(self.work)]).stdout.strip().splitlines()[-1],
        }

    # -- the two flows -------------------------------------------------------------------------------------------
    def gpucr(self, *args: str) -> dict[str, Any]:
        return gpucr_json(self.env, args, timeout=900)

    def helper(self, op: str, pid: int) -> dict[str, float]:
        t0 = time.monotonic()
        r = sh([sys.executable, "-c", CUDA_HELPER, op, str(pid)], timeout=600)
        if r.returncode:
            raise RuntimeError(f"cuda helper {op} {pid}: {r.stderr[-2000:]}")
        out = json.loads(r.stdout)
        out["wall"] = round(time.monotonic() - t0, 3)
        return out

    def criu_cli(self, *args: str) -> float:
        t0 = time.monotonic()
        r = sh([str(self.criu), *args, "--shell-job", "--file-locks", "--tcp-established", "--ext-unix-sk"],
               env=self.criu_env, timeout=900)
        if r.returncode:
            raise RuntimeError(f"criu {' '.join(args)} failed: {r.stderr[-2000:]}")
        return round(time.monotonic() - t0, 3)

    def baseline_leave_running(self, w: Workload, d: Path) -> dict[str, Any]:
        d.mkdir()
        with MemPeak() as m:
            t0 = time.monotonic()
            sus = self.helper("suspend", w.pid)
            dump = self.criu_cli("dump", "-t", str(w.pid), "-D", str(d), "-o", "dump.log", "--leave-running")
            res = self.helper("resume", w.pid)
            down = time.monotonic() - t0
        # not fsynced: the device time this saves went to the sizes (the kill + restore rows time a durable dump)
        return {"downtime_s": round(down, 3), "total_s": None, "cuda_suspend": sus, "criu_dump_s": dump,
                "cuda_resume": res, "image_bytes": du(d), "peak_mem_gib": m.gib}

    def baseline_kill_restore(self, w: Workload, d: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        d.mkdir()
        with MemPeak() as m:
            t0 = time.monotonic()
            sus = self.helper("suspend", w.pid)
            dump = self.criu_cli("dump", "-t", str(w.pid), "-D", str(d), "-o", "dump.log")
            t1 = time.monotonic()
            fsync_tree(d)
            fs = time.monotonic() - t1
            total = time.monotonic() - t0
        w.wait_gone()
        ck = {"total_s": round(total, 3), "cuda_suspend": sus, "criu_dump_s": dump, "fsync_s": round(fs, 3),
              "image_bytes": du(d), "peak_mem_gib": m.gib}
        drop_caches()
        with MemPeak() as m:
            t0 = time.monotonic()
            rst = self.criu_cli("restore", "-d", "-D", str(d), "-o", "restore.log")
            res = self.helper("resume", w.pid)
            total = time.monotonic() - t0
        rs = {"total_s": round(total, 3), "criu_restore_s": rst, "cuda_resume": res, "peak_mem_gib": m.gib}
        return ck, rs

    def gpucr_leave_running(self, w: Workload, d: Path) -> dict[str, Any]:
        with MemPeak() as m:
            s = self.gpucr("checkpoint", "--pid", str(w.pid), "--to", str(d), "--leave-running")
        s["peak_mem_gib"] = m.gib
        return s

    def gpucr_kill_restore(self, w: Workload, d: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        with MemPeak() as m:
            ck = self.gpucr("checkpoint", "--pid", str(w.pid), "--to", str(d))
        ck["peak_mem_gib"] = m.gib
        w.wait_gone()
        drop_caches()
        with MemPeak() as m:
            rs = self.gpucr("restore", str(d))
        rs["peak_mem_gib"] = m.gib
        return ck, rs

    def size(self, gib: float) -> None:
        """Each flow on its own fresh process (started together), leave-running first, then kill + restore: a
        process's images grow after its first CUDA checkpoint/restore cycle, so both flows meet the same history."""
        wb, wg = Workload(self.work, f"b{gib:g}", gib), Workload(self.work, f"g{gib:g}", gib)
        d = self.work / f"ck{gib:g}"
        try:
            wb.ready()
            wg.ready()
            row: dict[str, Any] = {"gib": gib}
            self.doc["runs"].append(row)
            row["baseline_lr"] = self.baseline_leave_running(wb, d)
            row["baseline_lr"]["check"] = wb.check("blr")
            shutil.rmtree(d)
            self.save()
            row["gpucr_lr"] = self.gpucr_leave_running(wg, d)
            row["gpucr_lr"]["check"] = wg.check("glr")
            shutil.rmtree(d)
            self.save()
            row["baseline_ckpt"], row["baseline_restore"] = self.baseline_kill_restore(wb, d)
            row["baseline_restore"]["check"] = wb.check("brs")
            wb.kill()
            shutil.rmtree(d)
            self.save()
            row["gpucr_ckpt"], row["gpucr_restore"] = self.gpucr_kill_restore(wg, d)
            row["gpucr_restore"]["check"] = wg.check("grs")
            shutil.rmtree(d)
            self.save()
        finally:
            wb.kill()
            wg.kill()
            shutil.rmtree(d, ignore_errors=True)

    def parallel(self, gib: float) -> None:
        ws = [Workload(self.work, f"p{i}", gib) for i in range(2)]
        try:
            for w in ws:
                w.ready()
            row: dict[str, Any] = {"gib": gib}
            self.doc["parallel"].append(row)
            seq = []
            for i, w in enumerate(ws):
                seq.append(self.gpucr("checkpoint", "--pid", str(w.pid), "--to", str(self.work / f"pck{i}"),
                                      "--leave-running"))
                shutil.rmtree(self.work / f"pck{i}")  # not timed: only the two checkpoints' own wall times add up
            row["sequential_s"] = round(sum(s["wall_s"] for s in seq), 3)
            row["sequential"] = seq
            for w in ws:
                w.wait_steps(3)
            t0 = time.monotonic()
            with ThreadPoolExecutor(2) as pool:
                par = list(pool.map(lambda iw: self.gpucr("checkpoint", "--pid", str(iw[1].pid), "--to",
                                                          str(self.work / f"pck{iw[0]}"), "--leave-running"),
                                    enumerate(ws)))
            row["parallel_s"] = round(time.monotonic() - t0, 3)
            row["parallel"] = par
            row["checks"] = [w.check(f"par{i}") for i, w in enumerate(ws)]
            self.save()
        finally:
            for i, w in enumerate(ws):
                w.kill()
                shutil.rmtree(self.work / f"pck{i}", ignore_errors=True)

    def driver_probe(self, gib: float, thp_always: bool, thp_defrag: list[str]) -> None:
        """The driver's copy rates alone (no CRIU), in the node's THP mode and, if allowed, with THP always (and
        then with each of ``thp_defrag``'s THP defrag modes); how much of the process's memory was on huge pages
        while it was checkpointed."""
        w = Workload(self.work, f"drv{gib:g}", gib)
        node, defrag0 = thp_mode(), thp_mode(DEFRAG)
        try:
            w.ready()
            q = sh(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]).stdout
            used = [int(ln.split(",")[1]) << 20 for ln in q.splitlines() if ln.split(",")[0].strip() == str(w.pid)]
            modes = [(node, defrag0)] + ([("always", defrag0)] if thp_always and node != "always" else [])
            modes += [("always", d) for d in thp_defrag if thp_always and d != defrag0]
            for mode, defrag in modes:
                THP.write_text(mode)
                DEFRAG.write_text(defrag)
                sus = self.helper("suspend", w.pid)
                huge = anon_huge(w.pid)  # the driver's host buffers hold the GPU data now: on huge pages or not
                res = self.helper("resume", w.pid)
                self.doc["driver_probe"].append({"gib": gib, "thp": mode, "defrag": defrag, "gpu_bytes": sum(used),
                                                 "checkpoint_s": sus["checkpoint"], "anon_huge_bytes": huge,
                                                 "restore_s": res["restore"], "check": w.check(f"drv{mode}{defrag}")})
                self.save()
        finally:
            THP.write_text(node)
            DEFRAG.write_text(defrag0)
            w.kill()

    # -- ceilings ------------------------------------------------------------------------------------------------
    def ceilings(self, gib: float, sustained_gib: float) -> None:
        """The disk probe with a ``gib`` GiB file (all four rates), again at the ``sustained_gib`` size the ceiling
        column uses (a small file can show a cache's rate, not the disk's; with the parallel cold read), the pinned
        copy rate."""
        c = self.doc["ceilings"]
        c.update(disk_rates(self.work, gib))
        c["disk_probe_gib"] = gib
        if sustained_gib:
            c.update({k.replace("_GBps", "_sustained_GBps"): v
                      for k, v in disk_rates(self.work, sustained_gib, parallel_read=PREFETCH_THREADS).items()})
            c["disk_sustained_gib"] = sustained_gib
        r = sh([sys.executable, "-c", PINNED], timeout=300)
        if r.returncode == 0:
            c.update(json.loads(r.stdout))
        self.save()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sizes", default="1,8,32")
    ap.add_argument("--parallel", type=float, default=0,
                    help="GiB per process for the two-process case, run after the first size (0: skip)")
    ap.add_argument("--ceilings", type=float, default=0, help="GiB of the disk probe file (0: skip)")
    ap.add_argument("--probe-gib", type=float, default=8,
                    help="GiB of the sustained O_DIRECT disk probe the ceiling uses, run with --ceilings (0: skip)")
    ap.add_argument("--driver-probe", type=float, default=0, help="GiB of the driver-only probe (0: skip)")
    ap.add_argument("--thp-always", action="store_true", help="the bench may set THP 'always' (put back after)")
    ap.add_argument("--thp-defrag", default="", help="with --thp-always, the driver probe also runs 'always' with "
                    "each of these THP defrag modes (comma-separated, e.g. always,defer; put back after)")
    ap.add_argument("--config-extra", default="", help="TOML lines added to gpucr's node config")
    ap.add_argument("--merge", type=Path, default=None, help="a gpu_cr.json of the same lease to continue")
    ap.add_argument("--debs", type=Path, default=REPO / "dist", help="where gpucr_*.deb and gpucr-criu_*.deb are")
    ap.add_argument("--work", type=Path, default=None, help="where checkpoints go (default: a temp dir)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    criu, site, _ = packaged(a.debs)
    work = a.work or Path(tempfile.mkdtemp(prefix="gpucr-bench-", dir="/var/tmp"))
    b = Bench(a.out, criu, site, work, a.config_extra.replace("\\n", "\n"))
    b.envinfo(a.thp_always)
    if a.merge is not None and a.merge.exists():
        old = json.loads(a.merge.read_text())
        for k in ("ceilings", "driver_probe", "parallel", "runs"):
            b.doc[k] = old.get(k, b.doc[k])
        b.doc["env_first_call"] = old.get("env")
    failures = 0

    def attempt(what: str, fn: Any, *args: Any) -> None:
        nonlocal failures
        try:
            fn(*args)
        except Exception as exc:
            failures += 1
            b.doc.setdefault("errors", []).append({"what": what, "error": str(exc)[-3000:]})
            print(f"FAILED {what}: {exc}", file=sys.stderr, flush=True)
        b.save()
        print(f"done {what} at {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)

    try:
        if a.ceilings:
            attempt("ceilings", b.ceilings, a.ceilings, a.probe_gib)
        if a.driver_probe:
            attempt("driver probe", b.driver_probe, a.driver_probe, a.thp_always,
                    [d for d in a.thp_defrag.split(",") if d])
        sizes = [float(s) for s in a.sizes.split(",") if s]
        for i, g in enumerate(sizes):  # the two-process case right after the first size (the must-shows first)
            attempt(f"{g:g} GiB", b.size, g)
            if i == 0 and a.parallel:
                attempt("parallel", b.parallel, a.parallel)
    finally:
        b.save()
        shutil.rmtree(work, ignore_errors=True)
    from gpu_cr_report import markdown  # type: ignore[import-not-found]  # bench/ is on sys.path (the script's dir)
    (a.out / "gpu_cr.md").write_text(markdown(b.doc))
    print(markdown(b.doc))
    checks = [r[k]["check"]["identical"] for r in b.doc["runs"] for k in ("baseline_lr", "gpucr_lr", "baseline_restore",
                                                                          "gpucr_restore") if k in r]
    return 1 if failures or not all(checks) else 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU checkpoint/restore benchmark and end-to-end check on a real NVIDIA GPU (run on the device machine).

    python3 bench/gpu_cr.py OUT_DIR [--sizes 1,8,32] [--debs DIR] [--no-grit] [--no-map]

What it does, for each size (GiB of random GPU data held by a live PyTorch process that also runs a training loop):
1. ``gpucr checkpoint --pid P --leave-running`` -> the data digest is bit-identical and training keeps going;
2. ``gpucr checkpoint --pid P`` (the process is dumped and killed) -> ``gpucr restore`` -> digest identical, training
   continues from the checkpointed step (the 1 GiB case restores with ``--gpu-map U=U``, the identity pair, which
   exercises the driver-580 UUID-remap path on one GPU);
3. the GRIT case: a process whose cgroup (v2 ``cgroup.freeze``, or v1 freezer) was frozen before the checkpoint.
Installs what it needs without network (bench/_stage.py): gpucr's packages from DIR (``make package``'s dist/) with
apt-get; the CLI runs the checkout's code with gpucr-criu's CRIU and the package's pinned wheels on its PYTHONPATH only.
Writes ``OUT_DIR/gpu_cr.json`` (every gpucr summary, timings per step) and ``OUT_DIR/gpu_cr.md`` (a table).
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

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stage import packaged  # noqa: E402

WORKLOAD = r'''
import hashlib, json, os, sys, time, torch
d, gib = sys.argv[1], float(sys.argv[2])
torch.manual_seed(1234)
n = int(gib * (1 << 30)) // 4
chunk = 1 << 28
data = [torch.rand(min(chunk, n - i), device="cuda") for i in range(0, n, chunk)]

def digest():
    h = hashlib.sha256()
    for t in data:
        v = t.view(torch.int32)
        h.update(str(int(v.sum(dtype=torch.int64))).encode())
        h.update(str(int((v[::7] ^ 0x5A5A5A5A).sum(dtype=torch.int64))).encode())
        h.update(v[:4096].cpu().numpy().tobytes())
    return h.hexdigest()

def put(name, text):
    tmp = os.path.join(d, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(d, name))

model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).cuda()
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
xb = torch.randn(256, 1024, device="cuda")
yb = torch.randn(256, 1024, device="cuda")
torch.cuda.synchronize()
put("ready", json.dumps({"pid": os.getpid(), "digest": digest()}))
step = 0
while True:
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(xb), yb)
    loss.backward()
    opt.step()
    step += 1
    lv = float(loss)  # synchronizes: keeps the GPU queue shallow so a lock drains fast
    put("step", f"{step} {lv:.9g}")
    for name in os.listdir(d):
        if name.startswith("verify-"):
            os.unlink(os.path.join(d, name))
            put("digest-" + name[7:], digest())
    time.sleep(0.01)
'''


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


class Bench:
    def __init__(self, out: Path, criu: Path, site: Path, work: Path) -> None:
        self.out, self.criu, self.site, self.work = out, criu, site, work
        self.results: list[dict[str, Any]] = []
        # gpucr confines checkpoints to the node config's checkpoint_root: the bench's own config names its work dir
        work.mkdir(parents=True, exist_ok=True)
        config = work / "gpucr.toml"
        config.write_text(f'checkpoint_root = "{work}"\n')
        os.chmod(config, 0o644)
        self.env = {**os.environ, "PYTHONPATH": f"{REPO}:{site}", "GPUCR_CRIU": str(criu), "PYTHONUNBUFFERED": "1",
                    "GPUCR_CONFIG": str(config)}

    def gpucr(self, *args: str) -> dict[str, Any]:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-c", "import sys; from nri_plugin.cli.main import main; sys.exit(main())",
                            *args, "--json"], capture_output=True, text=True, env=self.env, timeout=900)
        wall = time.monotonic() - t0
        if r.returncode:
            raise RuntimeError(f"gpucr {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-4000:]}")
        s = json.loads(r.stdout.strip().splitlines()[-1])
        s["wall_s"] = round(wall, 3)
        return s

    def start(self, gib: float, name: str, cgroup: Path | None = None) -> tuple[int, Path, str]:
        d = self.work / name
        d.mkdir(parents=True)
        log = open(d / "log", "wb")
        # stdio are files, stdin /dev/null, own session: CRIU needs no external pipes or ttys
        p = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(d), str(gib)], stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=d)
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(p.pid))
        deadline = time.monotonic() + 300
        while not (d / "ready").exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"workload {name} failed: {(d / 'log').read_text()[-3000:]}")
            time.sleep(0.1)
        ready = json.loads((d / "ready").read_text())
        self.wait_steps(d, 3)
        self._procs = getattr(self, "_procs", []) + [p]
        return p.pid, d, ready["digest"]

    @staticmethod
    def step(d: Path) -> int:
        try:
            return int((d / "step").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def wait_steps(self, d: Path, n: int, timeout: float = 120) -> int:
        s0 = self.step(d)
        deadline = time.monotonic() + timeout
        while self.step(d) < s0 + n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"training in {d} did not advance ({s0} -> {self.step(d)}): "
                                   f"{(d / 'log').read_text()[-2000:]}")
            time.sleep(0.05)
        return self.step(d)

    def verify(self, d: Path, tag: str, timeout: float = 300) -> str:
        (d / f"verify-{tag}").write_text("")
        deadline = time.monotonic() + timeout
        while not (d / f"digest-{tag}").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no digest from {d}: {(d / 'log').read_text()[-2000:]}")
            time.sleep(0.05)
        return (d / f"digest-{tag}").read_text()

    @staticmethod
    def wait_gone(pid: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while os.path.exists(f"/proc/{pid}"):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"pid {pid} still exists after the dump")
            time.sleep(0.05)

    def record(self, **kw: Any) -> None:
        self.results.append(kw)
        print(json.dumps(kw), flush=True)
        (self.out / "gpu_cr.json").write_text(json.dumps({"env": self.envinfo(), "runs": self.results}, indent=1))

    def envinfo(self) -> dict[str, Any]:
        if not hasattr(self, "_envinfo"):
            q = sh(["nvidia-smi", "--query-gpu=name,uuid,driver_version,memory.total", "--format=csv,noheader"])
            self._envinfo = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
                             "kernel": platform.release(), "gpus": q.stdout.strip().splitlines(),
                             "criu": sh([str(self.criu), "--version"]).stdout.split("\n")[0],
                             "cpus": os.cpu_count()}
        return self._envinfo

    def gpu_uuid(self) -> str:
        return sh(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"]).stdout.split()[0]

    # -- scenarios -------------------------------------------------------------------------------------------------
    def size(self, gib: float, gpu_map: bool) -> None:
        pid, d, dig0 = self.start(gib, f"w{gib:g}")
        ck = self.work / f"ck{gib:g}"
        s = self.gpucr("checkpoint", "--pid", str(pid), "--to", str(ck), "--leave-running")
        at = self.step(d)
        after = self.wait_steps(d, 5)
        ok = self.verify(d, "lr") == dig0
        self.record(case=f"{gib:g} GiB", mode="leave-running", checkpoint=s, digest_ok=ok, steps=[at, after])
        shutil.rmtree(ck)
        s = self.gpucr("checkpoint", "--pid", str(pid), "--to", str(ck))
        at = self.step(d)
        self.wait_gone(pid)
        args = ["restore", str(ck)]
        if gpu_map:
            u = self.gpu_uuid()
            args += ["--gpu-map", f"{u}={u}"]
        r = self.gpucr(*args)
        first = self.step(d)
        after = self.wait_steps(d, 5)
        ok = self.verify(d, "rs") == dig0
        self.record(case=f"{gib:g} GiB", mode="kill+restore" + (" (--gpu-map U=U)" if gpu_map else ""),
                    checkpoint=s, restore=r, digest_ok=ok, steps=[at, first, after],
                    image_gib=round(s["image_bytes"] / GIB, 2))
        os.kill(r["pid"], 9)
        self.wait_gone(r["pid"])
        shutil.rmtree(ck)

    def grit(self, gib: float) -> None:
        """A cgroup frozen by a caller before the checkpoint (leave-running, then kill+restore)."""
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        cg = Path("/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/freezer") / f"gpucr-grit-{os.getpid()}"
        cg.mkdir()
        ctl, frozen_val, thawed_val = ("cgroup.freeze", "1", "0") if v2 else ("freezer.state", "FROZEN", "THAWED")

        def freeze(on: bool) -> None:
            (cg / ctl).write_text(frozen_val if on else thawed_val)
            time.sleep(0.2)

        def is_frozen() -> bool:
            if v2:
                return "frozen 1" in (cg / "cgroup.events").read_text()
            return (cg / "freezer.state").read_text().strip() == "FROZEN"

        try:
            pid, d, dig0 = self.start(gib, "grit", cgroup=cg)
            freeze(True)
            assert is_frozen()
            ck = self.work / "ckgrit"
            s = self.gpucr("checkpoint", "--pid", str(pid), "--to", str(ck), "--leave-running")
            still = is_frozen()
            at = self.step(d)
            time.sleep(0.5)
            no_move = self.step(d) == at
            freeze(False)
            after = self.wait_steps(d, 5)
            ok = self.verify(d, "lr") == dig0
            self.record(case=f"GRIT {gib:g} GiB (cgroup v{2 if v2 else 1} frozen before)", mode="leave-running",
                        checkpoint=s, digest_ok=ok, frozen_after=still, paused_while_frozen=no_move,
                        steps=[at, after])
            shutil.rmtree(ck)
            freeze(True)
            s = self.gpucr("checkpoint", "--pid", str(pid), "--to", str(ck))
            self.wait_gone(pid)
            still = is_frozen()
            r = self.gpucr("restore", str(ck))
            still_r = is_frozen()
            freeze(False)
            after = self.wait_steps(d, 5)
            ok = self.verify(d, "rs") == dig0
            self.record(case=f"GRIT {gib:g} GiB (cgroup v{2 if v2 else 1} frozen before)", mode="kill+restore",
                        checkpoint=s, restore=r, digest_ok=ok, frozen_after=still and still_r, steps=[after])
            os.kill(r["pid"], 9)
            self.wait_gone(r["pid"])
        finally:
            try:
                freeze(False)
                for p in (cg / "cgroup.procs").read_text().split():
                    os.kill(int(p), 9)
                time.sleep(0.5)
                cg.rmdir()
            except OSError as exc:
                print(f"grit cleanup: {exc}", file=sys.stderr)

    def gpu_used_mib(self) -> list[int]:
        q = sh(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"])
        return [int(v) for v in q.stdout.split()]

    def cross_gpu(self, gib: float) -> None:
        """Checkpoint on GPU 0, restore onto GPU 1 with --gpu-map GPU0=GPU1 (needs two GPUs of the same chip)."""
        uuids = sh(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"]).stdout.split()
        if len(uuids) < 2:
            raise RuntimeError(f"cross-GPU restore needs 2 GPUs, this machine has {len(uuids)}")
        pid, d, dig0 = self.start(gib, "cross")
        used0 = self.gpu_used_mib()
        ck = self.work / "ckcross"
        s = self.gpucr("checkpoint", "--pid", str(pid), "--to", str(ck))
        at = self.step(d)
        self.wait_gone(pid)
        r = self.gpucr("restore", str(ck), "--gpu-map", f"{uuids[0]}={uuids[1]},{uuids[1]}={uuids[0]}")
        first = self.step(d)
        after = self.wait_steps(d, 5)
        ok = self.verify(d, "rs") == dig0
        used1 = self.gpu_used_mib()
        self.record(case=f"{gib:g} GiB GPU0 -> GPU1", mode="kill+restore (--gpu-map GPU0=GPU1,GPU1=GPU0)", checkpoint=s,
                    restore=r, digest_ok=ok, steps=[at, first, after], gpu_used_mib_before=used0,
                    gpu_used_mib_after=used1, moved=used1[1] > used0[1] + 512 and used1[0] < used0[0] - 512)
        os.kill(r["pid"], 9)
        self.wait_gone(r["pid"])
        shutil.rmtree(ck)

    def cleanup(self) -> None:
        for p in getattr(self, "_procs", []):
            try:
                p.kill()
            except OSError:
                pass


def markdown(doc: dict[str, Any]) -> str:
    e = doc["env"]
    lines = [f"# gpucr on a real GPU: checkpoint/restore of live PyTorch processes", "",
             f"- date: {e['date']}; machine: {e['host']} ({e['cpus']} CPUs, kernel {e['kernel']})",
             f"- GPU(s): {'; '.join(e['gpus'])}", f"- {e['criu']} (carried Debian trixie build)", "",
             "Times in seconds, from gpucr's own per-step timings. 'digest' = the random GPU data is bit-identical "
             "(SHA-256 over int32 sums and samples of every chunk); 'steps' = training step at checkpoint -> after "
             "restore/resume (training continues).", "",
             "| case | mode | lock | CUDA ckpt | criu dump | images GiB | criu restore | CUDA restore | unlock | "
             "gpucr wall (ckpt / restore) | digest | steps |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        c = r["checkpoint"]["timings_s"]
        rs = (r.get("restore") or {}).get("timings_s") or {}
        t_rest = rs.get("cuda-restore", c.get("cuda-restore"))
        t_unl = rs.get("cuda-unlock", c.get("cuda-unlock"))

        def f(v: Any) -> str:
            return "-" if v is None else f"{v:.3f}" if v < 1 else f"{v:.2f}"
        walls = f"{r['checkpoint']['wall_s']:.1f}" + (f" / {r['restore']['wall_s']:.1f}" if r.get("restore") else "")
        lines.append(f"| {r['case']} | {r['mode']} | {f(c.get('cuda-lock'))} | {f(c.get('cuda-checkpoint'))} | "
                     f"{f(c.get('criu-dump'))} | {r['checkpoint']['image_bytes'] / GIB:.2f} | "
                     f"{f(rs.get('criu-restore'))} | {f(t_rest)} | {f(t_unl)} | {walls} | "
                     f"{'identical' if r['digest_ok'] else 'DIFFERENT'} | {' -> '.join(map(str, r['steps']))} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sizes", default="1,8,32")
    ap.add_argument("--debs", type=Path, default=REPO / "dist", help="where gpucr_*.deb and gpucr-criu_*.deb are")
    ap.add_argument("--work", type=Path, default=None, help="where checkpoints go (default: a temp dir)")
    ap.add_argument("--no-grit", action="store_true")
    ap.add_argument("--no-map", action="store_true")
    ap.add_argument("--cross-gpu", action="store_true", help="also checkpoint on GPU 0 and restore on GPU 1")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    criu, site, _ = packaged(a.debs)
    work = a.work or Path(tempfile.mkdtemp(prefix="gpucr-bench-"))
    b = Bench(a.out, criu, site, work)
    failures = 0
    try:
        sizes = [float(s) for s in a.sizes.split(",") if s]
        for i, g in enumerate(sizes):
            try:
                b.size(g, gpu_map=(i == 0 and not a.no_map))
            except Exception as exc:
                failures += 1
                b.record(case=f"{g:g} GiB", mode="FAILED", error=str(exc)[-3000:], checkpoint={"timings_s": {},
                         "image_bytes": 0, "wall_s": 0}, digest_ok=False, steps=[])
        if a.cross_gpu:
            try:
                b.cross_gpu(1.0)
            except Exception as exc:
                failures += 1
                b.record(case="GPU0 -> GPU1", mode="FAILED", error=str(exc)[-3000:], checkpoint={"timings_s": {},
                         "image_bytes": 0, "wall_s": 0}, digest_ok=False, steps=[])
        if not a.no_grit:
            try:
                b.grit(1.0)
            except Exception as exc:
                failures += 1
                b.record(case="GRIT", mode="FAILED", error=str(exc)[-3000:], checkpoint={"timings_s": {},
                         "image_bytes": 0, "wall_s": 0}, digest_ok=False, steps=[])
    finally:
        b.cleanup()
        doc = {"env": b.envinfo(), "runs": b.results}
        (a.out / "gpu_cr.json").write_text(json.dumps(doc, indent=1))
        (a.out / "gpu_cr.md").write_text(markdown(doc))
        print(markdown(doc))
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures or not all(r["digest_ok"] for r in b.results) else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""SIGKILL ``gpucr checkpoint`` mid-checkpoint of a live PyTorch process on a GPU node; the workload must run again
on its own (gpucr's plugin daemon sweeps the dead checkpoint's lease), its GPU data bit-identical.

Usage (root, on a GPU node with gpucr installed, run with a Python that has torch):

    python3 bench/gpu_faults.py OUT_DIR [--gib 4.5] [--debs DIR] [--gpucr /usr/bin/gpucr] [--reps 1]

``--debs DIR`` first installs ``gpucr_*.deb`` and ``gpucr-criu_*.deb`` from DIR with ``apt-get install /abs/path.deb``
(offline, bench/_stage.py), and records ``gpucr --version``, ``gpucr checkpoint --help`` and ``criu check`` of the installed files.

Then: gpucr's plugin daemon (``gpucr plugin``, the node's sweeper: it sweeps leases at start and every
``lease_sweep_interval_s``, the node default 5 s, while it (re)connects to containerd's NRI socket; none is needed
for the sweep) runs on a private node config; a workload holds ``--gib`` GiB of ``torch.rand`` data on the GPU and
advances a step counter (a small training loop). One uninterrupted ``gpucr checkpoint --pid P --leave-running``
gives each phase's duration on this machine. Then, for each fault, ``gpucr checkpoint --pid P --leave-running --to
D`` is started and SIGKILLed

  (a) during the CUDA checkpoint: once its lease says phase ``cuda-checkpoint`` (written just before the driver's
      checkpoint call), after a third of the baseline's CUDA checkpoint time, i.e. inside the driver call;
  (b) during CRIU's dump: once its lease says phase ``criu-dump`` and its criu child runs, after a third of the
      baseline's CRIU dump time.

No product test hook is used: the kill times come from the lease file and the baseline. Nothing else acts; the
bench watches until the workload's counter advances again, then checks: the driver reports RUNNING for the pid,
the GPU data's sha256 (every byte, computed in the workload) equals the one taken at start, the lease is gone, no
criu process is left, the daemon's log names what it undid, and ``gpucr restore`` refuses every directory left in
the checkpoint root. Writes OUT_DIR/gpu_faults.json and OUT_DIR/gpu_faults.md (+ the logs).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _workload as wl  # noqa: E402
from _stage import install_gpucr, out_of, sh  # noqa: E402

#: every byte of the GPU data in the digest; the step line with the wall time
WORKLOAD = wl.workload(full_digest=True, step_time=True)

T0 = time.monotonic()
EVENTS: list[str] = []


def say(msg: str) -> None:
    line = f"[{time.monotonic() - T0:7.2f}s] {msg}"
    EVENTS.append(line)
    print(line, flush=True)


# --- the driver's view of a process (ctypes; a call into a stopped process blocks, so each has a watchdog) ---

_cuda: Any = None
STATES = {0: "RUNNING", 1: "LOCKED", 2: "CHECKPOINTED", 3: "FAILED"}


def driver_state(pid: int, libcuda: str, timeout: float = 20.0) -> str:
    global _cuda
    if _cuda is None:
        _cuda = ctypes.CDLL(libcuda)
        rc = _cuda.cuInit(0)
        if rc:
            return f"cuInit error {rc}"
    box: dict[str, str] = {}

    def call() -> None:
        st = ctypes.c_int(-1)
        rc = _cuda.cuCheckpointProcessGetState(ctypes.c_int(pid), ctypes.byref(st))
        box["s"] = STATES.get(st.value, str(st.value)) if rc == 0 else f"error {rc}"

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    return box.get("s", f"no answer in {timeout:.0f}s")


# --- the workload ---

class Workload:
    def __init__(self, d: Path, gib: float) -> None:
        self.d = d
        d.mkdir(parents=True)
        self.log = open(d / "log", "w")
        self.proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(d), str(gib)], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=d)
        self.ready = wl.wait_ready(d, self.proc)
        self.pid = self.proc.pid
        self.wait_steps(3)

    def step(self) -> int:
        return wl.step(self.d)

    def wait_steps(self, n: int, timeout: float = 120) -> int:
        return wl.wait_steps(self.d, n, timeout, self.proc)

    def digest(self, tag: str, timeout: float = 180) -> str:
        return wl.ask_digest(self.d, tag, timeout, self.proc) or "no digest"

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)


# --- helpers ---

def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def proc_stats() -> Iterator[tuple[int, str, list[str]]]:
    """(pid, comm, the stat fields after comm: state, ppid, ...) of each process still there when read."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        yield int(p.name), stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()


def children(pid: int) -> list[tuple[int, str, str]]:
    """(pid, command line (comm when none), state) of pid's direct children."""
    return [(p, cmdline(p)[:200] or comm, rest[0]) for p, comm, rest in proc_stats() if int(rest[1]) == pid]


def criu_procs() -> list[str]:
    found = []
    for p, comm, rest in proc_stats():
        cmd = cmdline(p)
        if "criu" in comm or "sbin/criu" in cmd:
            found.append(f"pid {p} {cmd[:120] or comm} state {rest[0]}")
    return found


def lease_phase(leases: Path) -> str | None:
    try:
        for f in leases.iterdir():
            if f.name.endswith(".json") or ".json.claim-" in f.name:
                try:
                    return str(json.loads(f.read_text()).get("phase"))
                except (OSError, ValueError):
                    return "?"
    except FileNotFoundError:
        pass
    return None


def gpu_mib(pid: int) -> str:
    r = sh(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
    for ln in r.stdout.splitlines():
        parts = [x.strip() for x in ln.split(",")]
        if parts and parts[0] == str(pid):
            return f"{parts[1]} MiB"
    return "no process"


def install(debs: Path, res: dict[str, Any]) -> None:
    ins = install_gpucr(debs)
    ins["usr_bin_gpucr_head"] = Path("/usr/bin/gpucr").read_text()[:600] if Path("/usr/bin/gpucr").exists() else ""
    r = sh(["/usr/bin/gpucr", "doctor"], timeout=30)
    ins["gpucr_doctor"] = {"rc": r.returncode, "out": out_of(r)[-4000:]}
    res["install"] = ins
    say(f"installed: {ins['dpkg_l'].strip()!r}; gpucr --version: {ins['gpucr_version']!r}; "
        f"criu check rc {ins['criu_check']['rc']}")


def facts(gpucr: str) -> dict[str, Any]:
    smi = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]).stdout.strip()
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, kernel {platform.release()}, {os.cpu_count()} CPUs",
        "gpu": smi, "thp": thp,
        "criu": out_of(sh(["/usr/lib/gpucr/criu/criu", "--version"])).replace("\n", "; "),
        "gpucr": out_of(sh([gpucr, "--version"])),
        "torch": out_of(sh([sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda)"])),
        "python_bench": sys.version.split()[0],
    }


def find_libcuda() -> str:
    for c in ("/usr/local/nvidia/lib64/libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"):
        if os.path.exists(c):
            return c
    return "libcuda.so.1"


# --- one fault ---

def fault(name: str, phase: str, delay: float, w: Workload, gpucr: str, conf: Path, root: Path, leases: Path,
          plog: Path, libcuda: str, work: Path, need_criu: bool) -> dict[str, Any]:
    r: dict[str, Any] = {"case": name, "kill_in_phase": phase, "delay_s": round(delay, 3)}
    target = root / name
    errf = open(work / f"{name}.cli.log", "w")
    steps_before = w.step()
    log_mark = plog.stat().st_size if plog.exists() else 0
    say(f"{name}: gpucr checkpoint --pid {w.pid} --leave-running --to {target} (step {steps_before})")
    t_start = time.monotonic()
    cli = subprocess.Popen([gpucr, "-v", "checkpoint", "--pid", str(w.pid), "--leave-running", "--to", str(target),
                            "--config", str(conf)], stdout=errf, stderr=subprocess.STDOUT)
    t_phase = None
    while time.monotonic() - t_start < 120:
        if cli.poll() is not None:
            break
        if lease_phase(leases) == phase and (not need_criu or any("criu" in c[1] for c in children(cli.pid))):
            t_phase = time.monotonic()
            break
        time.sleep(0.005)
    if t_phase is None:
        cli.kill()
        cli.wait()
        errf.close()
        r["error"] = f"never saw phase {phase} (rc {cli.returncode}): {(work / f'{name}.cli.log').read_text()[-2000:]}"
        say(f"{name}: {r['error']}")
        return r
    time.sleep(delay)
    r["phase_at_kill"] = lease_phase(leases)
    r["cli_children_at_kill"] = [f"{p} {c} {s}" for p, c, s in children(cli.pid)]
    r["cli_alive_at_kill"] = cli.poll() is None
    t_kill = time.monotonic()
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait()
    errf.close()
    r["since_cli_start_s"] = round(t_kill - t_start, 3)
    r["since_phase_start_s"] = round(t_kill - t_phase, 3)
    say(f"{name}: SIGKILLed gpucr checkpoint (pid {cli.pid}) {r['since_cli_start_s']}s after its start, "
        f"{r['since_phase_start_s']}s into phase {r['phase_at_kill']}; its children then: {r['cli_children_at_kill']}")
    # watch, without acting: steps, lease, criu
    s_at_kill = w.step()
    t_run = t_lease = None
    stalled_until = None
    while time.monotonic() - t_kill < 180:
        now = time.monotonic()
        if t_lease is None and lease_phase(leases) is None:
            t_lease = now
        if t_run is None and w.step() > s_at_kill + 1:
            t_run = now
        if t_run is not None and t_lease is not None:
            break
        if w.proc.poll() is not None:
            r["error"] = f"the workload died (rc {w.proc.returncode})"
            break
        time.sleep(0.02)
    r["step_at_kill"] = s_at_kill
    r["running_again_after_kill_s"] = round(t_run - t_kill, 3) if t_run else None
    r["lease_gone_after_kill_s"] = round(t_lease - t_kill, 3) if t_lease else None
    say(f"{name}: counter advanced again {r['running_again_after_kill_s']}s after the kill; lease gone after "
        f"{r['lease_gone_after_kill_s']}s")
    if t_run is None:
        r["error"] = r.get("error") or "the workload did not run again within 180 s"
        r["driver_state"] = driver_state(w.pid, libcuda)
        return r
    r["steps_after"] = w.wait_steps(20)
    r["driver_state"] = driver_state(w.pid, libcuda)
    r["gpu_memory"] = gpu_mib(w.pid)
    r["digest_after"] = w.digest(name)
    r["bit_identical"] = r["digest_after"] == w.ready["digest"]
    time.sleep(0.5)
    r["criu_left"] = criu_procs()
    text = plog.read_text()[log_mark:] if plog.exists() else ""
    r["daemon_log"] = [ln for ln in text.splitlines() if "lease" in ln or "rolled back" in ln][-6:]
    left = []
    for entry in sorted(root.iterdir()):
        rr = sh([gpucr, "restore", str(entry), "--config", str(conf)], timeout=120)
        left.append({"dir": entry.name, "restore_rc": rr.returncode, "restore_says": out_of(rr)[-600:]})
    r["left_in_root"] = left
    r["no_valid_checkpoint_left"] = all(x["restore_rc"] != 0 for x in left)
    r["cli_log_tail"] = (work / f"{name}.cli.log").read_text()[-2500:]
    r["ok"] = bool(r["bit_identical"] and r["driver_state"] == "RUNNING" and r["no_valid_checkpoint_left"]
                   and not r["criu_left"] and r["lease_gone_after_kill_s"] is not None)
    say(f"{name}: driver {r['driver_state']}, bit-identical {r['bit_identical']}, criu left {r['criu_left']}, "
        f"restore refused all of {[x['dir'] for x in left]}: {r['no_valid_checkpoint_left']}; daemon: "
        f"{r['daemon_log'][-1:] if r['daemon_log'] else 'nothing'}")
    for entry in root.iterdir():
        shutil.rmtree(entry, ignore_errors=True)
    return r


def write_md(out: Path, res: dict[str, Any]) -> None:
    f = res["facts"]
    L = ["# SIGKILL of `gpucr checkpoint` mid-checkpoint of a live PyTorch process: the daemon's sweep brings it back",
         "", f"Produced by `{res['argv']}`.", "",
         f"- date: {f['date']}; machine: {f['machine']}; GPU: {f['gpu']}; THP `{f['thp']}`",
         f"- gpucr: {f['gpucr']}; CRIU: {f['criu']}; torch {f['torch']}",
         f"- workload: {res['gib']} GiB of torch.rand on the GPU + a training loop writing a step counter; pid "
         f"{res['workload_pid']}; GPU memory {res['workload_gpu_memory']}; sha256 of all data at start "
         f"{res['digest_start'][:16]}... ({res['digest_s']:.1f} s)",
         f"- sweeper: {res['sweeper']}", ""]
    if "install" in res:
        ins = res["install"]
        L += ["## Install from the packages (offline)", "",
              f"- debs: {', '.join(ins['debs'])}",
              f"- `{ins['apt_get_install'].get('cmd', 'apt-get install -y --no-download DEBS')}`: rc {ins['apt_get_install']['rc']} in "
              f"{ins['apt_get_install']['s']} s" + (f"; `dpkg -i`: rc {ins['dpkg_i']['rc']}" if "dpkg_i" in ins else ""),
              f"- installed: `{ins['dpkg_l'].strip()}`; `/usr/bin/python3 -V`: {ins['python3']}",
              f"- `/usr/bin/gpucr --version`: `{ins['gpucr_version']}`",
              f"- `/usr/bin/gpucr checkpoint --help`: rc {ins['gpucr_checkpoint_help']['rc']}; first line "
              f"`{ins['gpucr_checkpoint_help']['out'].splitlines()[0] if ins['gpucr_checkpoint_help']['out'] else ''}`",
              f"- `/usr/lib/gpucr/criu/criu --version`: `{ins['criu_version'].replace(chr(10), '; ')}`",
              f"- `/usr/lib/gpucr/criu/criu check`: rc {ins['criu_check']['rc']}, `{ins['criu_check']['out'][-300:]}`",
              f"- `gpucr doctor`: rc {ins['gpucr_doctor']['rc']}: "
              f"`{(ins['gpucr_doctor']['out'].splitlines() or [''])[-1][:200]}`",
              "", "`apt-get install` said:", "", "```", ins["apt_get_install"]["out"][-1500:], "```", ""]
    b = res.get("baseline", {})
    L += ["## Baseline: one uninterrupted `gpucr checkpoint --pid P --leave-running`", "",
          f"rc {b.get('rc')}, {b.get('wall_s')} s; steps (s): `{json.dumps(b.get('steps'))}`; counter advanced after: "
          f"{b.get('advanced_after')}; sha256 equal after: {b.get('bit_identical')}", ""]
    L += ["## Faults", "", "| case | killed | running again after the kill | lease gone | driver | GPU data | "
          "criu left | dirs left, `gpucr restore` | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["faults"]:
        left = "; ".join(f"{x['dir']}: rc {x['restore_rc']}" for x in r.get("left_in_root", [])) or "none"
        L.append(f"| {r['case']} | {r.get('since_phase_start_s')} s into `{r.get('phase_at_kill')}` "
                 f"({r.get('since_cli_start_s')} s after start) | {r.get('running_again_after_kill_s')} s | "
                 f"{r.get('lease_gone_after_kill_s')} s | {r.get('driver_state')} | "
                 f"{'bit-identical' if r.get('bit_identical') else 'DIFFERENT or unknown'} | "
                 f"{r.get('criu_left') or 'none'} | {left} | {'PASS' if r.get('ok') else 'FAIL ' + r.get('error', '')} |")
    L.append("")
    for r in res["faults"]:
        L += [f"### {r['case']}", "", f"CLI's children at the kill: {r.get('cli_children_at_kill')}", "",
              "The daemon's log:", "", "```", *r.get("daemon_log", []), "```", "",
              "`gpucr restore` on what was left:", "", "```",
              *[f"{x['dir']}: rc {x['restore_rc']}: {x['restore_says'][-300:]}" for x in r.get("left_in_root", [])],
              "```", "", "The killed CLI's stderr (tail):", "", "```", r.get("cli_log_tail", "")[-1500:], "```", ""]
    L += ["## Timeline", "", "```", *res["events"], "```", ""]
    (out / "gpu_faults.md").write_text("\n".join(L))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--gib", type=float, default=4.5)
    ap.add_argument("--debs", type=Path, help="install gpucr_*.deb and gpucr-criu_*.deb from here first")
    ap.add_argument("--gpucr", default="/usr/bin/gpucr")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))  # a `timeout` in front still gets the results written
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"argv": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "gib": args.gib, "faults": []}
    if args.debs:
        install(args.debs, res)
    res["facts"] = facts(args.gpucr)
    say(f"facts: {res['facts']}")
    work = Path("/var/lib/gpucr-faults")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700, parents=True)
    root, state, leases = work / "ck", work / "state", work / "state" / "leases"
    root.mkdir(mode=0o700)
    libcuda = find_libcuda()
    conf = work / "config.toml"
    conf.write_text(f'state_dir = "{state}"\ncriu_config_dir = "{work / "criu"}"\nhook_path = ""\n'
                    f'libcuda = "{libcuda}"\ncheckpoint_root = "{root}"\n')
    conf.chmod(0o644)
    plog = work / "plugin.log"
    daemon = subprocess.Popen([args.gpucr, "-v", "plugin", "--socket", str(work / "no-containerd-nri.sock"),
                               "--config", str(conf), "--log-file", str(plog)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res["sweeper"] = (f"`{args.gpucr} -v plugin --socket {work}/no-containerd-nri.sock --config {conf}` (gpucr's plugin "
                      "daemon, pid %d; no containerd on this machine: it retries the NRI socket with backoff while its "
                      "lease sweep runs at start and every lease_sweep_interval_s = 5 s, the node default)" % daemon.pid)
    w = None
    try:
        time.sleep(1.0)
        if daemon.poll() is not None:
            raise RuntimeError(f"gpucr plugin exited: {plog.read_text() if plog.exists() else ''}")
        say(f"workload: {args.gib} GiB")
        w = Workload(work / "w", args.gib)
        res["workload_pid"], res["digest_start"] = w.pid, w.ready["digest"]
        res["digest_s"] = w.ready["digest_s"]
        res["workload_gpu_memory"] = gpu_mib(w.pid)
        say(f"workload pid {w.pid} ready, {res['workload_gpu_memory']}, digest {w.ready['digest'][:16]} "
            f"({w.ready['digest_s']:.1f}s); driver {driver_state(w.pid, libcuda)}")
        # baseline
        t = time.monotonic()
        rb = sh([args.gpucr, "checkpoint", "--pid", str(w.pid), "--leave-running", "--to", str(root / "baseline"),
                 "--config", str(conf), "--json"], timeout=300)
        base: dict[str, Any] = {"rc": rb.returncode, "wall_s": round(time.monotonic() - t, 2)}
        try:
            summary = json.loads(rb.stdout.strip().splitlines()[-1])
            base["summary"] = summary
            base["steps"] = summary.get("timings_s") or {}
        except (ValueError, IndexError):
            base["out"] = out_of(rb)[-3000:]
        base["advanced_after"] = w.wait_steps(5) > 0
        base["bit_identical"] = w.digest("baseline") == w.ready["digest"]
        res["baseline"] = base
        say(f"baseline: rc {rb.returncode} in {base['wall_s']}s, steps {base.get('steps')}, identical after "
            f"{base['bit_identical']}; stderr tail {rb.stderr[-400:]!r}")
        shutil.rmtree(root / "baseline", ignore_errors=True)
        steps = base.get("steps") if isinstance(base.get("steps"), dict) else {}

        def pick(exact: str, part: str, default: float) -> float:
            v = steps.get(exact) or next((v for k, v in steps.items() if part in k), None)
            return float(v) if isinstance(v, (int, float)) and v > 0 else default
        cuda_s = pick("cuda-checkpoint", "cuda-checkpoint", 2.4)
        criu_s = pick("criu-dump", "criu", 4.0)
        res["kill_delays"] = {"cuda_checkpoint_s": cuda_s, "criu_dump_s": criu_s}
        for rep in range(args.reps):
            sfx = f"-{rep + 1}" if args.reps > 1 else ""
            res["faults"].append(fault(f"a-cuda-checkpoint{sfx}", "cuda-checkpoint", cuda_s / 3, w, args.gpucr, conf,
                                       root, leases, plog, libcuda, work, need_criu=False))
            res["faults"].append(fault(f"b-criu-dump{sfx}", "criu-dump", criu_s / 3, w, args.gpucr, conf, root,
                                       leases, plog, libcuda, work, need_criu=True))
    except Exception as exc:  # noqa: BLE001 - the bench reports what it got
        res["error"] = f"{type(exc).__name__}: {exc}"
        say(f"ERROR {res['error']}")
    finally:
        if w is not None:
            w.stop()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        res["events"] = EVENTS
        if plog.exists():
            shutil.copy(plog, out / "plugin.log")
        with open(out / "cli.log", "w") as cl:  # every killed CLI's whole stderr, one after the other
            for f in sorted(work.glob("*.cli.log")):
                cl.write(f"===== {f.name}\n{f.read_text()}\n")
        if w is not None and (w.d / "log").exists():
            shutil.copy(w.d / "log", out / "workload.log")
        res["verdict"] = "PASS" if res["faults"] and all(r.get("ok") for r in res["faults"]) and "error" not in res \
            else "FAIL"
        (out / "gpu_faults.json").write_text(json.dumps(res, indent=1, default=str))
        try:
            write_md(out, res)
        except Exception as exc:  # noqa: BLE001
            (out / "md-error.txt").write_text(repr(exc))
        shutil.rmtree(work, ignore_errors=True)
    print(f"verdict: {res['verdict']}")
    return 0 if res["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

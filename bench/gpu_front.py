"""Standard checkpoint commands on a CRI pod training on a real GPU, without and with gpucr (run on a GPU machine).

    python3 bench/gpu_front.py OUT_DIR --stage STAGE [--gib 1] [--timeout 180] [--hooks MODULE:CALLABLE] [--skip-plain]

STAGE is bench/_stage.py's: ``debs-ctrd/`` (containerd 2.1.9 and runc .debs from Debian), ``images/``
(install/images.sh's busybox.tar and pause.tar), and gpucr's own .debs (``make package``) in STAGE/pkgs, $GPUCR_DEBS or
the checkout's dist/; all installed with apt-get. The generated ``_pb`` modules must be in the tree (tools/genproto.py).

1. A private containerd 2.1.9 (install/containerd.sh) runs a CRI pod whose container trains a model on the GPU while
   holding GIB of random data: the host's /usr, /etc, /opt (and their submounts, e.g. the driver's) bound read-only
   into a root of merged-/usr symlinks, the /dev/nvidia* devices given through CRI, LD_LIBRARY_PATH to the driver.
2. Without gpucr: ``ctr c checkpoint --task`` and CRI CheckpointContainer, each bounded by --timeout: what happens.
3. With gpucr (the NRI plugin + the CRIU front with its GPU hooks): the same pod opted in; ``ctr c checkpoint --task``
   and CRI CheckpointContainer succeed while training goes on; the container is killed and ``ctr c restore`` brings it
   back: training continues and the GPU data is bit-identical.
Writes OUT_DIR/gpu_front.json, OUT_DIR/gpu_front.md and the front's log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from _stage import ROOT, setup  # noqa: E402,F401 - setup: gpu_http/gpu_restore import it from here

from demo.gpu_pod import HOSTROOT, gpu_container_config, gpu_mounts_and_devices, hostroot_image, step, verify  # noqa: E402


def sh(cmd: list[str], timeout: float | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- one containerd instance ---------------------------------------------------------------------------------------
class Instance:
    def __init__(self, env: dict[str, str], name: str, front: Path | None) -> None:
        self.env = {**env, "GPUCR_INSTANCE": name}
        if front is not None:
            self.env["GPUCR_CRIU_DIR"] = str(front)
        r = sh(["bash", str(REPO / "install/containerd.sh"), "start", "2.1"], env=self.env)
        if r.returncode:
            raise SystemExit(f"containerd start failed: {r.stderr}")
        self.info = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
        self.ctr = [self.info["ctr"], "--address", self.info["address"], "-n", "k8s.io"]
        img = ROOT / "images/hostroot.tar"
        hostroot_image(img)
        r = sh([*self.ctr, "images", "import", str(img)], env=self.env)
        if r.returncode:
            raise SystemExit(f"hostroot import failed: {r.stderr}")

    def stop(self) -> None:
        sh(["bash", str(REPO / "install/containerd.sh"), "stop", "2.1"], env=self.env)

    def run_ctr(self, *args: str, timeout: float) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            r = sh([*self.ctr, *args], timeout=timeout, env={**self.env, "PATH": self.path()})
            return {"rc": r.returncode, "seconds": round(time.monotonic() - t0, 2), "stderr": r.stderr[-800:]}
        except subprocess.TimeoutExpired:
            return {"rc": None, "seconds": timeout, "hung": True}

    def path(self) -> str:
        return f"{self.env.get('GPUCR_CRIU_DIR', '')}:{ROOT / 'bin'}:{self.env['PATH']}"


def start_pod(inst: Instance, data: Path, gib: float, annotations: dict[str, str]) -> tuple[Any, str, str, Any]:
    from nri_plugin.cri import CriClient, pod_config

    cri = CriClient(inst.info["address"], timeout_s=120)
    pcfg = pod_config(f"train-{data.name}", cgroup_parent=inst.info["cgroup_parent"], annotations=annotations,
                      log_directory=str(data / "logs"))
    pod = cri.run_pod_sandbox(pcfg)
    cfg = gpu_container_config(data, gib)
    cid = cri.create_container(pod, cfg, pcfg)
    cri.start_container(cid)
    deadline = time.monotonic() + 180
    while not (data / "ready").exists() or step(data) < 5:
        st, _ = cri.container_status(cid)
        if st.state != 1 or time.monotonic() > deadline:
            logf = data / "logs/train.log"
            tail = logf.read_text()[-3000:] if logf.exists() else "(no log)"
            raise SystemExit(f"workload did not start (state {st.state}): {st.message} {st.reason}\n{tail}\n"
                             f"mounts/devices={gpu_mounts_and_devices()}")
        time.sleep(0.5)
    return cri, pod, cid, pcfg


def criu_errors(stderr: str) -> list[str]:
    """The Error lines of the CRIU log runc names in its failure message."""
    import re

    m = re.search(r"path= ?(\S+\.log)", stderr)
    if not m or not Path(m.group(1)).exists():
        return []
    return [ln.strip()[:300] for ln in Path(m.group(1)).read_text(errors="replace").splitlines() if "Error" in ln][-6:]


def markdown(res: dict[str, Any]) -> str:
    def out(r: dict[str, Any] | None) -> str:
        if not r:
            return "-"
        if r.get("hung"):
            return f"hung (killed after {r['seconds']} s)"
        ok = r.get("rc") == 0 or r.get("ok") is True
        return f"{'ok' if ok else 'FAILED'} in {r['seconds']} s"
    rows = [
        ("`ctr c checkpoint --task` (containerd pauses first)", out(res.get("plain_ctr")), out(res.get("gpucr_ctr"))),
        ("CRI CheckpointContainer (pause, checkpoint, resume)", out(res.get("plain_cri")), out(res.get("gpucr_cri"))),
        ("`ctr c restore --live --rw` after killing the container", "-", out(res.get("gpucr_restore"))),
    ]
    lines = [f"- date: {res['date']}; machine: {res['host']} ({res['gpu']}); containerd 2.1.9, runc 1.1.15, CRIU 4.1.1",
             f"- workload: a CRI pod training an MLP on the GPU while holding {res['gib']} GiB of random GPU data", "",
             "| command | without gpucr | with gpucr |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", f"- without gpucr, CRIU's errors: {'; '.join(res.get('plain_criu_errors', [])) or '(none captured)'}",
              f"- without gpucr, training steps before/after the failed attempts: {res.get('plain_training_after_failures')}",
              f"- with gpucr, training went on through the checkpoint (steps {res.get('gpucr_ctr_training_after')}), "
              f"GPU data identical afterwards: {res.get('gpucr_ctr_digest_after')}",
              f"- with gpucr, after the restore training continued (steps {res.get('gpucr_restore_training')}, "
              f"killed at the first), GPU data bit-identical: {res.get('gpucr_restore_digest_identical')}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--stage", type=Path, required=True)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--hooks", default="nri_plugin.handlers.front_cuda:make")
    ap.add_argument("--skip-plain", action="store_true", help="skip the run without gpucr")
    ap.add_argument("--setup-only", action="store_true",
                    help="only lay out GPUCR_TEST_ROOT (then e.g. `make demo` parts can run on this machine)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = setup(args.stage)
    if args.setup_only:
        print(json.dumps({k: env[k] for k in ("GPUCR_TEST_ROOT", "PYTHONPATH", "PATH")}))
        return 0
    os.environ.update({k: env[k] for k in ("GPUCR_TEST_ROOT", "PYTHONPATH", "PATH")})
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
                           "gpu": sh(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]).stdout.strip(),
                           "gib": args.gib}
    work = Path("/var/lib/gpucr-front-bench")  # not /tmp: the CRIU front refuses a route others could change
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    if not args.skip_plain:
        log("without gpucr: private containerd 2.1.9, real criu")
        inst = Instance(env, "plain", None)
        try:
            cri, pod, cid, _ = start_pod(inst, work / "plain", args.gib, {})
            log(f"training at step {step(work / 'plain')}; ctr c checkpoint --task")
            res["plain_ctr"] = inst.run_ctr("c", "checkpoint", "--task", "--rw", "--image", cid,
                                            "localhost/plain-ckpt:1", timeout=args.timeout)
            sh([*inst.ctr, "t", "resume", cid], env=inst.env)
            log(f"-> {res['plain_ctr']}")
            res["plain_criu_errors"] = criu_errors(res["plain_ctr"].get("stderr", ""))
            t0 = time.monotonic()
            try:
                cri.checkpoint_container(cid, str(work / "plain.tar"), timeout_s=int(args.timeout))
                res["plain_cri"] = {"ok": True, "seconds": round(time.monotonic() - t0, 2)}
            except Exception as exc:  # noqa: BLE001 - the outcome is the measurement
                res["plain_cri"] = {"ok": False, "seconds": round(time.monotonic() - t0, 2), "error": str(exc)[-600:]}
            log(f"-> {res['plain_cri']}")
            s1 = step(work / "plain")
            time.sleep(3)
            res["plain_training_after_failures"] = [s1, step(work / "plain")]
        finally:
            inst.stop()

    log("with gpucr: NRI plugin + CRIU front")
    route = work / "route"
    r = sh(["bash", str(REPO / "install/front.sh"), "route", "--dir", str(route), "--real-criu", str(ROOT / "bin/criu"),
            "--log-dir", str(work / "front-log"), "--hooks", args.hooks],
           env={**env, "GPUCR_FRONT_PYTHON": sys.executable})
    if r.returncode:
        raise SystemExit(f"front route failed: {r.stderr}")
    hook = work / "gpucr-hook"  # as a node has it: install/hook.sh's root-owned launcher and code copy
    r = sh(["bash", str(REPO / "install/hook.sh"), "install", "--path", str(hook), "--prefix", str(work / "hook-lib")])
    if r.returncode:
        raise SystemExit(f"install/hook.sh install failed: {r.stderr}")
    node = work / "node.toml"
    node.write_text(f'state_dir = "{work / "state"}"\ncriu_config_dir = "{work / "criu"}"\nhook_path = "{hook}"\n')
    with (route / "path/front.conf").open("a") as f:
        f.write(f"node_config = {node}\n")
    inst = Instance(env, "gpucr", route / "path")
    plugin = None
    try:
        plugin = subprocess.Popen([sys.executable, "-m", "nri_plugin.cli.main", "plugin", "--socket",
                                   inst.info["nri_socket"], "--config", str(node), "--log-file",
                                   str(args.out / "plugin.log")], env=env, cwd=REPO)
        time.sleep(3)
        d = work / "gpucr"
        cri, pod, cid, _ = start_pod(inst, d, args.gib, {"gpucr.io/checkpoint": "enabled"})
        before = json.loads((d / "ready").read_text())["digest"]
        s0 = step(d)
        log(f"training at step {s0}; ctr c checkpoint --task")
        res["gpucr_ctr"] = inst.run_ctr("c", "checkpoint", "--task", "--rw", "--image", cid, "localhost/gpucr-ckpt:1",
                                        timeout=args.timeout)
        log(f"-> {res['gpucr_ctr']}")
        time.sleep(2)
        res["gpucr_ctr_training_after"] = [s0, step(d)]
        res["gpucr_ctr_digest_after"] = verify(d, "after-ctr") == before
        t0 = time.monotonic()
        try:
            cri.checkpoint_container(cid, str(work / "gpucr.tar"), timeout_s=int(args.timeout))
            res["gpucr_cri"] = {"ok": True, "seconds": round(time.monotonic() - t0, 2)}
        except Exception as exc:  # noqa: BLE001
            res["gpucr_cri"] = {"ok": False, "seconds": round(time.monotonic() - t0, 2), "error": str(exc)[-600:]}
        log(f"-> {res['gpucr_cri']}")
        cri.stop_container(cid, 0)
        killed_at = step(d)
        log(f"killed at step {killed_at}; ctr c restore --live --rw")
        res["gpucr_restore"] = inst.run_ctr("c", "restore", "--live", "--rw", "restored", "localhost/gpucr-ckpt:1",
                                            timeout=args.timeout)
        log(f"-> {res['gpucr_restore']}")
        deadline = time.monotonic() + 120
        while step(d) <= killed_at and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        res["gpucr_restore_training"] = [killed_at, step(d)]
        res["gpucr_restore_digest_identical"] = verify(d, "after-restore") == before
    finally:
        if plugin is not None:
            plugin.terminate()
        for f in (work / "front-log").glob("*"):
            shutil.copy(f, args.out / f.name)
        inst.stop()
    (args.out / "gpu_front.json").write_text(json.dumps(res, indent=1))
    (args.out / "gpu_front.md").write_text(markdown(res))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An HTTP inference server pod on a real GPU through the standard commands and gpucr (run on a GPU machine).

    python3 bench/gpu_http.py OUT_DIR --stage STAGE [--gib 1] [--timeout 180] [--network-lock auto] [--code TEXT]

STAGE is bench/_stage.py's (``debs-ctrd/`` = containerd 2.1.9 and runc, ``images/``, gpucr's own .debs in
STAGE/pkgs, $GPUCR_DEBS or dist/; CRIU is gpucr-criu's); the generated ``_pb`` modules must be in the tree.

1. A private containerd 2.1.9 with gpucr (NRI plugin + CRIU front with its GPU hooks) runs a host-network CRI pod
   opted in with ``gpucr.io/checkpoint: enabled`` and ``gpucr.io/tcp-established: "true"``: bench/infer_server.py,
   a PyTorch MLP whose random weights (fixed seed) fill GIB of GPU memory, served by ``http.server`` on
   127.0.0.1:PORT (``POST /v1/infer``: float32 rows in, float32 rows out). bench/infer_client.py, in the same
   container, sends the same request every 0.25 s over one kept-open connection and logs each answer's SHA-256.
2. The bench sends a fixed request and keeps the response bytes; a prober sends it over another kept-open connection
   every 0.1 s from before until after ``ctr c checkpoint --task`` (the pause a client sees).
3. The container's task is killed and deleted (``ctr t kill -s SIGKILL``, ``ctr t rm``), then ``ctr c restore``:
   the same request on a new connection gets byte-identical response bytes; the in-container client's connection
   (established across checkpoint, kill and restore) goes on answering, identically, without reconnecting.
CRIU locks a host-network container's TCP connections with iptables by default; on a machine without
iptables-restore the bench puts ``network-lock nftables`` (or ``skip``) in the node's runc CRIU config, which gpucr
merges into the container's. Writes OUT_DIR/gpu_http.json and OUT_DIR/gpu_http.md; the front's, plugin's, server's
and client's logs and the response go to OUT_DIR/extra/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_front import REPO, ROOT, Instance, log, setup, sh  # noqa: E402
from infer_client import read_response, request_bytes as _request_bytes  # noqa: E402

from demo.gpu_pod import HOSTROOT, gpu_mounts_and_devices, python_for_container  # noqa: E402

HERE = Path(__file__).resolve().parent
WIDTH = 4096
ROWS = 8


def request_bytes() -> bytes:
    return _request_bytes(ROWS, WIDTH)


class Conn:
    """One kept-open HTTP/1.1 connection to the server."""

    def __init__(self, port: int, timeout: float = 300) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.local_port = self.sock.getsockname()[1]

    def send(self, raw: bytes) -> bytes:
        self.sock.sendall(raw)
        return read_response(self.file)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def once(port: int, raw: bytes, timeout: float = 300) -> bytes:
    c = Conn(port, timeout)
    try:
        return c.send(raw)
    finally:
        c.close()


def get(port: int, path: str) -> bytes:
    return once(port, f"GET {path} HTTP/1.1\r\nHost: gpucr-bench\r\n\r\n".encode())


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Prober(threading.Thread):
    """Sends the request over one kept-open connection every 0.1 s; records latency and sameness."""

    def __init__(self, port: int, raw: bytes, expect: bytes) -> None:
        super().__init__(daemon=True)
        self.conn = Conn(port)
        self.raw, self.expect = raw, expect
        self.stop = threading.Event()
        self.samples: list[tuple[float, float, bool]] = []
        self.error: str | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                got = self.conn.send(self.raw)
            except OSError as exc:
                self.error = repr(exc)
                return
            self.samples.append((t0, time.monotonic() - t0, got == self.expect))
            time.sleep(0.1)


def client_log(d: Path) -> list[list[str]]:
    p = d / "client.log"
    return [ln.split() for ln in p.read_text().splitlines()] if p.exists() else []


def wait_for(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gpu_apps() -> str:
    return sh(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"]).stdout.strip()


def network_lock(choice: str, criu: Path) -> str | None:
    """CRIU's network lock for this machine: CRIU locks each TCP connection of a host-network container with
    iptables by default; a machine without iptables needs nftables (libnftables, in CRIU's closure) or skip."""
    if choice != "auto":
        return None if choice == "iptables" else choice
    if shutil.which("iptables-restore"):
        return None
    r = sh([str(criu), "check", "--feature", "network_lock_nftables"])
    return "nftables" if r.returncode == 0 else "skip"


def versions(criu: Path) -> dict[str, str]:
    def first(cmd: list[str]) -> str:
        try:
            r = sh(cmd)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return {"containerd": first([str(ROOT / "opt/containerd-2.1.9/usr/bin/containerd"), "--version"]),
            "runc": first(["runc", "--version"]), "criu": first([str(criu), "--version"]).removeprefix("Version: "),
            "kernel": platform.release(), "thp": thp.read_text().strip() if thp.exists() else "?",
            "gpu": first(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]),
            "torch": first([sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda)"]),
            "python": platform.python_version(), "cpus": str(os.cpu_count())}


def start_server(inst: Instance, d: Path, gib: float, port: int) -> tuple[Any, str, str]:
    from nri_plugin.cri import CriClient, container_config, pod_config

    d.mkdir(parents=True, exist_ok=True)
    for f in ("infer_server.py", "infer_client.py"):
        shutil.copy(HERE / f, d / f)
    (d / "request.bin").write_bytes(request_bytes())
    cri = CriClient(inst.info["address"], timeout_s=120)
    ann = {"gpucr.io/checkpoint": "enabled", "gpucr.io/tcp-established": "true"}
    pcfg = pod_config("infer-http", cgroup_parent=inst.info["cgroup_parent"], annotations=ann,
                      log_directory=str(d / "logs"))
    pod = cri.run_pod_sandbox(pcfg)
    mounts, devs = gpu_mounts_and_devices()
    exe, pydirs = python_for_container()
    cfg = container_config("server", HOSTROOT, command=[exe, "/data/infer_server.py", "/data", str(gib), str(port),
                                                         str(WIDTH)],
                           env={"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64", "PATH": "/usr/bin:/bin",
                                "HOME": "/tmp", "PYTHONPATH": pydirs[0], "PYTHONUNBUFFERED": "1"},
                           mounts=[*mounts, (str(d), "/data", False)], devices=devs, log_path="server.log")
    cid = cri.create_container(pod, cfg, pcfg)
    cri.start_container(cid)
    deadline = time.monotonic() + 240
    while not (d / "ready").exists() or len(client_log(d)) < 3:
        st, _ = cri.container_status(cid)
        if st.state != 1 or time.monotonic() > deadline:
            logf = d / "logs/server.log"
            tail = logf.read_text()[-3000:] if logf.exists() else "(no log)"
            raise SystemExit(f"server did not start (state {st.state}): {st.message} {st.reason}\n{tail}")
        time.sleep(0.3)
    return cri, pod, cid


def front_excerpt(logdir: Path) -> list[str]:
    keep = ("request DUMP", "request RESTORE", "DUMP of", "RESTORE of", "DUMP success", "RESTORE success", "ERROR",
            "WARNING")
    lines: list[str] = []
    for f in sorted(logdir.glob("*")):
        if f.is_file():
            lines += [ln[:400] for ln in f.read_text(errors="replace").splitlines() if any(k in ln for k in keep)]
    return lines


def phases(front_log: Path) -> dict[str, float]:
    """Seconds between the front's log lines: gpucr's CUDA steps and CRIU's own work, for the dump and the restore."""
    from datetime import datetime

    marks = {"dump_request": "request DUMP", "cuda_checkpointed": "criu may dump now",
             "criu_post_dump": "notify post-dump", "dump_done": "DUMP success", "restore_request": "request RESTORE",
             "criu_post_restore": "notify post-restore", "restore_done": "RESTORE success"}
    at: dict[str, float] = {}
    lines = front_log.read_text(errors="replace").splitlines() if front_log.exists() else []
    for ln in lines:
        for key, text in marks.items():
            if text in ln and key not in at:
                at[key] = datetime.strptime(ln.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
    spans = {"front_dump_total": ("dump_request", "dump_done"),
             "cuda_lock_and_checkpoint": ("dump_request", "cuda_checkpointed"),
             "criu_dump": ("cuda_checkpointed", "criu_post_dump"),
             "cuda_restore_and_unlock_after_dump": ("criu_post_dump", "dump_done"),
             "front_restore_total": ("restore_request", "restore_done"),
             "criu_restore": ("restore_request", "criu_post_restore"),
             "cuda_restore_and_unlock": ("criu_post_restore", "restore_done")}
    return {k: round(at[b] - at[a], 3) for k, (a, b) in spans.items() if a in at and b in at}


def install_front(env: dict[str, str], work: Path, criu: Path, hooks: str, node: Path) -> None:
    """The front (``WORK/route``) and the OCI hook (``WORK/hook/gpucr-hook``) as installed: one root-owned copy of
    gpucr's code (``WORK/route/lib``), never this tree (this bench and bench/gpu_restore.py)."""
    route, hook = work / "route", work / "hook/gpucr-hook"
    for cmd in (["front.sh", "route", "--dir", str(route), "--real-criu", str(criu), "--log-dir",
                 str(work / "front-log"), "--hooks", hooks, "--node-config", str(node)],
                ["hook.sh", "install", "--path", str(hook), "--prefix", str(route / "lib")]):
        r = sh(["bash", str(REPO / "install" / cmd[0]), *cmd[1:]],
               env={**env, "GPUCR_FRONT_PYTHON": sys.executable, "GPUCR_HOOK_PYTHON": sys.executable})
        if r.returncode:
            raise SystemExit(f"install/{cmd[0]} {cmd[1]} failed: {r.stdout}{r.stderr}")


def checkpoint_node(work: Path) -> tuple[Path, Path, Path, Path]:
    """``work`` afresh, root's alone, with a checkpoint root ``work/checkpoints`` (made) and gpucr's node config
    ``work/node.toml`` naming it (state and CRIU config dirs under ``work``, the hook where :func:`install_front` puts
    it): the route dir, the hook, the node config and the checkpoint root (bench/gpu_restore.py,
    bench/gpu_nvidia_runtime.py)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    route, hook, node, ckroot = work / "route", work / "hook/gpucr-hook", work / "node.toml", work / "checkpoints"
    ckroot.mkdir(mode=0o700)
    node.write_text(f'state_dir = "{work / "state"}"\ncriu_config_dir = "{work / "criu"}"\nhook_path = "{hook}"\n'
                    f'checkpoint_root = "{ckroot}"\n')
    return route, hook, node, ckroot


def run(args: argparse.Namespace, env: dict[str, str], res: dict[str, Any]) -> None:
    criu = ROOT / "bin/criu"
    res["versions"] = versions(criu)
    lock = network_lock(args.network_lock, criu)
    res["criu_network_lock"] = lock or "iptables (CRIU's default)"
    work = Path("/var/lib/gpucr-http-bench")  # not /tmp: the CRIU front refuses a route others could change
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    route, hook, node = work / "route", work / "hook/gpucr-hook", work / "node.toml"
    runc_conf = work / "runc.conf"  # the node's own runc CRIU config, merged by gpucr into each managed container's
    runc_conf.write_text(f"network-lock {lock}\n" if lock else "")
    node.write_text(f'state_dir = "{work / "state"}"\ncriu_config_dir = "{work / "criu"}"\nhook_path = "{hook}"\n'
                    f'runc_criu_config = "{runc_conf}"\n')
    install_front(env, work, criu, args.hooks, node)
    inst = Instance(env, "http", route / "path")
    plugin = None
    d = work / "data"
    port = free_port()
    ref = "localhost/gpucr-http-ckpt:1"
    extra = args.out / "extra"
    extra.mkdir(exist_ok=True)
    try:
        plugin = subprocess.Popen([sys.executable, "-m", "nri_plugin.cli.main", "plugin", "--socket",
                                   inst.info["nri_socket"], "--config", str(node), "--log-file",
                                   str(extra / "plugin.log")], env=env, cwd=REPO)
        time.sleep(3)
        t0 = time.monotonic()
        cri, pod, cid = start_server(inst, d, args.gib, port)
        ready = json.loads((d / "ready").read_text())
        res["server"] = {"port": port, "layers": ready["layers"], "width": WIDTH,
                         "gpu_bytes": ready["layers"] * (WIDTH * WIDTH + WIDTH) * 4,
                         "start_s": round(time.monotonic() - t0, 2), "gpu_apps": gpu_apps()}
        raw = request_bytes()
        r0 = once(port, raw)
        d0 = json.loads(get(port, "/v1/digest").split(b"\r\n\r\n", 1)[1])["digest"]
        res["request"] = {"bytes": len(raw), "sha256": sha(raw)}
        res["response"] = {"bytes": len(r0), "sha256": sha(r0), "head": r0.split(b"\r\n\r\n")[0].decode(),
                           "first_floats": list(struct.unpack("<4f", r0.split(b"\r\n\r\n", 1)[1][:16]))}
        res["weights_digest_before"] = d0
        (extra / "response.bin").write_bytes(r0)
        log(f"server up ({res['server']}); response {len(r0)} B sha256 {sha(r0)[:16]}")

        prober = Prober(port, raw, r0)
        prober.start()
        time.sleep(1.0)
        at_ckpt_start = client_log(d)
        t_ck = time.monotonic()
        log("ctr c checkpoint --task")
        res["checkpoint"] = inst.run_ctr("c", "checkpoint", "--task", "--rw", "--image", cid, ref,
                                         timeout=args.timeout)
        t_ck_end = time.monotonic()
        log(f"-> {res['checkpoint']}")
        time.sleep(1.5)
        prober.stop.set()
        prober.join(30)
        during = [s for s in prober.samples if s[0] + s[1] >= t_ck and s[0] <= t_ck_end]
        res["kept_open_across_checkpoint"] = {
            "local_port": prober.conn.local_port, "requests": len(prober.samples),
            "identical": all(s[2] for s in prober.samples), "error": prober.error,
            "after_checkpoint": sum(1 for s in prober.samples if s[0] > t_ck_end),
            "max_latency_s": round(max((s[1] for s in prober.samples), default=0.0), 3),
            "latency_during_checkpoint_s": [round(s[1], 3) for s in during]}
        prober.conn.close()
        r_after_ck = once(port, raw)
        res["identical_after_checkpoint_new_conn"] = r_after_ck == r0
        at_ckpt = client_log(d)
        time.sleep(1.0)
        if args.drop_caches:  # a timed restore reads its images from disk, not the page cache
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")

        log("kill: ctr t kill -s SIGKILL, ctr t rm")
        t1 = time.monotonic()
        res["kill"] = inst.run_ctr("t", "kill", "-s", "SIGKILL", cid, timeout=60)
        wait_for(lambda: not listening(port), 60, f"port {port} released")
        res["task_rm"] = inst.run_ctr("t", "rm", "-f", cid, timeout=60)
        res["kill"]["seconds_until_port_free"] = round(time.monotonic() - t1, 2)
        at_kill = client_log(d)
        res["gpu_apps_after_kill"] = gpu_apps()
        try:
            once(port, raw, timeout=5)
            res["answered_while_killed"] = True
        except OSError:
            res["answered_while_killed"] = False

        log("ctr c restore --live --rw")
        t2 = time.monotonic()
        res["restore"] = inst.run_ctr("c", "restore", "--live", "--rw", "infer-restored", ref, timeout=args.timeout)
        log(f"-> {res['restore']}")

        def answers() -> bool:
            try:
                return once(port, raw, timeout=60) == r0
            except OSError:
                return False
        wait_for(answers, 120, "the restored server")
        res["restore"]["seconds_from_restore_start_to_identical_answer"] = round(time.monotonic() - t2, 2)
        rs = [once(port, raw) for _ in range(5)]
        res["identical_after_restore"] = all(x == r0 for x in rs)
        res["weights_digest_after_restore"] = json.loads(get(port, "/v1/digest").split(b"\r\n\r\n", 1)[1])["digest"]
        res["weights_identical"] = res["weights_digest_after_restore"] == d0
        keep = Conn(port)
        res["identical_after_restore_keepalive_x5"] = all(keep.send(raw) == r0 for _ in range(5))
        keep.close()
        wait_for(lambda: len(client_log(d)) >= len(at_kill) + 8, 60, "the in-container client's answers")
        after = client_log(d)[len(at_kill):]
        good = sha(r0)
        ok_lines = [ln for ln in after if len(ln) == 4]
        res["in_container_connection"] = {
            "local_port_before": at_ckpt[-1][1] if at_ckpt else None,
            "lines_before_checkpoint": len(at_ckpt), "lines_before_kill": len(at_kill),
            "count_when_checkpoint_began": int(at_ckpt_start[-1][2]) if len(at_ckpt_start[-1]) == 4 else None,
            "count_after_checkpoint": int(at_ckpt[-1][2]) if at_ckpt and len(at_ckpt[-1]) == 4 else None,
            "after_restore": [ln[1:] for ln in after[:6]],
            "errors_after_restore": [" ".join(ln[1:]) for ln in after if ln[1] == "ERR"][:3],
            "same_connection": bool(ok_lines) and all(ln[1] == at_ckpt[-1][1] for ln in ok_lines)
            and int(ok_lines[0][2]) > 1,
            "identical": bool(ok_lines) and all(ln[3] == good for ln in ok_lines),
            "identical_before": all(ln[3] == good for ln in at_kill if len(ln) == 4)}
        res["gpu_apps_after_restore"] = gpu_apps()
        ic = res["in_container_connection"]
        res["verdict"] = "PASS" if (res["checkpoint"]["rc"] == 0 and res["restore"]["rc"] == 0
                                    and res["kept_open_across_checkpoint"]["identical"]
                                    and res["identical_after_restore"] and res["identical_after_restore_keepalive_x5"]
                                    and res["weights_identical"] and ic["same_connection"] and ic["identical"]
                                    and not res["answered_while_killed"]) else "FAIL"
        log(f"restored: {json.dumps(res['in_container_connection'])}")
        sh([*inst.ctr, "t", "kill", "-s", "SIGKILL", "infer-restored"], env=inst.env)
    finally:
        if plugin is not None:
            plugin.terminate()
        res["front_log"] = front_excerpt(work / "front-log")
        res["container_criu_config"] = [ln for f in sorted((work / "criu").glob("*.conf"))
                                        for ln in f.read_text().splitlines() if ln and not ln.startswith("#")]
        res["phases"] = phases(work / "front-log/criu-front.log")
        for f in (work / "front-log").glob("*"):
            if f.is_file():
                shutil.copy(f, extra / f"front-{f.name}")
        for f in (d / "logs/server.log", d / "client.log"):
            if f.exists():
                shutil.copy(f, extra / f.name)
        inst.stop()


def markdown(res: dict[str, Any]) -> str:
    v = res.get("versions", {})
    s = res.get("server", {})
    kc = res.get("kept_open_across_checkpoint", {})
    ic = res.get("in_container_connection", {})

    def t(r: dict[str, Any] | None) -> str:
        if not r:
            return "-"
        if r.get("hung"):
            return f"hung (killed after {r['seconds']} s)"
        return f"{'ok' if r.get('rc') == 0 else 'FAILED'} in {r['seconds']} s"
    lines = [
        f"- verdict: **{res.get('verdict', 'FAIL')}** (same request, same response bytes after checkpoint, kill and "
        "restore; the in-container connection survived)",
        f"- date: {res['date']}; machine: {res['host']} ({v.get('gpu')}), kernel {v.get('kernel')}, "
        f"{v.get('cpus')} CPUs; THP `{v.get('thp')}`",
        f"- {v.get('containerd')}; {v.get('runc')}; CRIU {v.get('criu')}; torch {v.get('torch')}; "
        f"CRIU network lock: {res.get('criu_network_lock')}",
        f"- code: {res.get('code')}",
        f"- workload: a host-network CRI pod (`gpucr.io/checkpoint: enabled`, `gpucr.io/tcp-established: \"true\"`) "
        f"serving an MLP of {s.get('layers')} x {s.get('width')}x{s.get('width')} random fp32 layers "
        f"({s.get('gpu_bytes', 0) / 2**30:.2f} GiB on the GPU; nvidia-smi: {s.get('gpu_apps')}) with `http.server` on "
        f"127.0.0.1:{s.get('port')}; request {res.get('request', {}).get('bytes')} B, response "
        f"{res.get('response', {}).get('bytes')} B (sha256 {res.get('response', {}).get('sha256', '')[:16]}...)",
        "", "| step | outcome |", "|---|---|",
        f"| `ctr c checkpoint --task` (through gpucr's front) | {t(res.get('checkpoint'))} (gpucr's front: "
        f"{res.get('phases', {}).get('front_dump_total')} s; the rest is outside the front: runc and containerd) |",
        f"| a connection kept open across the checkpoint: {kc.get('requests')} requests every 0.1 s | "
        f"all identical: {kc.get('identical')}; {kc.get('after_checkpoint')} after the checkpoint; longest wait "
        f"{kc.get('max_latency_s')} s; error: {kc.get('error')} |",
        f"| new connection after the checkpoint | identical: {res.get('identical_after_checkpoint_new_conn')} |",
        f"| `ctr t kill -s SIGKILL` + `ctr t rm` | {t(res.get('kill'))}; port free after "
        f"{res.get('kill', {}).get('seconds_until_port_free')} s; answered while killed: "
        f"{res.get('answered_while_killed')}; nvidia-smi after: `{res.get('gpu_apps_after_kill') or 'no process'}` |",
        f"| `ctr c restore --live --rw` (through gpucr's front) | {t(res.get('restore'))}; first identical answer "
        f"{res.get('restore', {}).get('seconds_from_restore_start_to_identical_answer')} s after the restore began |",
        f"| the same request after the restore (5 new connections; 5 on one kept-open connection) | identical: "
        f"{res.get('identical_after_restore')}, {res.get('identical_after_restore_keepalive_x5')} |",
        f"| GPU weights digest after the restore | identical: {res.get('weights_identical')} |",
        f"| in-container client, one connection across checkpoint, kill and restore | same connection (local port "
        f"{ic.get('local_port_before')}, count went on): {ic.get('same_connection')}; answers identical: "
        f"{ic.get('identical')}; first answers after restore (port, n, sha): "
        f"{[(a[0], a[1]) for a in ic.get('after_restore', []) if len(a) == 3][:4]}; errors: "
        f"{ic.get('errors_after_restore')} |",
        f"| nvidia-smi after the restore | `{res.get('gpu_apps_after_restore')}` |",
        "", "Where the time went, from the front's log (s): " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in res.get("phases", {}).items()) + ".",
        f"The in-container client had answer {ic.get('count_when_checkpoint_began')} when the checkpoint began and "
        f"{ic.get('count_after_checkpoint')} after it; after the restore its connection answered from "
        f"{(ic.get('after_restore') or [[None, None]])[0][1]} on (the answers between checkpoint and kill are lost "
        "with the killed container).",
        "", f"The container's CRIU config as gpucr wrote it (comments left out): "
        f"`{'; '.join(res.get('container_criu_config', []))}`",
        "", "gpucr's CRIU front (excerpt):", "", "```", *res.get("front_log", [])[:20], "```"]
    if res.get("error"):
        lines += ["", f"**Run failed**: {res['error']}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--stage", type=Path, required=True)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--hooks", default="nri_plugin.handlers.front_cuda:make")
    ap.add_argument("--network-lock", default="auto", choices=("auto", "iptables", "nftables", "skip"))
    ap.add_argument("--code", default="", help="which code ran (e.g. the commit), for the summary")
    ap.add_argument("--no-drop-caches", dest="drop_caches", action="store_false",
                    help="keep the page cache before the restore")
    return pod_bench(ap.parse_args(), "gpu_http", run, markdown, error_chars=2000)


def pod_bench(args: argparse.Namespace, name: str, run: Callable[[argparse.Namespace, dict[str, str], dict[str, Any]],
              None], markdown: Callable[[dict[str, Any]], str], error_chars: int) -> int:
    """The pod benches' frame (this one and bench/gpu_restore.py): the stage set up (``args.stage``), ``run`` filling
    the results, and whatever happens ``OUT/NAME.json`` and ``OUT/NAME.md`` written and the results printed (the
    front's log left out); a failure is recorded in the results' ``error`` and raised again."""
    args.out.mkdir(parents=True, exist_ok=True)
    env = setup(args.stage)
    os.environ.update({k: env[k] for k in ("GPUCR_TEST_ROOT", "PYTHONPATH", "PATH")})
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
                           "gib": args.gib, "code": args.code}
    try:
        run(args, env, res)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failed step is reported with what was measured
        res["error"] = f"{type(exc).__name__}: {exc}"[-error_chars:]
        raise
    finally:
        (args.out / f"{name}.json").write_text(json.dumps(res, indent=1))
        (args.out / f"{name}.md").write_text(markdown(res))
        print(json.dumps({k: v for k, v in res.items() if k != "front_log"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

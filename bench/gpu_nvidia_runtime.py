"""A PyTorch pod on a runtime handler ``nvidia`` (NVIDIA's nvidia-container-runtime in front of runc, routed through
gpucr's runc wrapper) checkpointed through CRI and restored into a NEW pod with ``gpucr.io/restore-from`` (run on
a GPU machine).

    python3 bench/gpu_nvidia_runtime.py OUT_DIR --stage STAGE --toolkit DIR [--gib 1] [--timeout 240]
        [--budget 540] [--mode auto] [--disable-hooks auto|none|all] [--code TEXT]

STAGE is bench/_stage.py's (``debs-ctrd/``, ``images/``, gpucr's .debs in STAGE/pkgs); DIR holds NVIDIA's
``nvidia-container-runtime``, ``nvidia-ctk`` and ``nvidia-cdi-hook`` built from nvidia-container-toolkit (not
gpucr's; the machine has no NVIDIA toolkit), or is a .tar.xz of them. The generated ``_pb`` modules must be in the tree.

1. The toolkit's binaries go to /usr/bin (where its config defaults look for nvidia-cdi-hook and nvidia-ctk) and
   /etc/nvidia-container-runtime/config.toml gets mode MODE (``auto``: jit-cdi on an NVML machine, internal/info/
   auto.go), runtimes ["runc"] and a debug log; all removed afterwards (only what this run added). For mode ``cdi``
   a CDI spec is generated with ``nvidia-ctk cdi generate`` into /etc/cdi/nvidia.yaml (jit-cdi needs none).
2. A private containerd 2.1.9 (install/containerd.sh) with a runtime handler ``nvidia`` whose BinaryName is
   /usr/bin/nvidia-container-runtime; ``install/front.sh install --runtime nvidia`` (what ``gpucr setup --apply
   --runtime nvidia`` runs, here from this checkout so the branch's wrapper is measured) makes the handler run
   gpucr's wrapper, which keeps nvidia-container-runtime next in the chain; containerd restarted; gpucr's plugin.
3. A pod on handler ``nvidia`` (``gpucr.io/checkpoint: enabled``; NVIDIA_VISIBLE_DEVICES=GPU 0's UUID, no device
   nodes of its own: the runtime injects them) trains an MLP holding GIB of torch.rand; its bundle's config.json is
   kept. CRI CheckpointContainer, ``gpucr seal``, the original removed.
4. A NEW pod (handler ``nvidia``) with ``gpucr.io/restore-from``: the restored container's config.json (polled from
   its bundle while it starts, so it is kept even when the restore fails) is compared with the original's (mounts,
   devices, hooks, NVIDIA env); digest bit-identical, step counter and loss going on, exec, stop, remove.
If the first pod cannot start with the hooks NVIDIA adds (``--disable-hooks auto``: e.g. update-ldcache writing
into the container's /etc, bound read-only from the host here), it is tried once more with ``nvcdi-disable-hooks
= ["all"]`` and both attempts are reported. OUT_DIR/gpu_nvidia_runtime.{json,md} are written whatever happens
(also at ``--budget`` seconds); logs under OUT_DIR/extra/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_front import REPO, ROOT, Instance, log, setup, sh  # noqa: E402
from gpu_http import checkpoint_node, front_excerpt, gpu_apps, versions, wait_for  # noqa: E402
from gpu_restore import apps_by_gpu, gpu_uuids, losses, train_config  # noqa: E402

from demo.gpu_pod import verify  # noqa: E402

NAME = "nv-train-ck"
HANDLER = "nvidia"
TOOLS = ("nvidia-container-runtime", "nvidia-ctk", "nvidia-cdi-hook")
NV_CONF = Path("/etc/nvidia-container-runtime/config.toml")
CDI_SPEC = Path("/etc/cdi/nvidia.yaml")
WORK = Path("/var/lib/gpucr-nvidia-bench")  # not /tmp: the CRIU front refuses a route others could change


class Budget(Exception):
    """The run's --budget ran out."""


class Placed:
    """Files this run puts on the machine (toolkit, its config, a CDI spec), removed or put back afterwards."""

    def __init__(self) -> None:
        self.added: list[Path] = []
        self.dirs: list[Path] = []
        self.saved: dict[Path, bytes] = {}

    def put(self, path: Path, data: bytes, mode: int) -> None:
        if path.exists():
            self.saved.setdefault(path, path.read_bytes())
        elif path not in self.added:
            self.added.append(path)
        if not path.parent.exists():
            path.parent.mkdir(parents=True)
            self.dirs.append(path.parent)
        path.write_bytes(data)
        path.chmod(mode)

    def undo(self) -> None:
        for p in self.added:
            p.unlink(missing_ok=True)
        for p, data in self.saved.items():
            p.write_bytes(data)
        for d in reversed(self.dirs):
            try:
                d.rmdir()
            except OSError:
                pass


def nv_config(mode: str, log_file: Path, disable_hooks: list[str]) -> str:
    """nvidia-container-runtime's config.toml (keys as api/config/v1 reads them)."""
    hooks = (f"\n[nvidia-container-runtime.modes.jit-cdi]\nnvcdi-disable-hooks = {json.dumps(disable_hooks)}\n"
             "[features]\ndisable-cuda-compat-lib-hook = true\n") if disable_hooks else ""
    return (f'[nvidia-container-runtime]\nmode = "{mode}"\nruntimes = ["runc"]\nlog-level = "debug"\n'
            f'debug = "{log_file}"\n[nvidia-ctk]\npath = "/usr/bin/nvidia-ctk"\n{hooks}')


def extra_config(route_root: Path) -> str:
    t = "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes." + HANDLER
    return (f"[{t}]\n  runtime_type = 'io.containerd.runc.v2'\n[{t}.options]\n"
            f"  BinaryName = '/usr/bin/nvidia-container-runtime'\n  Root = '{route_root}'\n  SystemdCgroup = false\n")


def bundle_config(inst: Instance, cid: str) -> Path:
    return Path(inst.info["state_dir"]) / "io.containerd.runtime.v2.task/k8s.io" / cid / "config.json"


class SpecWatch:
    """Copies a container's bundle config.json whenever it changes while the container is created and started
    (the runtime edits it in place; a failed start removes the bundle)."""

    def __init__(self, inst: Instance, out: Path) -> None:
        self.inst, self.out, self.cid = inst, out, ""
        self.stop = threading.Event()
        self.versions = 0
        self.t = threading.Thread(target=self._run, daemon=True)

    def start(self, cid: str) -> None:
        self.cid = cid
        self.t.start()

    def _run(self) -> None:
        last = b""
        while not self.stop.is_set():
            try:
                data = bundle_config(self.inst, self.cid).read_bytes()
            except OSError:
                data = b""
            if data and data != last:
                try:
                    json.loads(data)
                except ValueError:
                    continue
                last = data
                self.versions += 1
                self.out.write_bytes(data)
            time.sleep(0.02)

    def done(self) -> None:
        self.stop.set()
        if self.t.is_alive():
            self.t.join(2)


def spec_parts(spec: dict[str, Any]) -> dict[str, list[str]]:
    linux = spec.get("linux") or {}
    hooks = spec.get("hooks") or {}
    return {
        "mounts": sorted(f"{m.get('destination')} <- {m.get('source')} ({m.get('type')})"
                         for m in spec.get("mounts") or []),
        "devices": sorted(f"{d.get('path')} {d.get('type')} {d.get('major')}:{d.get('minor')}"
                          for d in linux.get("devices") or []),
        "device_rules": sorted(json.dumps(r, sort_keys=True) for r in (linux.get("resources") or {}).get("devices")
                               or []),
        "hooks": sorted(f"{stage}: {' '.join(h.get('args') or [h.get('path', '')])}"
                        for stage, hs in hooks.items() for h in hs or []),
        "nvidia_env": sorted(e for e in (spec.get("process") or {}).get("env") or [] if e.startswith("NVIDIA_")),
    }


def spec_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    pa, pb_ = spec_parts(a), spec_parts(b)
    return {k: {"only_original": sorted(set(pa[k]) - set(pb_[k])), "only_restored": sorted(set(pb_[k]) - set(pa[k])),
                "both": len(set(pa[k]) & set(pb_[k]))} for k in pa}


def nvidia_train_config(d: Path, gib: float, ann: dict[str, str], gpu: str) -> Any:
    """The training container without the GPU's device nodes (the NVIDIA runtime injects them and its driver's
    libraries) and without the host's /etc bound over the image: NVIDIA's CDI edits mount files under /etc (e.g.
    /etc/vulkan/icd.d), which needs the rootfs's own, writable /etc (the hostroot image carries a copy of the host's)."""
    conf = train_config(d, gib, ann, gpu)
    del conf.devices[:]
    keep = [m for m in conf.mounts if not (m.container_path == "/etc" or m.container_path.startswith("/etc/"))]
    del conf.mounts[:]
    conf.mounts.extend(keep)
    return conf


def start_pod(cri: Any, inst: Instance, name: str, d: Path, gib: float, ann: dict[str, str], gpu: str,
              logs: str) -> tuple[str, str, Any]:
    from nri_plugin.cri import pod_config

    pcfg = pod_config(name, cgroup_parent=inst.info["cgroup_parent"], annotations={"gpucr.io/checkpoint": "enabled"},
                      log_directory=str(d / logs))
    pod = cri.run_pod_sandbox(pcfg, HANDLER)
    conf = nvidia_train_config(d, gib, ann, gpu)
    cid = cri.create_container(pod, conf, pcfg)
    return pod, cid, pcfg


def remove_pod(cri: Any, pod: str) -> None:
    for c in cri.list_containers(pod):
        for call in (lambda: cri.stop_container(c.id, 0), lambda: cri.remove_container(c.id)):
            try:
                call()
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
    for call in (lambda: cri.stop_pod_sandbox(pod), lambda: cri.remove_pod_sandbox(pod)):
        try:
            call()
        except Exception:  # noqa: BLE001
            pass


def toolkit_dir(path: Path) -> Path:
    """--toolkit: a dir holding the binaries, or a .tar.xz of them (smaller to carry), extracted under WORK."""
    if path.is_dir():
        return path
    if path.is_file():
        out = WORK / "toolkit"
        out.mkdir(parents=True, exist_ok=True)
        r = sh(["tar", "-xJf", str(path), "-C", str(out)])
        if r.returncode:
            raise SystemExit(f"--toolkit {path}: tar -xJf failed: {r.stderr[-300:]}")
        return out
    raise SystemExit(f"--toolkit {path} is neither a directory nor a .tar.xz")


def install_toolkit(args: argparse.Namespace, placed: Placed, res: dict[str, Any], disable: list[str]) -> None:
    where = toolkit_dir(args.toolkit)
    for t in TOOLS:
        src = where / t
        if not src.is_file():
            raise SystemExit(f"--toolkit {args.toolkit}: {t} is missing (build nvidia-container-toolkit's "
                             "cmd/nvidia-container-runtime, cmd/nvidia-ctk, cmd/nvidia-cdi-hook)")
        placed.put(Path("/usr/bin") / t, src.read_bytes(), 0o755)
    write_nv_config(args, placed, disable)
    res["toolkit"] = {t: (sh([f"/usr/bin/{t}", "--version"]).stdout.strip().splitlines() or [""])[0] for t in TOOLS}
    r = sh(["/usr/bin/nvidia-ctk", "cdi", "generate", "--output", str(args.out / "extra/nvidia-cdi.yaml")],
           timeout=120)
    res["cdi_generate"] = {"rc": r.returncode, "stderr": r.stderr[-1500:]}
    if args.mode == "cdi":
        if r.returncode:
            raise SystemExit(f"nvidia-ctk cdi generate failed: {r.stderr[-500:]}")
        placed.put(CDI_SPEC, (args.out / "extra/nvidia-cdi.yaml").read_bytes(), 0o644)


def write_nv_config(args: argparse.Namespace, placed: Placed, disable: list[str]) -> None:
    placed.put(NV_CONF, nv_config(args.mode, args.out / "extra/nvidia-container-runtime.log", disable).encode(),
               0o644)


def run(args: argparse.Namespace, env: dict[str, str], res: dict[str, Any], placed: Placed) -> None:
    from nri_plugin.cri import CriClient

    criu = Path(env["GPUCR_TEST_ROOT"]) / "bin/criu"
    res["versions"] = versions(criu)
    extra = args.out / "extra"
    route, hook, node, ckroot = checkpoint_node(WORK)
    disable = ["all"] if args.disable_hooks == "all" else []
    install_toolkit(args, placed, res, disable)
    res["step"] = "containerd"
    (WORK / "extra.toml").write_text(extra_config(WORK / "runc-nvidia"))
    inst = Instance({**env, "GPUCR_CONTAINERD_EXTRA_CONFIG": str(WORK / "extra.toml")}, args.instance, None)
    plugin = None
    d = WORK / "data"
    gpucr = [sys.executable, "-m", "nri_plugin.cli.main"]
    watch: SpecWatch | None = None
    try:
        res["step"] = "route"
        conf = Path(inst.info["dir"]) / "config.toml"
        fenv = {**env, "GPUCR_FRONT_PYTHON": sys.executable, "GPUCR_HOOK_PYTHON": sys.executable}
        r = sh(["bash", str(REPO / "install/front.sh"), "install", "--config", str(conf), "--runtime", HANDLER,
                "--dir", str(route), "--prefix", str(route / "lib"), "--real-criu", str(criu), "--log-dir",
                str(WORK / "front-log"), "--node-config", str(node)], env=fenv)
        res["front_install"] = {"rc": r.returncode, "stderr": r.stderr[-1500:]}
        if r.returncode:
            raise SystemExit(f"install/front.sh install --runtime {HANDLER} failed: {r.stderr[-800:]}")
        r = sh(["bash", str(REPO / "install/hook.sh"), "install", "--path", str(hook), "--prefix", str(route / "lib")],
               env=fenv)
        if r.returncode:
            raise SystemExit(f"install/hook.sh install failed: {r.stderr[-800:]}")
        r = sh(["bash", str(REPO / "install/front.sh"), "status", "--config", str(conf), "--runtime", HANDLER],
               env=fenv)
        res["chain"] = (r.stdout + r.stderr).strip()
        shutil.copy(conf, extra / "containerd-config.toml")
        r = sh(["bash", str(REPO / "install/containerd.sh"), "restart", "2.1"], env=inst.env)
        if r.returncode:
            raise SystemExit(f"containerd restart failed: {r.stderr[-800:]}")
        log(f"chain: {res['chain']}")
        plugin = subprocess.Popen([*gpucr, "plugin", "--socket", inst.info["nri_socket"], "--config", str(node),
                                   "--log-file", str(extra / "plugin.log")], env=env, cwd=REPO)
        time.sleep(3)
        cri = CriClient(inst.info["address"], timeout_s=300)
        try:
            uuids = gpu_uuids()
        except OSError as exc:  # no nvidia-smi: a CPU machine (--local-root), the runtime's create fails later
            uuids, res["nvidia_smi"] = [], str(exc)
        res["gpu_uuids"] = uuids
        gpu = uuids[0] if uuids else "all"

        # -- 1. the training pod through nvidia-container-runtime --------------------------------------------------
        res["step"] = "training pod"
        res["attempts"] = []
        while True:
            pod, cid, _ = start_pod(cri, inst, "nv-train", d, args.gib, {}, gpu, "logs")
            try:
                cri.start_container(cid)
                res["attempts"].append({"disable_hooks": disable, "ok": True})
                break
            except Exception as exc:  # noqa: BLE001 - reported, maybe retried without NVIDIA's hooks
                res["attempts"].append({"disable_hooks": disable, "ok": False, "error": str(exc)[-1500:]})
                remove_pod(cri, pod)
                if args.disable_hooks != "auto" or disable:
                    raise
                disable = ["all"]
                write_nv_config(args, placed, disable)
                log(f"the pod failed to start with NVIDIA's hooks ({str(exc)[-300:]}); again without them")
        shutil.copy(bundle_config(inst, cid), extra / "config-original.json")
        wait_for(lambda: (d / "ready").exists() and len(losses(d)) >= 20, 240, "the training pod")
        ready = json.loads((d / "ready").read_text())
        res["original"] = {"container": cid, "pid": ready["pid"], "digest": ready["digest"], "gpu_apps": gpu_apps(),
                           "apps_by_gpu": apps_by_gpu()}
        log(f"training: {res['original']}")

        # -- 2. CRI CheckpointContainer + gpucr seal ---------------------------------------------------------------
        res["step"] = "checkpoint"
        ck = ckroot / NAME
        ck.mkdir(mode=0o700)
        lo = losses(d)[-1][0]
        t0 = time.monotonic()
        cri.checkpoint_container(cid, str(ck / "checkpoint.tar"), timeout_s=int(args.timeout))
        hi = losses(d)[-1][0]
        res["checkpoint"] = {"seconds": round(time.monotonic() - t0, 2), "steps_during": [lo, hi],
                             "archive_bytes": (ck / "checkpoint.tar").stat().st_size}
        r = sh([*gpucr, "seal", str(ck), "--config", str(node), "--json"], env=env, cwd=REPO)
        if r.returncode:
            raise SystemExit(f"gpucr seal failed: {r.stderr[-800:]}")
        res["seal"] = json.loads(r.stdout)
        cri.stop_container(cid, 0)
        cri.remove_container(cid)
        remove_pod(cri, pod)
        before = losses(d)
        res["original"]["last_step"] = before[-1][0]
        for f in ("ready", "step"):
            (d / f).unlink(missing_ok=True)

        # -- 3. a new pod restored from the annotation, through the same handler -----------------------------------
        res["step"] = "restore"
        from nri_plugin.cri import pod_config
        pcfg2 = pod_config("nv-train-restored", cgroup_parent=inst.info["cgroup_parent"],
                           annotations={"gpucr.io/checkpoint": "enabled"}, log_directory=str(d / "logs2"))
        pod2 = cri.run_pod_sandbox(pcfg2, HANDLER)
        conf2 = nvidia_train_config(d, args.gib, {"gpucr.io/restore-from": NAME}, gpu)
        new = cri.create_container(pod2, conf2, pcfg2)
        watch = SpecWatch(inst, extra / "config-restored.json")
        watch.start(new)
        t1 = time.monotonic()
        try:
            cri.start_container(new)
        finally:
            time.sleep(0.3)
            watch.done()
            res["restored_config_versions_seen"] = watch.versions
            compare(res, extra)
        res["restore_start_s"] = round(time.monotonic() - t1, 2)
        wait_for(lambda: len(losses(d)) >= len(before) + 200, 180, "200 restored steps")
        status, info = cri.container_status(new, verbose=True)
        npid = int(info.get("info", {}).get("pid", 0)) if isinstance(info.get("info"), dict) else 0
        digest = verify(d, "restored")
        after = losses(d)[len(before):]
        first = after[0][0]
        ex = cri.exec_sync(new, ["/bin/sh", "-c", "ls /dev/nvidia* | head -3; echo alive"])
        k = min(50, len(after) // 2)
        rs = res["restored"] = {
            "container": new, "pid": npid, "state": int(status.state),
            "exec": [ex.exit_code, ex.stdout.decode(errors="replace").strip()],
            "first_step": first, "continues_from_checkpoint": lo <= first - 1 <= hi,
            "steps_consecutive": [s for s, _ in after] == list(range(first, first + len(after))),
            "digest": digest, "digest_identical": digest == res["original"]["digest"],
            "loss_decreasing": sum(v for _, v in after[-k:]) / k < sum(v for _, v in after[:k]) / k,
            "last_step": after[-1][0], "gpu_apps": gpu_apps(), "apps_by_gpu": apps_by_gpu()}
        rs["front_restore_success"] = any("RESTORE success=True" in ln for ln in front_excerpt(WORK / "front-log"))
        cri.stop_container(new, 0)
        cri.remove_container(new)
        remove_pod(cri, pod2)
        res["step"] = "done"
        res["verdict"] = "PASS" if (rs["digest_identical"] and rs["continues_from_checkpoint"]
                                    and rs["steps_consecutive"] and rs["loss_decreasing"] and rs["state"] == 1
                                    and ex.exit_code == 0 and rs["front_restore_success"]) else "FAIL"
    finally:
        if watch is not None:
            watch.done()
        if plugin is not None:
            plugin.terminate()
        res["front_log"] = front_excerpt(WORK / "front-log")
        for f in (WORK / "front-log").glob("*"):
            if f.is_file():
                shutil.copy(f, extra / f"front-{f.name}")
        for f in (d / "logs/train.log", d / "logs2/train.log", d / "loss.log", Path(inst.info["log"])):
            if f.exists():
                shutil.copy(f, extra / f"{f.parent.name}-{f.name}")
        for f in sorted((ckroot / ".restore").rglob("restore.log")) if (ckroot / ".restore").exists() else []:
            shutil.copy(f, extra / "criu-restore.log")
        inst.stop()


def compare(res: dict[str, Any], extra: Path) -> None:
    a, b = extra / "config-original.json", extra / "config-restored.json"
    if a.exists() and b.exists():
        res["config_diff"] = spec_diff(json.loads(a.read_text()), json.loads(b.read_text()))
    else:
        res["config_diff"] = {"missing": [str(p) for p in (a, b) if not p.exists()]}


def markdown(res: dict[str, Any]) -> str:
    v, rs = res.get("versions", {}), res.get("restored", {})
    L = [f"- verdict: **{res.get('verdict', 'FAIL')}** (a pod on handler `nvidia`: nvidia-container-runtime "
         f"(mode {res.get('mode')}) behind gpucr's runc wrapper; CRI checkpoint, restored into a new pod via "
         "`gpucr.io/restore-from`)",
         f"- date {res.get('date')}; {res.get('host')} ({v.get('gpu')}); {v.get('containerd')}; {v.get('runc')}; "
         f"CRIU {v.get('criu')}; code {res.get('code')}",
         f"- toolkit: {res.get('toolkit')}", "- chain (install/front.sh status):", "", "```",
         res.get("chain", ""), "```", "",
         f"- first-pod attempts: {json.dumps(res.get('attempts'))}",
         f"- checkpoint: {res.get('checkpoint')}",
         f"- restore: start {res.get('restore_start_s')} s; digest identical {rs.get('digest_identical')}; continues "
         f"{rs.get('continues_from_checkpoint')}; consecutive {rs.get('steps_consecutive')}; loss decreasing "
         f"{rs.get('loss_decreasing')}; exec {rs.get('exec')}; front RESTORE success {rs.get('front_restore_success')}",
         "", "## config.json: original vs restored", ""]
    for k, dd in (res.get("config_diff") or {}).items():
        if isinstance(dd, dict):
            L.append(f"- {k}: {dd.get('both')} in both; only original: {dd.get('only_original')}; only restored: "
                     f"{dd.get('only_restored')}")
        else:
            L.append(f"- {k}: {dd}")
    if res.get("error"):
        L += ["", f"**Run failed at step {res.get('step')}**: {res['error']}"]
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n", 1)[0].split()))
    ap.add_argument("out", type=Path)
    ap.add_argument("--stage", type=Path, required=True, help="bench/_stage.py's stage dir")
    ap.add_argument("--toolkit", type=Path, required=True,
                    help="dir with nvidia-container-runtime, nvidia-ctk, nvidia-cdi-hook")
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds CRI CheckpointContainer may take")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run; results written anyway")
    ap.add_argument("--mode", default="auto", choices=["auto", "jit-cdi", "cdi"],
                    help="nvidia-container-runtime's mode (auto: jit-cdi on an NVML machine)")
    ap.add_argument("--disable-hooks", default="auto", choices=["auto", "none", "all"],
                    help="NVIDIA's CDI hooks: auto = keep them, drop them all if the first pod cannot start")
    ap.add_argument("--code", default="")
    ap.add_argument("--local-root", type=Path, default=None,
                    help="CPU check only: install no packages, use this test rig's GPUCR_TEST_ROOT (install/deps.sh) "
                         "for containerd and criu; the run stops where the runtime needs NVML")
    ap.add_argument("--instance", default="nvidia", help="GPUCR_INSTANCE of the private containerd")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "extra").mkdir(exist_ok=True)
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
                           "gib": args.gib, "code": args.code, "mode": args.mode, "step": "setup"}
    placed = Placed()

    def out_of_time(*_: Any) -> None:
        raise Budget(f"--budget {args.budget:.0f} s ran out")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.budget))
    rc = 1
    try:
        if args.local_root:
            env = {**os.environ, "GPUCR_TEST_ROOT": str(args.local_root), "PYTHONPATH": str(REPO),
                   "PYTHONUNBUFFERED": "1"}
            (ROOT / "images").mkdir(parents=True, exist_ok=True)  # gpu_front.Instance builds the hostroot image there
        else:
            env = setup(args.stage)
        os.environ.update({k: env[k] for k in ("GPUCR_TEST_ROOT", "PYTHONPATH", "PATH")})
        run(args, env, res, placed)
        rc = 0 if res.get("verdict") == "PASS" else 1
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failed step is reported with what was measured
        res["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
    finally:
        signal.alarm(0)
        placed.undo()
        (args.out / "gpu_nvidia_runtime.json").write_text(json.dumps(res, indent=1))
        (args.out / "gpu_nvidia_runtime.md").write_text(markdown(res))
        print(json.dumps({k: x for k, x in res.items() if k != "front_log"}, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())

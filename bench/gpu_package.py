#!/usr/bin/env python3
"""gpucr from its packages on a GPU node, as a user installs it: install, setup, doctor, a GPU pod checkpointed
with ``ctr c checkpoint --task`` and restored, revert, purge, nothing left (issue 13's H200 must-show).

Usage (root, on a GPU node without gpucr, with a Python that has torch, e.g. the H200's /opt/torch/.venv):

    python3 bench/gpu_package.py OUT_DIR --debs DIR --stage STAGE [--gib 1]

DIR holds ``make package``'s gpucr_*.deb and gpucr-criu_*.deb; STAGE bench/_stage.py's ``debs-ctrd/`` (containerd
2.1.9 and runc from Debian: the node's container runtime, a prerequisite the docs leave to the user) and
``images/pause.tar`` (no registry is reachable: it is tagged as containerd's default sandbox image).

1. ``apt-get install`` of containerd and runc, then of gpucr and gpucr-criu (bench/_stage.py); containerd started as
   its packaged unit's ExecStart does (``/usr/bin/containerd`` on the package's /etc/containerd/config.toml; no
   systemd on the H200, so a unit-less daemon);
2. ``gpucr doctor`` as found (what is missing, with the fixes), then what it says: ``gpucr setup --apply``,
   containerd restarted, gpucr's plugin started as gpucr-plugin.service's ExecStart runs it, and ``network-lock
   nftables`` in /etc/criu/runc.conf where the node has no iptables-restore, ``restrict_oom_score_adj = true`` in
   containerd's config where root cannot lower oom_score_adj (both as the doctor's fix lines say); ``gpucr doctor``
   again: every check;
3. a CRI pod opted in with ``gpucr.io/checkpoint: enabled`` trains an MLP on the GPU holding GIB of torch.rand data
   (demo/gpu_pod.py); ``ctr c checkpoint --task`` while it trains, the container killed, ``ctr c restore``: the GPU
   data's digest equals the one taken at start (bit-identical) and the step counter goes on from the checkpoint;
   the installed front's log shows the CUDA lock/checkpoint around the dump and restore/unlock after the restore;
4. ``gpucr setup --revert`` (containerd's config byte-identical), ``apt-get purge gpucr gpucr-criu``: no package
   file, /usr/lib/gpucr, /etc/gpucr, /var/log/gpucr, nothing new in /var/lib/gpucr, the same dpkg diversions.
Writes OUT_DIR/gpu_package.json (after every step) and OUT_DIR/gpu_package.md; the logs go to OUT_DIR/extra/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _stage import GPUCR_LIB, find_debs, install_containerd, install_gpucr, out_of, package_site, sh  # noqa: E402

CONFIG = Path("/etc/containerd/config.toml")
ADDRESS = "/run/containerd/containerd.sock"
NRI_SOCKET = "/var/run/nri/nri.sock"
RUNC_CRIU_CONF = Path("/etc/criu/runc.conf")
FRONT_LOG = Path("/var/log/gpucr/criu-front.log")
PATHS = ["/usr/lib/gpucr", "/usr/libexec/gpucr", "/etc/gpucr", "/usr/bin/gpucr", "/var/log/gpucr",
         "/usr/lib/systemd/system/gpucr-plugin.service"]
STATE = "/var/lib/gpucr"
#: systemd's default PATH for a unit (containerd.service and gpucr-plugin.service set none)
UNIT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def tree(top: str) -> set[str]:
    return {os.path.join(d, n) for d, ds, fs in os.walk(top) for n in ds + fs} | ({top} if os.path.lexists(top) else set())


def diversions() -> list[str]:
    return sorted(sh(["dpkg-divert", "--list"]).stdout.splitlines())


class Run:
    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out, self.args = out, args
        self.extra = out / "extra"
        self.extra.mkdir(parents=True, exist_ok=True)
        self.res: dict[str, Any] = {"argv": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "gib": args.gib,
                                    "steps": []}
        self.containerd: subprocess.Popen[bytes] | None = None
        self.plugin: subprocess.Popen[bytes] | None = None

    def save(self) -> None:
        (self.out / "gpu_package.json").write_text(json.dumps(self.res, indent=1, default=str))

    def step(self, name: str, ok: bool, detail: str = "", fatal: bool = True, **data: Any) -> None:
        self.res["steps"].append({"step": name, "ok": bool(ok), "detail": detail, "t_s": round(time.monotonic() - T0, 1),
                                  **data})
        say(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        self.save()
        if not ok and fatal:
            raise RuntimeError(f"{name}: {detail}")

    def run(self, name: str, cmd: list[str], timeout: float = 300, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        t = time.monotonic()
        r = sh(cmd, timeout=timeout, env=env)
        s = round(time.monotonic() - t, 2)
        text = out_of(r)
        self.res.setdefault("commands", []).append({"name": name, "cmd": " ".join(cmd), "rc": r.returncode, "s": s,
                                                    "out": text[-4000:]})
        say(f"{name}: rc {r.returncode} in {s} s")
        if check and r.returncode:
            self.step(name, False, f"`{' '.join(cmd)}` exited {r.returncode}: {text[-1500:]}")
        return r

    # -- facts ---------------------------------------------------------------------------------------------------
    def facts(self) -> None:
        smi = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]).stdout
        os_release = dict(ln.split("=", 1) for ln in Path("/etc/os-release").read_text().splitlines() if "=" in ln)
        self.res["facts"] = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.node()}, kernel {platform.release()}, {os.cpu_count()} CPUs",
            "os": os_release.get("PRETTY_NAME", "?").strip('"'), "gpu": smi.strip(),
            "thp": Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip(),
            "python_bench": f"{sys.executable} {sys.version.split()[0]}",
            "usr_bin_python3": out_of(sh(["/usr/bin/python3", "-V"])),
            "apt": out_of(sh(["apt-get", "--version"])).split("\n")[0],
            "libcuda_in_ld_cache": [ln.strip() for ln in sh(["ldconfig", "-p"]).stdout.splitlines()
                                    if "libcuda.so.1" in ln or "libnvidia-ml.so.1" in ln],
            "iptables_restore": shutil.which("iptables-restore"), "systemd": Path("/run/systemd/system").is_dir(),
            # CRI sandboxes get oom_score_adj -998: root without CAP_SYS_RESOURCE cannot set it (then containerd
            # needs restrict_oom_score_adj = true; tests' machines are such, see install/containerd.sh)
            "root_can_lower_oom_score_adj": sh(["sh", "-c", "echo -998 > /proc/self/oom_score_adj"]).returncode == 0,
        }
        say(f"facts: {self.res['facts']}")

    # -- containerd as its unit runs it ----------------------------------------------------------------------------
    def start_containerd(self, tag: str) -> None:
        log = open(self.extra / f"containerd-{tag}.log", "wb")
        self.containerd = subprocess.Popen(["/usr/bin/containerd"], env=UNIT_ENV, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while sh(["ctr", "--address", ADDRESS, "version"], timeout=5).returncode:
            if self.containerd.poll() is not None or time.monotonic() > deadline:
                self.step(f"containerd start ({tag})", False, (self.extra / f"containerd-{tag}.log").read_text()[-2000:])
            time.sleep(0.2)
        self.step(f"containerd started ({tag})", True, f"/usr/bin/containerd (pid {self.containerd.pid}, the unit's "
                  f"ExecStart, no systemd: a unit-less daemon) on {CONFIG}")

    def stop_containerd(self) -> None:
        if self.containerd is not None and self.containerd.poll() is None:
            self.containerd.terminate()
            try:
                self.containerd.wait(30)
            except subprocess.TimeoutExpired:
                self.containerd.kill()
                self.containerd.wait(10)
        self.containerd = None

    def ctr(self, name: str, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(name, ["ctr", "--address", ADDRESS, "-n", "k8s.io", *args], timeout=timeout, check=check)

    def start_plugin(self) -> None:
        unit = Path("/usr/lib/systemd/system/gpucr-plugin.service").read_text()
        exec_start = next(ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("ExecStart="))
        argv = exec_start.split()
        plog = self.extra / "plugin.log"
        self.plugin = subprocess.Popen([argv[0], "-v", *argv[1:], "--log-file", str(plog)], env=UNIT_ENV,
                                       stdout=subprocess.DEVNULL, stderr=open(self.extra / "plugin.stderr", "wb"),
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        status = Path("/run/gpucr/plugin.json")  # what `gpucr doctor` reads (the plugin's state_dir, default /run/gpucr)

        def registered() -> bool:
            try:
                return json.loads(status.read_text()).get("registered") is True
            except (OSError, ValueError):
                return False
        while not (plog.exists() and "synchronized" in plog.read_text() and registered()):
            if self.plugin.poll() is not None or time.monotonic() > deadline:
                self.step("gpucr plugin", False, f"did not register: {plog.read_text()[-1500:] if plog.exists() else ''}"
                          f"{(self.extra / 'plugin.stderr').read_text()[-1500:]}")
            time.sleep(0.2)
        self.step("gpucr plugin registered", True, f"{exec_start} (gpucr-plugin.service's ExecStart) + -v --log-file, "
                  f"pid {self.plugin.pid}")

    def doctor(self, tag: str) -> dict[str, Any]:
        r = self.run(f"gpucr doctor ({tag})", ["/usr/bin/gpucr", "doctor", "--json"], timeout=120, check=False)
        if tag == "ready":  # what a user reads
            text = self.run(f"gpucr doctor text ({tag})", ["/usr/bin/gpucr", "doctor"], timeout=120, check=False)
            (self.extra / f"doctor-{tag}.txt").write_text(out_of(text) + "\n")
        try:
            doc = json.loads(r.stdout)
        except ValueError:
            doc = {"ready": False, "checks": [], "raw": out_of(r)[-3000:]}
        doc["rc"] = r.returncode
        self.res[f"doctor_{tag}"] = doc
        self.save()
        return doc

    # -- the steps -----------------------------------------------------------------------------------------------
    def install(self) -> None:
        a = self.args
        for pkg in ("gpucr", "gpucr-criu"):
            r = sh(["dpkg-query", "-W", "-f=${Status}", pkg])
            if r.returncode == 0 and "installed" in r.stdout:
                self.step("preconditions", False, f"{pkg} is installed already: this bench installs and purges it")
        self.res["before"] = {"diversions": diversions(), "state": sorted(tree(STATE)),
                              "paths": [p for p in PATHS if os.path.lexists(p)]}
        self.step("preconditions", not self.res["before"]["paths"], f"gpucr paths present before: "
                  f"{self.res['before']['paths'] or 'none'}")
        rec = install_containerd(a.stage)
        self.res["containerd_install"] = rec
        self.step("apt-get install containerd runc", True, f"{rec['cmd']} (rc 0, {rec['s']} s): {rec['containerd']}; "
                  f"{rec['runc']}")
        self.original = CONFIG.read_bytes() if CONFIG.exists() else None
        self.res["containerd_config_before"] = self.original.decode() if self.original is not None else None
        ins = install_gpucr(a.debs)
        self.res["install"] = ins
        self.step("apt-get install gpucr gpucr-criu", ins["apt_get_install"]["rc"] == 0,
                  f"{ins['apt_get_install']['cmd']} (rc 0, {ins['apt_get_install']['s']} s); "
                  f"{ins['dpkg_l'].strip()}; {ins['gpucr_version']}; {ins['criu_version'].splitlines()[0]}; "
                  f"criu check rc {ins['criu_check']['rc']}")
        self.res["apt_get_install_out"] = ins["apt_get_install"]["out"]

    def apply(self) -> None:
        self.start_containerd("as-installed")
        doc = self.doctor("before-setup")
        oom = next((c for c in doc.get("checks", []) if c["name"] == "oom_score_adj"), {})
        if oom.get("status") == "fail":
            # the doctor's fix, done as a user would before gpucr setup (so setup's record starts from it)
            self.res["oom_fix"] = oom["fix"]
            table = "io.containerd.grpc.v1.cri" if (tomllib.loads(CONFIG.read_text()).get("version", 1) == 2) \
                else "io.containerd.cri.v1.runtime"
            text = CONFIG.read_text()
            header = f'[plugins."{table}"]\n'
            if header in text:
                text = text.replace(header, header + "    restrict_oom_score_adj = true\n", 1)
            else:
                text += f"\n{header}  restrict_oom_score_adj = true\n"
            CONFIG.write_text(text)
            self.original = text.encode()
            self.step("oom_score_adj", True, f"`gpucr doctor` said: {oom['detail']}; fix: {oom['fix']}: done "
                      "(containerd restarted below)")
        self.run("gpucr setup --apply", ["/usr/bin/gpucr", "setup", "--apply"], env={**os.environ, **UNIT_ENV})
        self.res["containerd_config_applied"] = CONFIG.read_text()
        self.stop_containerd()
        self.start_containerd("after-setup")
        self.start_plugin()
        if not self.res["facts"]["iptables_restore"]:
            # what the doctor's network-lock check says to do on a node without iptables (gpucr-criu has libnftables)
            self.created_criu_conf = not RUNC_CRIU_CONF.exists()
            RUNC_CRIU_CONF.parent.mkdir(parents=True, exist_ok=True)
            with RUNC_CRIU_CONF.open("a") as f:
                f.write("network-lock nftables\n")
            self.step("network lock", True, f"no iptables-restore here: `network-lock nftables` added to "
                      f"{RUNC_CRIU_CONF}, as `gpucr doctor` says")
        if not any("libcuda.so.1" in ln for ln in self.res["facts"]["libcuda_in_ld_cache"]):
            # not in the loader's cache: the doctor's CUDA check says to name it in the node config
            lib = next((p for p in ("/usr/local/nvidia/lib64/libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1")
                        if os.path.exists(p)), None)
            if lib:
                with open("/etc/gpucr/config.toml", "a") as f:
                    f.write(f'libcuda = "{lib}"\n')
                self.step("libcuda", True, f"not in the loader cache: libcuda = \"{lib}\" added to /etc/gpucr/config.toml")
        doc = self.doctor("ready")
        bad = [f"{c['name']} ({c['status']}): {c['detail']}" for c in doc.get("checks", [])
               if c["status"] in ("warn", "fail")]
        info = [f"{c['name']}: {c['detail']}" for c in doc.get("checks", []) if c["status"] == "info"]
        self.step("gpucr doctor", doc.get("rc") == 0 and doc.get("ready") and not bad,
                  f"rc {doc.get('rc')}, {len(doc.get('checks', []))} checks, "
                  f"{sum(c['status'] == 'ok' for c in doc.get('checks', []))} ok, warn/fail: {bad or 'none'}; "
                  f"info: {info}", fatal=False)

    def pod(self) -> None:
        sys.path[:0] = [str(GPUCR_LIB), str(package_site()), str(REPO)]  # the installed gpucr's CRI client
        from demo.gpu_pod import HOSTROOT, gpu_container_config, hostroot_image, step, verify
        from nri_plugin.cri import CriClient, pod_config

        a = self.args
        dump = sh(["containerd", "config", "dump"], timeout=30).stdout
        doc = tomllib.loads(dump)
        images = doc.get("plugins", {}).get("io.containerd.cri.v1.images", {})
        sandbox = (images.get("pinned_images") or {}).get("sandbox") or "registry.k8s.io/pause:3.10"
        self.ctr("import pause", "images", "import", str(a.stage / "images/pause.tar"))
        self.ctr("tag sandbox image", "images", "tag", "--force", "localhost/gpucr-pause:test", sandbox)
        img = Path("/var/lib/gpucr-package-bench/hostroot.tar")
        img.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        hostroot_image(img)
        self.ctr("import hostroot", "images", "import", str(img))
        data = Path("/var/lib/gpucr-package-bench/data")
        data.mkdir(parents=True, exist_ok=True)
        cri = CriClient(ADDRESS, timeout_s=120)
        pcfg = pod_config("train-package", annotations={"gpucr.io/checkpoint": "enabled"},
                          cgroup_parent="gpucr-package-bench", log_directory=str(data / "logs"))
        pod = cri.run_pod_sandbox(pcfg)
        self.cleanup_pod = (cri, pod)
        ccfg = gpu_container_config(data, a.gib)
        # seeded per process start (bench/gpu_restore.py does the same): a fresh start cannot reproduce the data, so an
        # identical digest after the restore proves the restore
        work = (data / "work.py").read_text()
        assert "torch.manual_seed(1234)" in work, "bench/_workload.py's workload changed: update the seed edit"
        (data / "work.py").write_text(work.replace("torch.manual_seed(1234)",
                                                   "torch.manual_seed(int.from_bytes(os.urandom(8), 'little'))"))
        cid = cri.create_container(pod, ccfg, pcfg)
        cri.start_container(cid)
        deadline = time.monotonic() + 180
        while not (data / "ready").exists() or step(data) < 5:
            st, _ = cri.container_status(cid)
            if st.state != 1 or time.monotonic() > deadline:
                logf = data / "logs/train.log"
                self.step("GPU pod", False, f"state {st.state} {st.reason} {st.message}: "
                          f"{logf.read_text()[-2000:] if logf.exists() else '(no log)'}")
            time.sleep(0.5)
        before = json.loads((data / "ready").read_text())["digest"]
        _, info = cri.container_status(cid, verbose=True)
        pid = int(info["info"]["pid"])
        rec_path = Path(f"/run/gpucr/containers/{cid}.json")
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else {}
        smi = sh(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"]).stdout.strip()
        self.step("GPU pod", True, f"container {cid[:12]} (pid {pid}) training, step {step(data)}, {a.gib} GiB of "
                  f"torch.rand on the GPU (digest {before[:16]}...); GPU apps: {smi}; the plugin's record: "
                  f"managed={rec.get('managed')}", digest=before)
        self.step("managed by gpucr", rec.get("managed") is True, f"{rec_path}: {json.dumps(rec)[:300]}", fatal=False)

        mark = FRONT_LOG.stat().st_size if FRONT_LOG.exists() else 0
        ref = "localhost/gpucr-package-ckpt:1"
        s0 = step(data)
        r = self.ctr("ctr c checkpoint --task", "c", "checkpoint", "--task", "--rw", "--image", cid, ref, timeout=300)
        ck_s = self.res["commands"][-1]["s"]
        s1 = step(data)
        time.sleep(2)
        s2 = step(data)
        same = verify(data, "after-checkpoint") == before
        self.step("ctr c checkpoint --task", r.returncode == 0 and s2 > s1 and same,
                  f"rc 0 in {ck_s} s; training went on ({s0} before, {s1} right after, {s2} 2 s later); GPU data "
                  f"bit-identical after: {same}")
        front = FRONT_LOG.read_text(errors="replace")[mark:] if FRONT_LOG.exists() else ""
        self.res["front_log_checkpoint"] = front[-6000:]
        self.step("the installed front did the CUDA work of the dump", "DUMP success=True" in front
                  and "locked and checkpointed 1 CUDA process(es)" in front,
                  " | ".join(ln.strip()[:160] for ln in front.splitlines() if "CUDA" in ln or "success=" in ln)[:900],
                  fatal=False)

        cri.stop_container(cid, 0)
        killed_at = step(data)
        mark = FRONT_LOG.stat().st_size if FRONT_LOG.exists() else 0
        r = self.ctr("ctr c restore", "c", "restore", "--live", "--rw", "restored", ref, timeout=300)
        rs_s = self.res["commands"][-1]["s"]
        self.cleanup_restored = True
        deadline = time.monotonic() + 120
        while step(data) == killed_at and time.monotonic() < deadline:  # the killed run's last step, until the
            time.sleep(0.005)                                          # restored process writes its next one
        first = step(data)
        while step(data) < first + 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = step(data)
        same = verify(data, "after-restore") == before
        tasks = self.ctr("ctr t ls", "t", "ls").stdout
        front = FRONT_LOG.read_text(errors="replace")[mark:] if FRONT_LOG.exists() else ""
        self.res["front_log_restore"] = front[-6000:]
        losses = (data / "step").read_text().strip()
        self.step("ctr c restore", r.returncode == 0 and s0 < first <= s1 + 10 and after >= first + 20 and same,
                  f"rc 0 in {rs_s} s; the container had been killed at step {killed_at}; the checkpoint was taken "
                  f"between steps {s0} and {s1}: the restored process's first step is {first}, then {after} "
                  f"(`step loss`: {losses}); GPU data (random, seeded per start) bit-identical: {same}; "
                  f"tasks: {' | '.join(tasks.split(chr(10))[1:])[:200]}")
        self.step("the installed front restored the CUDA state", "RESTORE success=True" in front
                  and "restored and unlocked 1 CUDA process(es)" in front,
                  " | ".join(ln.strip()[:160] for ln in front.splitlines() if "CUDA" in ln or "success=" in ln)[:900])

    def teardown_pod(self) -> None:
        if getattr(self, "cleanup_restored", False):
            self.ctr("kill restored", "t", "kill", "-s", "KILL", "restored", check=False)
            time.sleep(0.5)
            self.ctr("rm restored task", "t", "rm", "-f", "restored", check=False)
            self.ctr("rm restored container", "c", "rm", "restored", check=False)
            self.ctr("rm checkpoint image", "images", "rm", "--sync", "localhost/gpucr-package-ckpt:1", check=False)
            self.cleanup_restored = False
        if getattr(self, "cleanup_pod", None):
            cri, pod = self.cleanup_pod
            for fn in (cri.stop_pod_sandbox, cri.remove_pod_sandbox):
                try:
                    fn(pod)
                except Exception as exc:  # noqa: BLE001 - teardown goes on; recorded
                    self.res.setdefault("teardown_errors", []).append(str(exc)[:300])
            self.cleanup_pod = None

    def revert_and_purge(self) -> None:
        if self.plugin is not None and self.plugin.poll() is None:
            self.plugin.terminate()
            self.plugin.wait(10)
        self.run("gpucr setup --revert", ["/usr/bin/gpucr", "setup", "--revert"], env={**os.environ, **UNIT_ENV})
        same = CONFIG.read_bytes() == self.original if self.original is not None else not CONFIG.exists()
        self.step("config restored", same, f"{CONFIG} byte-identical after --revert to what it was before gpucr setup: {same}")
        self.stop_containerd()
        if getattr(self, "created_criu_conf", None) is not None:
            if self.created_criu_conf:
                RUNC_CRIU_CONF.unlink()
            else:
                RUNC_CRIU_CONF.write_text(RUNC_CRIU_CONF.read_text().replace("network-lock nftables\n", "", 1))
        self.run("apt-get purge gpucr gpucr-criu", ["apt-get", "purge", "-y", "-q", "-o", "Dpkg::Use-Pty=0", "gpucr",
                                                   "gpucr-criu"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        st = {p: sh(["dpkg-query", "-W", "-f=${Status}", p]).stdout for p in ("gpucr", "gpucr-criu")}
        left = [p for p in PATHS if os.path.lexists(p)] + sorted(tree(STATE) - set(self.res["before"]["state"]))
        divs = diversions() == self.res["before"]["diversions"]
        run_gpucr = sorted(tree("/run/gpucr"))
        self.step("nothing left", not left and divs and all("installed" not in s for s in st.values()),
                  f"dpkg status {st}; left in {', '.join(PATHS)}, {STATE}: {left or 'nothing'}; dpkg-divert --list "
                  f"unchanged: {divs}; /run/gpucr (tmpfs, the plugin's container records): {run_gpucr or 'nothing'}")
        self.run("apt-get purge containerd runc", ["apt-get", "purge", "-y", "-q", "-o", "Dpkg::Use-Pty=0",
                                                   "containerd", "runc"], check=False,
                 env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def markdown(res: dict[str, Any]) -> str:
    f = res.get("facts", {})
    ok = res["steps"] and all(s["ok"] for s in res["steps"]) and res.get("done")
    L = ["# gpucr from its packages on the H200: install, setup, doctor, GPU pod checkpoint/restore, revert, purge", "",
         f"Produced by `{res['argv']}`.", "",
         f"- date: {f.get('date')}; machine: {f.get('machine')}; OS: {f.get('os')}",
         f"- GPU, driver: {f.get('gpu')}; THP: `{f.get('thp')}`",
         f"- Python of the bench: {f.get('python_bench')}; /usr/bin/python3: {f.get('usr_bin_python3')}; "
         f"{f.get('apt')}; systemd running: {f.get('systemd')}; iptables-restore: {f.get('iptables_restore')}",
         f"- libcuda/NVML in the loader cache: {f.get('libcuda_in_ld_cache')}", "",
         f"Verdict: **{'PASS' if ok else 'FAIL'}**", "", "## Steps", "", "| t (s) | step | | detail |",
         "|---|---|---|---|"]
    for s in res["steps"]:
        L.append(f"| {s['t_s']} | {s['step']} | {'ok' if s['ok'] else '**FAIL**'} | "
                 f"{str(s['detail']).replace('|', '/').replace(chr(10), ' ')} |")
    for tag in ("before-setup", "ready"):
        d = res.get(f"doctor_{tag}")
        if d:
            L += ["", f"## `gpucr doctor` ({tag}): rc {d.get('rc')}, ready {d.get('ready')}", "", "```"]
            for c in d.get("checks", []):
                L.append(f"[{c['status']}] {c['name']}: {c['detail']}" + (f"\n     fix: {c['fix']}" if c.get("fix")
                                                                             and c["status"] in ("warn", "fail") else ""))
            L += ["```"]
    L += ["", "## `apt-get install` of the packages said", "", "```", str(res.get("apt_get_install_out", ""))[-1500:],
          "```"]
    if res.get("containerd_config_applied"):
        L += ["", "## /etc/containerd/config.toml after `gpucr setup --apply` (the package's, with gpucr's edits)", "",
              "```toml", res["containerd_config_applied"].rstrip(), "```"]
    for k in ("front_log_checkpoint", "front_log_restore"):
        if res.get(k):
            L += ["", f"## The installed front's log ({k.split('_')[-1]})", "", "```",
                  *[ln[:220] for ln in res[k].strip().splitlines()[-25:]], "```"]
    if res.get("error"):
        L += ["", f"**Run failed**: {res['error']}"]
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--debs", type=Path, required=True, help="where gpucr_*.deb and gpucr-criu_*.deb are")
    ap.add_argument("--stage", type=Path, required=True, help="debs-ctrd/ (containerd, runc) and images/pause.tar")
    ap.add_argument("--gib", type=float, default=1.0)
    args = ap.parse_args()
    find_debs([args.debs], "gpucr_*.deb", "gpucr-criu_*.deb")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))  # a `timeout` in front still gets the results written
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    r = Run(out, args)
    r.facts()
    try:
        r.install()
        r.apply()
        try:
            r.pod()
        finally:
            r.teardown_pod()
        r.revert_and_purge()
        r.res["done"] = True
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failed step is reported with what was measured
        r.res["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
        say(f"error: {r.res['error']}")
        if r.res.get("install") and not any(s["step"] == "nothing left" for s in r.res["steps"]):
            try:
                r.teardown_pod()
                r.revert_and_purge()
            except (Exception, SystemExit) as exc2:  # noqa: BLE001
                r.res["cleanup_error"] = str(exc2)[-1000:]
    finally:
        r.stop_containerd()
        if r.plugin is not None and r.plugin.poll() is None:
            r.plugin.kill()
        for f in (FRONT_LOG,):
            if f.exists():
                shutil.copy(f, r.extra / f.name)
        r.save()
        (out / "gpu_package.md").write_text(markdown(r.res))
        print(markdown(r.res))
    return 0 if r.res.get("done") and all(s["ok"] for s in r.res["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The package round trip (issue 13's must-show), run by .ci/run after `make test` on CI's fresh machine, as root.

1. `apt-get install ./dist/gpucr-criu_*.deb ./dist/gpucr_*.deb` (make package built them; the README's other
   prerequisites, runc and iptables, came with `make test`'s install/deps.sh); `systemd-analyze verify` of the
   installed unit;
2. a containerd (argument: 1.7, the default, or 2.1) started as a user's is (a unit-less daemon with its own config,
   NRI at the version's default: off on 1.7, on in 2.x);
3. `gpucr setup --apply --config <its config>`; containerd restarted; `apt-get remove gpucr` refused while applied;
4. the plugin as the installed unit runs it (its ExecStart, with this containerd's NRI socket), the node config
   naming the fake CUDA driver (tests/fakes/) as libcuda; a managed CRI container holding its CUDA state checkpointed by the installed `/usr/bin/gpucr checkpoint --via-runtime` and by `ctr c checkpoint --task`,
   killed, and restored by `ctr c restore`, each dump and restore through the installed front (its log says so) and
   the installed gpucr-criu (the front locks and checkpoints the CUDA state around each dump, restores and unlocks
   it after the restore); the restored counter continues from the checkpoint;
5. `gpucr setup --revert` (the config byte-identical again), `apt-get purge gpucr gpucr-criu`, and nothing left:
   no package files, no unit, no /usr/lib/gpucr, /usr/libexec/gpucr, /etc/gpucr, /var/log/gpucr, nothing new in
   /var/lib/gpucr (absent on a fresh machine), the same dpkg diversions.
Any failure ends it with exit status 1 and the step that failed. It refuses to start where gpucr is installed or its
paths exist (it would remove them). On a shared development machine run it in tests/package/sandbox.sh.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.fakes.cuda import FakeCuda, build, make_device  # noqa: E402
from tests.testenv import Containerd, wait_for  # noqa: E402

VERSION = sys.argv[1] if len(sys.argv) > 1 else "1.7"
MAJOR = int(VERSION.split(".")[0])
CRI = "io.containerd.grpc.v1.cri" if MAJOR == 1 else "io.containerd.cri.v1.runtime"
GPUCR = "/usr/bin/gpucr"
PATHS = ["/usr/lib/gpucr", "/usr/libexec/gpucr", "/etc/gpucr", "/usr/bin/gpucr",
         "/usr/lib/systemd/system/gpucr-plugin.service"]
#: made at run time (setup's record, the front's cache, logs); purge removes what gpucr made there. Earlier test runs
#: on this machine may have left some (front caches of make test): then nothing beyond those may be left.
STATE = "/var/lib/gpucr"
#: checkpoint_root of the packaged (all-defaults) node config: where the installed CLI's --to must lie
CKPT_ROOT = Path("/var/lib/gpucr/checkpoints")
LOGS = "/var/log/gpucr"
FRONT_LOG = Path("/var/log/gpucr/criu-front.log")
#: the workload: the fake CUDA driver's app (tests/fakes/), counting into /data/log with CUDA state on a "GPU"
FAKE_MNT, GPU_DEV = "/fakecuda", "/dev/nvidia0"
COUNTER = [f"{FAKE_MNT}/fakecuda-app", "/data/log"]
ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "GPUCR_INSTANCE": os.environ.get("GPUCR_INSTANCE", "pkg"),
       "GPUCR_CONTAINERD_NRI": "default"}


class Fail(Exception):
    pass


def step(msg: str) -> None:
    print(f"== package round trip: {msg}", flush=True)


def sh(*cmd: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    print("+ " + shlex.join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, stdin=subprocess.DEVNULL)
    out = (r.stdout + r.stderr).strip()
    if out and not (quiet and r.returncode == 0):
        print("  " + out.replace("\n", "\n  "), flush=True)
    if check and r.returncode != 0:
        raise Fail(f"{shlex.join(cmd)} exited {r.returncode}")
    return r


def check(cond: object, what: str) -> None:
    if not cond:
        raise Fail(what)
    print(f"  ok: {what}", flush=True)


def installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == "install ok installed"


def diversions() -> list[str]:
    return sorted(subprocess.run(["dpkg-divert", "--list"], capture_output=True, text=True, check=True)
                  .stdout.splitlines())


def tree(top: str) -> set[str]:
    return {os.path.join(d, n) for d, ds, fs in os.walk(top) for n in ds + fs} | ({top} if os.path.lexists(top) else set())


def front_log() -> str:
    return FRONT_LOG.read_text(errors="replace") if FRONT_LOG.exists() else ""


def counter(data: Path) -> list[int]:
    return [int(x) for x in (data / "log").read_text().split()]


def containerd(cmd: str) -> Containerd:
    r = sh("bash", str(REPO / "install/containerd.sh"), cmd, VERSION)
    return Containerd(json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text()))


def preconditions() -> tuple[str, str]:
    if os.geteuid() != 0:
        raise Fail("must run as root (it installs packages)")
    for pkg in ("gpucr", "gpucr-criu"):
        if installed(pkg):
            raise Fail(f"{pkg} is installed already: purge it first (this test installs and purges it)")
    there = [p for p in PATHS if os.path.lexists(p)]
    if there:
        raise Fail(f"{', '.join(there)} exist(s): this test would remove them; run it where gpucr is not installed "
                   "(or in tests/package/sandbox.sh)")
    debs = sorted(glob.glob(str(REPO / "dist/gpucr_*_amd64.deb"))), sorted(glob.glob(str(REPO / "dist/gpucr-criu_*_amd64.deb")))
    if not debs[0] or not debs[1]:
        raise Fail("dist/ has no gpucr_*.deb and gpucr-criu_*.deb: run make package first")
    return debs[0][-1], debs[1][-1]


def install_and_apply(deb: str, criu_deb: str, config: Path) -> None:
    step("install the packages")
    sh("apt-get", "install", "-y", "-q", "-o", "Dpkg::Use-Pty=0", "--no-install-recommends", criu_deb, deb)
    check(installed("gpucr") and installed("gpucr-criu"), "gpucr and gpucr-criu are installed")
    files = sh("dpkg", "-L", "gpucr", quiet=True).stdout.split()
    for f in ["/usr/bin/gpucr", "/usr/libexec/gpucr/gpucr-hook", "/usr/lib/gpucr/hooks/criu_front.py",
              "/usr/lib/gpucr/install/front.sh", "/usr/lib/systemd/system/gpucr-plugin.service",
              "/etc/gpucr/config.toml", "/usr/lib/gpucr/nri/10-gpucr"]:
        check(f in files, f"the package installs {f}")
    bad = [f for f in files if os.path.isfile(f) and (os.stat(f).st_uid != 0 or os.stat(f).st_mode & 0o022)]
    check(not bad, "every installed file is root-owned and not group/world-writable")
    check(all(Path(f"/usr/lib/gpucr/site/cp3{m}/grpc/_cython/cygrpc.cpython-3{m}-x86_64-linux-gnu.so").is_file()
              and Path(f"/usr/lib/gpucr/site/cp3{m}/google/protobuf").is_dir() for m in (11, 12, 13)),
          "grpcio and protobuf built for CPython 3.11 (Debian 12), 3.12 (Ubuntu 24.04), 3.13 (Debian 13)")
    check("/etc/gpucr/config.toml" in sh("dpkg-query", "-W", "-f=${Conffiles}", "gpucr").stdout, "config.toml is a conffile")
    if not shutil.which("systemd-analyze"):
        raise Fail("systemd-analyze is missing: apt-get install systemd (no running systemd needed)")
    r = sh("systemd-analyze", "verify", "/usr/lib/systemd/system/gpucr-plugin.service", check=False)
    check(r.returncode == 0 and not (r.stdout + r.stderr).strip(),
          "systemd-analyze verify finds nothing wrong in the installed gpucr-plugin.service (keys, values, ExecStart)")
    sh(GPUCR, "--version")
    sh("/usr/lib/gpucr/criu/criu", "--version")

    step("gpucr setup --apply against the user's containerd config")
    sh(GPUCR, "setup", "--apply", "--config", str(config))
    doc = tomllib.loads(config.read_text())
    nri = doc["plugins"]["io.containerd.nri.v1.nri"]
    if MAJOR == 1:
        check(nri["disable"] is False, "NRI enabled in the config (containerd 1.7 ships it disabled)")
    else:
        check("disable" not in nri, "NRI left at containerd 2.x's default (enabled): that part of the config untouched")
    runc = doc["plugins"][CRI]["containerd"]["runtimes"]["runc"]["options"]["BinaryName"]
    check(runc == "/var/lib/gpucr/setup/front-runc/bin/runc", f"the CRI default runtime runs gpucr's wrapper ({runc})")
    sh(GPUCR, "setup")
    conf = Path("/var/lib/gpucr/setup/front-runc/path/front.conf").read_text()
    check("real_criu = /usr/lib/gpucr/criu/criu" in conf, "the front's real criu is gpucr-criu's")
    check(os.path.realpath("/var/lib/gpucr/setup/front-runc/path/criu") == "/usr/lib/gpucr/hooks/criu_front.py",
          "the route's criu is the installed front")
    r = sh("apt-get", "remove", "-y", "-q", "-o", "Dpkg::Use-Pty=0", "gpucr", check=False)
    check(r.returncode != 0 and installed("gpucr") and "gpucr setup --revert" in r.stdout + r.stderr,
          "apt-get remove gpucr is refused while setup is applied, naming gpucr setup --revert")


def unit_command(nri_socket: str, log: Path) -> list[str]:
    unit = Path("/usr/lib/systemd/system/gpucr-plugin.service").read_text()
    exec_start = next(ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(exec_start)
    check(argv[:2] == [GPUCR, "plugin"] and "--socket" in argv, f"the unit runs {exec_start}")
    argv[argv.index("--socket") + 1] = nri_socket  # this private containerd's NRI socket
    return [argv[0], "-v", *argv[1:], "--log-file", str(log)]


def fake_cuda(work: Path) -> FakeCuda:
    """The fake driver, named in the installed node config as a user names the real libcuda."""
    root = work / "fake"
    root.mkdir()
    lib = build(root)
    state = Path(f"{lib}.d")
    state.mkdir(mode=0o700)
    with open("/etc/gpucr/config.toml", "a") as f:
        f.write(f'libcuda = "{lib}"\n')
    return FakeCuda(lib, state, make_device(root / "nvidia0"))


def checkpoint_and_restore(ctrd: Containerd, work: Path) -> None:
    fake = fake_cuda(work)
    step("the plugin as the unit runs it")
    plog = work / "plugin.log"
    plugin = subprocess.Popen(unit_command(ctrd.nri_socket, plog), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: plog.exists() and "synchronized" in plog.read_text(), timeout=30,
                 what="the installed gpucr plugin to register with containerd")
        data = work / "data"
        data.mkdir()
        step("a managed CRI container holding (fake) CUDA state")
        env = {"FAKE_CUDA_DIR": f"{FAKE_MNT}/{fake.state_dir.name}", "FAKE_CUDA_LIB": f"{FAKE_MNT}/{fake.lib.name}",
               "FAKE_CUDA_DEVICE": GPU_DEV}
        with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
            cid = ctrd.run_container(c, pod_id, cfg, "counter", COUNTER, env=env,
                                     mounts=[(str(data), "/data", False), (str(fake.lib.parent), FAKE_MNT, False)],
                                     devices=[(str(fake.device), GPU_DEV, "rw")])
            wait_for(lambda: (data / "log").exists() and len(counter(data)) >= 2, what="the counter to start")
            _, info = c.container_status(cid, verbose=True)
            pid = int(info["info"]["pid"])
            wait_for(lambda: fake.state(pid) == "RUNNING", what=f"pid {pid} to register with the fake CUDA driver")
            rec = json.loads(Path(f"/run/gpucr/containers/{cid}.json").read_text())
            check(rec.get("managed") is True and rec.get("pid") == pid,
                  f"the installed plugin and OCI hook recorded container {cid[:12]} (pid {pid}) as managed")

            step("checkpoint by the installed CLI through the runtime (1.7: the task API; 2.x: CRI CheckpointContainer) "
                 "and the installed front")
            mark = len(front_log())
            # --to inside the packaged config's checkpoint_root (its default), as a user's would be; removed after
            ck = CKPT_ROOT / f"pkg-roundtrip-{uuid.uuid4().hex[:6]}"
            root_existed = CKPT_ROOT.exists()
            sh(GPUCR, "checkpoint", cid, "--via-runtime", "--to", str(ck), "--address", ctrd.address,
               "--leave-running", "--json")
            made = ck / ("images/inventory.img" if MAJOR == 1 else "checkpoint.tar")
            check(made.is_file(), f"the CLI's checkpoint wrote {made}")
            shutil.rmtree(ck)
            if not root_existed:
                CKPT_ROOT.rmdir()
            log = front_log()[mark:]
            print("  the front's log:\n    " + log.strip().replace("\n", "\n    "), flush=True)
            check("DUMP success=True" in log and "locked and checkpointed 1 CUDA process(es)" in log
                  and fake.state(pid) == "RUNNING",
                  f"the installed front checkpointed pid {pid}'s CUDA state around the dump; it runs on")

            step("ctr c checkpoint --task, kill, ctr c restore: both through the installed front")
            ref = f"localhost/pkg-{uuid.uuid4().hex[:6]}:ckpt"
            restored = f"pkg-restored-{uuid.uuid4().hex[:6]}"
            lo = counter(data)[-1]
            ctrd.ctr("c", "checkpoint", "--task", "--rw", "--image", cid, ref, namespace="k8s.io")
            hi = counter(data)[-1]
            c.stop_container(cid, 0)
            before = len(counter(data))
            mark = len(front_log())
            try:
                ctrd.ctr("c", "restore", "--live", "--rw", restored, ref, namespace="k8s.io")
                wait_for(lambda: len(counter(data)) >= before + 3, what="the restored counter")
                after = counter(data)[before:]
                check(lo <= after[0] - 1 <= hi + 1 and after == list(range(after[0], after[0] + len(after))),
                      f"the restored counter continues from the checkpoint ({lo}..{hi} -> {after[:3]}...)")
                log = front_log()[mark:]
                print("  the front's log:\n    " + log.strip().replace("\n", "\n    "), flush=True)
                new = int(ctrd.ctr("t", "ls", namespace="k8s.io").stdout.split(restored, 1)[1].split()[0])
                check("RESTORE success=True" in log and f"restored and unlocked 1 CUDA process(es) [{new}]" in log
                      and fake.state(new) == "RUNNING",
                      f"the installed front restored and unlocked the CUDA state of the restored pid {new}")
            finally:
                ctrd.remove_restored(restored, ref, namespace="k8s.io")
    finally:
        plugin.terminate()
        plugin.wait(10)


def revert_and_purge(config: Path, original: bytes, divs: list[str], state_before: set[str]) -> None:
    step("gpucr setup --revert, apt-get purge, and nothing left")
    sh(GPUCR, "setup", "--revert")
    check(config.read_bytes() == original, f"{config} is byte-identical to before gpucr setup")
    containerd("restart")
    sh("apt-get", "purge", "-y", "-q", "-o", "Dpkg::Use-Pty=0", "gpucr", "gpucr-criu")
    check(not installed("gpucr") and not installed("gpucr-criu"), "both packages purged")
    r = subprocess.run(["dpkg", "-L", "gpucr"], capture_output=True, text=True)
    check(r.returncode != 0, "dpkg -L gpucr lists nothing (package unknown)")
    left = [p for p in [*PATHS, LOGS] if os.path.lexists(p)] + sorted(tree(STATE) - state_before)
    check(not left, f"no gpucr files left in {', '.join(PATHS)}, {LOGS}, {STATE} ({', '.join(left) or 'none'})")
    check(diversions() == divs, "dpkg-divert --list unchanged")


def main() -> int:
    work = None
    started = False
    try:
        deb, criu_deb = preconditions()
        divs = diversions()
        state_before = tree(STATE)
        step(f"containerd {VERSION} started as a user's (NRI at its default), GPUCR_INSTANCE={ENV['GPUCR_INSTANCE']}")
        ctrd = containerd("start")
        started = True
        config = Path(ctrd.info["dir"]) / "config.toml"
        original = config.read_bytes()
        work = Path(ctrd.info["dir"]) / "roundtrip"
        work.mkdir(mode=0o700)
        install_and_apply(deb, criu_deb, config)
        ctrd = containerd("restart")
        checkpoint_and_restore(ctrd, work)
        revert_and_purge(config, original, divs, state_before)
        step("PASS")
        return 0
    except (Fail, AssertionError, subprocess.SubprocessError, OSError) as exc:
        print(f"== package round trip: FAILED: {exc}", flush=True)
        if installed("gpucr"):
            sh(GPUCR, "setup", "--revert", check=False)
            sh("apt-get", "purge", "-y", "-q", "-o", "Dpkg::Use-Pty=0", "gpucr", "gpucr-criu", check=False)
        return 1
    finally:
        if started:
            sh("bash", str(REPO / "install/containerd.sh"), "stop", VERSION, check=False)


if __name__ == "__main__":
    sys.exit(main())

"""Set-up shared by the GPU benches on a machine without network (the H200): everything from packages, with apt-get.

What travels (the device tool's ``carry``): gpucr's own packages, ``gpucr_*.deb`` and ``gpucr-criu_*.deb`` (``make
package``: gpucr's code, its pinned wheels per CPython ABI under /usr/lib/gpucr/site, CRIU 4.2.x with its library
closure under /usr/lib/gpucr/criu), and a stage dir with ``debs-ctrd/`` (containerd 2.1.9 and runc from Debian, whose
dependencies, libc6 >= 2.38 and libseccomp2, Ubuntu 24.04 has) and ``images/`` (install/images.sh's pause.tar and
busybox.tar). ``apt-get install /abs/path.deb ...`` installs them as a user would; nothing is unpacked by hand.

Never ``apt-get install --no-download`` with .deb files: apt then skips its fetch of the local archives, so it hands
dpkg the archive's bare name and stops with "Internal Error, Pathname to install is not absolute
'gpucr_0.1.0-1_amd64.deb'" (bench/results/gpu_faults.md; reproduced with apt 2.6 on Debian 12). Without it apt reads
local .debs through its ``file`` method, which needs no network; a dependency missing on the machine fails loudly.

``setup(STAGE)`` lays out GPUCR_TEST_ROOT for install/containerd.sh (the test rig's private containerd instances) from
the installed packages: the rig's containerd 2.1.9 is the installed /usr/bin/containerd, its criu gpucr-criu's. The
benches that use it run the checkout's gpucr code (what a branch changes; its generated ``_pb`` modules must be in
the tree) with the package's pinned wheels; bench/gpu_package.py and bench/gpu_faults.py run the installed
/usr/bin/gpucr itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["GPUCR_LIB", "PKG_CRIU", "ROOT", "apt_install", "find_debs", "gpucr_json", "install_containerd",
           "install_gpucr", "package_site", "packaged", "setup"]

REPO = Path(__file__).resolve().parent.parent
#: GPUCR_TEST_ROOT of the benches that use install/containerd.sh; root's alone (not under /tmp: the CRIU front refuses
#: a route under a directory others can write, and the demo makes its route here)
ROOT = Path("/var/lib/gpucr-bench")
GPUCR_LIB = Path("/usr/lib/gpucr")
#: gpucr-criu's launcher (packaging/build.sh)
PKG_CRIU = GPUCR_LIB / "criu/criu"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def sh(cmd: list[str], timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(cmd, 127, "", str(exc))
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(cmd, 124, str(exc.stdout or ""), f"timed out after {timeout}s")


def out_of(r: subprocess.CompletedProcess[str]) -> str:
    return (r.stdout + r.stderr).strip()


def find_debs(where: list[Path], *patterns: str) -> list[Path]:
    """The newest file matching each pattern in the first of ``where`` that has them all; SystemExit naming the fix."""
    for d in where:
        found = [sorted(d.glob(p)) for p in patterns]
        if all(found):
            return [f[-1].resolve() for f in found]
    raise SystemExit(f"no {' and '.join(patterns)} in {', '.join(map(str, where))}: build them with `make package` "
                     "and carry dist/ (or put them in STAGE/pkgs)")


def apt_install(debs: list[Path]) -> dict[str, Any]:
    """``apt-get install`` of local .deb files (absolute paths, no --no-download: see the module's docstring)."""
    t = time.monotonic()
    r = sh(["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0",
            *[str(p.resolve()) for p in debs]], env={**os.environ, **APT_ENV})
    rec = {"cmd": "apt-get install -y -q --no-install-recommends " + " ".join(p.name for p in debs),
           "rc": r.returncode, "s": round(time.monotonic() - t, 1), "out": out_of(r)[-3000:]}
    if r.returncode:
        raise SystemExit(f"apt-get install {' '.join(p.name for p in debs)} failed (rc {r.returncode}):\n"
                         f"{rec['out']}")
    return rec


def package_site() -> Path:
    """The gpucr package's pinned wheels for this Python (/usr/lib/gpucr/site/cpXY)."""
    site = GPUCR_LIB / f"site/cp{sys.version_info[0]}{sys.version_info[1]}"
    if not site.is_dir():
        raise SystemExit(f"{site} is missing: the gpucr package ships no wheels for Python "
                         f"{sys.version_info[0]}.{sys.version_info[1]} ({sys.executable})")
    return site


def install_gpucr(pkgs: Path | list[Path]) -> dict[str, Any]:
    """Install gpucr and gpucr-criu from their .debs (dir or dirs to look in); what was installed and how it runs."""
    where = [pkgs] if isinstance(pkgs, Path) else pkgs
    debs = find_debs(where, "gpucr_*.deb", "gpucr-criu_*.deb")
    ins: dict[str, Any] = {"debs": [f"{p.name} ({p.stat().st_size} B)" for p in debs]}
    ins["apt_get_install"] = apt_install(debs)
    ins["dpkg_l"] = sh(["dpkg-query", "-W", "-f", "${Package} ${Version} ${Status}\\n", "gpucr", "gpucr-criu"]).stdout
    ins["python3"] = out_of(sh(["/usr/bin/python3", "-V"]))
    ins["gpucr_version"] = out_of(sh(["/usr/bin/gpucr", "--version"]))
    r = sh(["/usr/bin/gpucr", "checkpoint", "--help"])
    ins["gpucr_checkpoint_help"] = {"rc": r.returncode, "out": out_of(r)}
    ins["criu_version"] = out_of(sh([str(PKG_CRIU), "--version"]))
    r = sh([str(PKG_CRIU), "check"])
    ins["criu_check"] = {"rc": r.returncode, "out": out_of(r)[-2000:]}
    return ins


def install_containerd(stage: Path) -> dict[str, Any]:
    """containerd and runc from STAGE/debs-ctrd with apt-get, as a user installs a downloaded package."""
    debs = find_debs([stage / "debs-ctrd"], "containerd_*.deb", "runc_*.deb")
    rec = apt_install(debs)
    rec["containerd"] = out_of(sh(["/usr/bin/containerd", "--version"]))
    rec["runc"] = out_of(sh(["runc", "--version"])).split("\n")[0]
    return rec


def packaged(pkgs: Path | list[Path]) -> tuple[Path, Path, dict[str, Any]]:
    """Install gpucr's packages; (gpucr-criu's criu, the package's wheel dir for this Python, the install record)."""
    rec = install_gpucr(pkgs)
    return PKG_CRIU, package_site(), rec


def _installed(pkg: str) -> bool:
    r = sh(["dpkg-query", "-W", "-f=${Status}", pkg])
    return r.returncode == 0 and r.stdout.strip() == "install ok installed"


def setup(stage: Path, pkgs: Path | None = None) -> dict[str, str]:
    """Install the packages (once per machine) and lay out GPUCR_TEST_ROOT for install/containerd.sh; the bench env.

    gpucr's .debs come from ``pkgs``, else $GPUCR_DEBS, STAGE/pkgs or the checkout's dist/."""
    if not (_installed("gpucr") and _installed("gpucr-criu")):
        where = [p for p in (pkgs, Path(os.environ["GPUCR_DEBS"]) if os.environ.get("GPUCR_DEBS") else None,
                             stage / "pkgs", REPO / "dist") if p is not None]
        install_gpucr(where)
    if not (_installed("containerd") and _installed("runc")):
        install_containerd(stage)
    site = package_site()
    sys.path.insert(0, str(site))
    # install/lib.sh: containerd 2.1.9 at $GPUCR_TEST_ROOT/opt/containerd-2.1.9/usr/bin, criu at $GPUCR_TEST_ROOT/bin
    ROOT.mkdir(mode=0o700, exist_ok=True)
    bindir = ROOT / "opt/containerd-2.1.9/usr/bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for tool in ("containerd", "ctr", "containerd-shim-runc-v2"):
        (bindir / tool).unlink(missing_ok=True)
        (bindir / tool).symlink_to(f"/usr/bin/{tool}")
    (ROOT / "bin").mkdir(parents=True, exist_ok=True)
    link = ROOT / "bin/criu"
    link.unlink(missing_ok=True)
    link.symlink_to(PKG_CRIU)
    (ROOT / "images").mkdir(exist_ok=True)
    for t in ("busybox.tar", "pause.tar"):
        shutil.copy(stage / "images" / t, ROOT / "images" / t)
    return {**os.environ, "GPUCR_TEST_ROOT": str(ROOT), "PYTHONPATH": f"{REPO}:{site}", "PYTHONUNBUFFERED": "1"}


def gpucr_json(env: dict[str, str], args: tuple[str, ...], timeout: float) -> dict[str, Any]:
    """``gpucr ARGS --json`` with the checkout's code (``env``'s PYTHONPATH): its summary, plus ``wall_s``.
    Raises RuntimeError (stderr's tail) when it fails."""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", "import sys; from nri_plugin.cli.main import main; sys.exit(main())",
                        *args, "--json"], capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.monotonic() - t0
    if r.returncode:
        raise RuntimeError(f"gpucr {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    s: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    s["wall_s"] = round(wall, 3)
    return s

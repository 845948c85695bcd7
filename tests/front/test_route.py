"""install/front.sh: the product route (a runc wrapper as the runtime's BinaryName) is installed into a containerd
config and removed again byte for byte; and on a live containerd restarted with it, CRI and ctr checkpoints go
through the front while the daemon's own PATH keeps the real criu."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import testenv
from tests.ckpt._tcp import KERNEL_REFUSES_PASSCRED, kernel_version
from tests.conftest import VERSIONS
from tests.front.conftest import INSTANCE, REAL_CRIU

FRONT_SH = testenv.INSTALL / "front.sh"


def front_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(FRONT_SH), *args], capture_output=True, text=True)


def binary_names(config: Path) -> list[str]:
    doc = tomllib.loads(config.read_text())
    out = []

    def walk(d: object, trail: list[str]) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                if k == "options" and trail[-2:] == ["runtimes", "runc"]:
                    out.append(v.get("BinaryName"))
                walk(v, [*trail, k])
    walk(doc, [])
    return out


V2_CONFIG = """version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".containerd]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
"""
V3_CONFIG = """version = 3
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = '/usr/local/sbin/runc'
    SystemdCgroup = true
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.other.options]
  BinaryName = '/usr/sbin/crun'
"""


@pytest.mark.parametrize("original", [V2_CONFIG, V3_CONFIG], ids=["v2-no-binaryname", "v3-binaryname"])
def test_install_uninstall_round_trip(tmp_path: Path, original: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(original)
    route = tmp_path / "route"
    r = front_sh("install", "--config", str(config), "--dir", str(route), "--real-criu", str(REAL_CRIU),
                 "--log-dir", str(tmp_path / "log"))
    assert r.returncode == 0, r.stderr
    assert "restart containerd to apply" in r.stderr and "daemon's own PATH" in r.stderr
    assert binary_names(config) == [str(route / "bin/runc")]
    if "crun" in original:
        assert "BinaryName = '/usr/sbin/crun'" in config.read_text()  # other handlers untouched
    status = json.loads(front_sh("status", "--config", str(config)).stdout)
    assert status["BinaryName"] == [str(route / "bin/runc")]
    wrapper = (route / "bin/runc").read_text()
    assert f"PATH={route}/path:" in wrapper and "exec /" in wrapper
    assert os.readlink(route / "path/criu").endswith("hooks/criu_front.py")
    assert f"real_criu = {REAL_CRIU}" in (route / "path/front.conf").read_text()
    # installing again is harmless; uninstall restores the original bytes
    assert front_sh("install", "--config", str(config), "--dir", str(route), "--real-criu", str(REAL_CRIU)).returncode == 0
    r = front_sh("uninstall", "--config", str(config), "--dir", str(route))
    assert r.returncode == 0, r.stderr
    assert config.read_text() == original
    assert not route.exists()


def test_install_refuses_clearly(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(V2_CONFIG)
    r = front_sh("install", "--config", str(config), "--runtime", "kata", "--dir", str(tmp_path / "r"),
                 "--real-criu", str(REAL_CRIU))
    assert r.returncode == 1 and "no [...runtimes.kata.options] table" in r.stderr
    assert config.read_text() == V2_CONFIG
    old = tmp_path / "criu"
    old.write_text("#!/bin/sh\necho 'Version: 3.17.1'\n")
    old.chmod(0o755)
    r = front_sh("install", "--config", str(config), "--dir", str(tmp_path / "r"), "--real-criu", str(old))
    assert r.returncode == 1 and "is version 3.17.1; gpucr needs CRIU >= 4.1" in r.stderr
    r = front_sh("uninstall", "--config", str(config), "--dir", str(tmp_path / "r"))
    assert r.returncode == 1 and "was not installed by install/front.sh" in r.stderr


def test_route_with_criu_41_warns_about_tcp_on_new_kernels(tmp_path: Path) -> None:
    """CRIU 4.1 is accepted (it works where the kernel allows), with a warning where TCP sockets cannot be dumped."""
    old = tmp_path / "criu"
    old.write_text("#!/bin/sh\necho 'Version: 4.1.1'\n")
    old.chmod(0o755)
    r = front_sh("route", "--dir", str(tmp_path / "r"), "--real-criu", str(old), "--log-dir", str(tmp_path / "log"))
    assert r.returncode == 0, r.stderr
    warned = "cannot checkpoint containers with TCP/UDP sockets on kernels >= 6.16" in r.stderr
    assert warned == (kernel_version() >= KERNEL_REFUSES_PASSCRED), r.stderr
    r = front_sh("route", "--dir", str(tmp_path / "r"), "--real-criu", str(REAL_CRIU), "--log-dir",
                 str(tmp_path / "log"))
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


@contextlib.contextmanager
def restarted_with_route(version: str, tmp_root: Path) -> Iterator[tuple[testenv.Containerd, Path]]:
    """A private containerd (no front on its PATH), the route installed into its config, containerd restarted."""
    inst = f"{INSTANCE}-route"
    env = {**os.environ, "GPUCR_INSTANCE": inst}
    env.pop("GPUCR_CRIU_DIR", None)
    sh = testenv.INSTALL / "containerd.sh"
    r = subprocess.run(["bash", str(sh), "start", version], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        subprocess.run(["bash", str(sh), "stop", version], capture_output=True, env=env)
        pytest.fail(f"containerd.sh start {version} failed:\n{r.stderr}", pytrace=False)
    info = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    route = tmp_root / "route"
    try:
        d = Path(info["dir"])
        r = front_sh("install", "--config", str(d / "config.toml"), "--dir", str(route), "--real-criu",
                     str(REAL_CRIU), "--log-dir", str(route / "log"))
        assert r.returncode == 0, r.stderr
        # restart the daemon the way install/containerd.sh started it (same env, config, log)
        pid = int((d / "containerd.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        testenv.wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="containerd to stop")
        prefix = Path(info["ctr"]).parent.parent.parent
        path = f"{info['bin_dir']}:{prefix}/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        r = subprocess.run(["bash", "-c", f'env -i PATH="{path}" TMPDIR="{d}/tmp" HOME=/root setsid '
                            f'"{prefix}/usr/bin/containerd" --config "{d}/config.toml" >>"{info["log"]}" 2>&1 '
                            '</dev/null & echo $!'], capture_output=True, text=True, check=True)
        (d / "containerd.pid").write_text(r.stdout.strip())
        info["pid"] = int(r.stdout.strip())
        ctrd = testenv.Containerd(info)
        testenv.wait_for(lambda: ctrd.ctr("version", check=False).returncode == 0, what="containerd to restart")
        yield ctrd, route
    finally:
        front_sh("uninstall", "--config", str(Path(info["dir"]) / "config.toml"), "--dir", str(route))
        subprocess.run(["bash", str(sh), "stop", version], capture_output=True, env=env)
        shutil.rmtree(route, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.parametrize("version", VERSIONS)
def test_binaryname_route_on_live_containerd(version: str, tmp_path: Path) -> None:
    with restarted_with_route(version, tmp_path) as (ctrd, route):
        log = route / "log/criu-front.log"
        with ctrd.pod() as (c, pod_id, cfg):
            cid = ctrd.run_container(c, pod_id, cfg, "counter", ["/bin/sh", "-c", "while :; do sleep 0.2; done"])
            if ctrd.major_minor >= (2, 0):
                c.checkpoint_container(cid, str(tmp_path / "ckpt.tar"))
                text = log.read_text()
                assert "DUMP from runtime pid" in text, text
                # the daemon's own criu check used the real criu on its PATH, not the front
                assert f"runtime pid {ctrd.info['pid']}:" not in text
        # ctr: the wrapper as --runc-binary (saved with the container)
        name = f"route-{uuid.uuid4().hex[:6]}"
        ctrd.ctr("run", "-d", "--null-io", "--runc-binary", str(route / "bin/runc"), "--cgroup",
                 f"{ctrd.cgroup_parent}/{name}", ctrd.image, name, "/bin/sh", "-c", "while :; do sleep 0.2; done")
        try:
            before = log.stat().st_size if log.exists() else 0
            ctrd.ctr("t", "checkpoint", "--image-path", str(tmp_path / "img"), name)
            assert "DUMP from runtime pid" in log.read_text()[before:]
        finally:
            ctrd.ctr("t", "kill", "-s", "KILL", name, check=False)
            ctrd.ctr("t", "rm", "-f", name, check=False)
            ctrd.ctr("c", "rm", name, check=False)

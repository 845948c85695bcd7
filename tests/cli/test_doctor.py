"""``gpucr doctor`` against real containerd instances: four nodes, four correct reports.

1. no containerd at all; 2. containerd 1.7 started with NRI disabled; 3. containerd with NRI and gpucr's plugin
registered, but the default runtime handler not routed through the CRIU front; 4. everything ready (the handler
routed by ``install/front.sh install``, the plugin registered, CRIU 4.2 passing ``criu check``, the fake CUDA driver).
Each failing check must carry its fix, and the exit status must say whether a required check failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import testenv
from tests.fakes.cuda import fake_cuda_lib  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
INSTANCE = os.environ.get("GPUCR_INSTANCE", "")


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    """Run ``gpucr doctor --json`` and ``gpucr doctor``: (exit status, the JSON report, the text report)."""
    cmd = [sys.executable, "-m", "nri_plugin.cli.main", "doctor", *args]
    full = {**os.environ, **(env or {})}
    rj = subprocess.run([*cmd, "--json"], capture_output=True, text=True, cwd=testenv.REPO, env=full, timeout=120)
    rt = subprocess.run(cmd, capture_output=True, text=True, cwd=testenv.REPO, env=full, timeout=120)
    assert rj.returncode == rt.returncode, (rj.stderr, rt.stderr)
    assert rj.returncode in (0, 1) and rj.stdout, rj.stderr
    return rj.returncode, json.loads(rj.stdout), rt.stdout


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in report["checks"]:
        out.setdefault(c["name"], c)
    return out


def failed(report: dict[str, Any]) -> set[str]:
    return {c["name"] for c in report["checks"] if c["status"] == "fail"}


def node_config(where: Path) -> Path:
    """A node config whose paths all lie in ``where`` (root-only) and that asks for no OCI hook."""
    for d in ("state", "criu", "ckpt"):
        (where / d).mkdir(mode=0o700)
    path = where / "gpucr.toml"
    path.write_text(f'state_dir = "{where}/state"\ncriu_config_dir = "{where}/criu"\n'
                    f'checkpoint_root = "{where}/ckpt"\nhook_path = ""\n')
    os.chmod(path, 0o644)
    return path


@contextlib.contextmanager
def registered_plugin(socket: str, cfg: Path, where: Path, name: str, timeout: float) -> Iterator[Path]:
    """gpucr's plugin daemon ``--idx 90 --name NAME`` on the NRI ``socket`` with the node config ``cfg`` (its state
    dir ``where/state``, its output in ``where/plugin.log``), once its status file says it registered; terminated
    afterwards. Yields the status file."""
    log = (where / "plugin.log").open("w")
    p = subprocess.Popen([sys.executable, "-m", "nri_plugin.cli.main", "plugin", "--socket", socket,
                          "--config", str(cfg), "--idx", "90", "--name", name],
                         cwd=testenv.REPO, stdout=log, stderr=subprocess.STDOUT)
    status = where / "state/plugin.json"
    try:
        testenv.wait_for(lambda: status.exists() and json.loads(status.read_text())["registered"], timeout=timeout,
                         what=f"the plugin to register through {socket}: {status} (log {where / 'plugin.log'})")
        yield status
    finally:
        p.terminate()
        p.wait(timeout=20)
        log.close()


@pytest.fixture
def plugin(containerd: testenv.Containerd, root_dir: Path) -> Iterator[Path]:
    """gpucr's plugin daemon registered with ``containerd``; yields its node config."""
    cfg = node_config(root_dir)
    with registered_plugin(containerd.nri_socket, cfg, root_dir, f"doctor{os.getpid()}", timeout=20) as status:
        yield cfg
    assert not status.exists(), "the plugin must remove its status file when it exits"


def config_copy(containerd: testenv.Containerd, root_dir: Path) -> Path:
    """The instance's own containerd config, copied so routing it leaves the shared instance's file alone."""
    dst = root_dir / "containerd.toml"
    shutil.copyfile(Path(containerd.info["dir"]) / "config.toml", dst)
    return dst


def test_no_containerd(root_dir: Path) -> None:
    cfg = node_config(root_dir)
    rc, report, text = doctor("--address", str(root_dir / "containerd.sock"), "--containerd-config",
                              str(root_dir / "absent.toml"), "--config", str(cfg),
                              "--kubelet-config", str(root_dir / "no-kubelet.yaml"))
    assert rc == 1 and report["ready"] is False
    c = by_name(report)
    assert c["containerd"]["status"] == "fail"
    assert "no containerd socket" in c["containerd"]["detail"]
    assert "systemctl enable --now containerd" in c["containerd"]["fix"]
    assert c["NRI"]["status"] == "fail" and "containerd check first" in c["NRI"]["fix"]
    assert c["gpucr plugin"]["status"] == "fail" and "gpucr plugin --socket" in c["gpucr plugin"]["fix"]
    assert c["node config"]["status"] == "ok"
    assert "fix: install and start containerd" in text and text.rstrip().splitlines()[-1].startswith("not ready")


@pytest.mark.containerd(below="2.0")
def test_containerd_17_nri_off(root_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real containerd 1.7 started with NRI disabled, as the distributions ship it."""
    if os.geteuid() != 0:
        pytest.fail(testenv.deps_problem() or "needs root", pytrace=False)
    monkeypatch.setenv("GPUCR_INSTANCE", f"{INSTANCE or 'default'}-nrioff")
    monkeypatch.setenv("GPUCR_CONTAINERD_NRI_DISABLE", "true")
    try:
        ctrd = testenv.start("1.7.24")
        conf = Path(ctrd.info["dir"]) / "config.toml"
        rc, report, text = doctor("--address", ctrd.address, "--containerd-config", str(conf),
                                  "--config", str(node_config(root_dir)),
                                  "--kubelet-config", str(root_dir / "no-kubelet.yaml"))
    finally:
        testenv.stop("1.7.24")
    c = by_name(report)
    assert rc == 1
    assert c["containerd"]["status"] == "ok" and c["containerd"]["data"]["version"].lstrip("v").startswith("1.7.24")
    assert c["containerd config"]["status"] == "ok"
    assert c["NRI"]["status"] == "fail" and "disabled" in c["NRI"]["detail"]
    assert 'disable = false' in c["NRI"]["fix"] and "restart containerd" in c["NRI"]["fix"]
    assert f'socket_path = "{ctrd.nri_socket}"' in c["NRI"]["fix"]
    assert c["gpucr plugin"]["status"] == "fail"
    assert "NRI is disabled" in text


def test_handler_not_routed(containerd: testenv.Containerd, plugin: Path, root_dir: Path) -> None:
    conf = config_copy(containerd, root_dir)
    criu_on_path = {"PATH": f"{testenv.CRIU.parent}:{os.environ['PATH']}"}  # as on a node with CRIU installed
    rc, report, text = doctor("--address", containerd.address, "--containerd-config", str(conf), "--config",
                              str(plugin), "--kubelet-config", str(root_dir / "no-kubelet.yaml"), env=criu_on_path)
    c = by_name(report)
    assert rc == 1 and failed(report) == {"route runc"}, text
    assert c["CRIU"]["data"]["path"] == str(testenv.CRIU) and c["criu check"]["status"] == "ok"
    assert c["containerd"]["data"]["version"].lstrip("v").startswith(containerd.version)
    assert c["NRI"]["status"] == "ok" and c["gpucr plugin"]["status"] == "ok"
    assert c["gpucr plugin"]["data"]["socket"] == containerd.nri_socket
    # the instance's config sets containerd's defaults explicitly (install/containerd.sh): enough for gpucr
    req, reg = c["NRI plugin_request_timeout"], c["NRI plugin_registration_timeout"]
    assert req["status"] == "ok" and req["data"]["seconds"] == 2.0 and f"2s (set in {conf})" in req["detail"], req
    assert reg["status"] == "ok" and reg["data"]["seconds"] == 5.0, reg
    route = c["route runc"]
    assert route["data"]["gpucr"] is False and "not GPU-safe" in route["detail"]
    assert f"gpucr setup --apply --config {conf} --runtime runc" in route["fix"]


def test_everything_ready(containerd: testenv.Containerd, plugin: Path, root_dir: Path,
                          fake_cuda_lib: Path) -> None:  # noqa: F811 (fixture)
    conf = config_copy(containerd, root_dir)
    r = subprocess.run(["bash", str(testenv.INSTALL / "front.sh"), "install", "--config", str(conf), "--runtime", "runc",
                        "--dir", str(root_dir / "front"), "--prefix", str(root_dir / "lib"), "--real-criu",
                        str(testenv.CRIU), "--log-dir", str(root_dir / "log"), "--node-config", str(plugin)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rc, report, text = doctor("--address", containerd.address, "--containerd-config", str(conf), "--config",
                              str(plugin), "--kubelet-config", str(root_dir / "no-kubelet.yaml"),
                              "--libcuda", str(fake_cuda_lib), "--libnvml", str(fake_cuda_lib))
    c = by_name(report)
    assert rc == 0 and report["ready"] is True and not failed(report), text
    route = c["route runc"]["data"]
    assert route["gpucr"] and route["wrapper"] == str(root_dir / "front/bin/runc")
    assert route["real_criu"] == str(testenv.CRIU)
    assert c["CRIU"]["status"] == "ok" and c["CRIU"]["data"]["path"] == str(testenv.CRIU)
    assert c["criu check"]["status"] == "ok"
    assert c["CUDA driver"]["status"] == "ok" and c["CUDA driver"]["data"]["api"] >= 12080
    assert c["GPUs"]["data"]["gpus"], "the fake driver's GPUs come through NVML"
    assert c["checkpoint root"]["status"] == "ok"
    assert text.rstrip().splitlines()[-1] == "ready: every required check passed"
    assert c["annotations runc"]["status"] == "ok", c["annotations runc"]
    # a routed handler without gpucr.io/* in container_annotations (an install before them, or edited): a warning
    # with the exact line to write
    installed = conf.read_text()
    conf.write_text("".join(ln for ln in installed.splitlines(keepends=True) if "container_annotations" not in ln))
    rc, report, text = doctor("--address", containerd.address, "--containerd-config", str(conf), "--config",
                              str(plugin), "--kubelet-config", str(root_dir / "no-kubelet.yaml"),
                              "--libcuda", str(fake_cuda_lib), "--libnvml", str(fake_cuda_lib))
    a = by_name(report)["annotations runc"]
    assert a["status"] == "warn" and "starts fresh instead of failing" in a["detail"], a
    assert 'container_annotations = ["gpucr.io/*"] under [' in a["fix"] and str(conf) in a["fix"], a
    conf.write_text(installed)
    r = subprocess.run(["bash", str(testenv.INSTALL / "front.sh"), "uninstall", "--config", str(conf), "--runtime",
                        "runc", "--dir", str(root_dir / "front")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

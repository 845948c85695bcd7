"""``gpucr setup`` and ``gpucr doctor`` on containerd installed the two ways besides a distribution package, each on
real containerd 1.7.24 and 2.1.9 started with exactly that config (private socket, root and state given on the
command line; NRI at its default socket, as on such a node):

* a release tarball: no config file. doctor: NRI off on 1.7 (on with its socket on 2.x), the built-in runc handler
  not routed. ``setup --apply`` creates the file (version line, NRI on for 1.7, the runc handler through gpucr's
  wrapper); containerd accepts it (``config dump``), serves NRI, gpucr's plugin registers, doctor is ready;
  ``--revert`` removes the file and the directories it made.
* Docker's containerd.io package (tests/containerd_io.toml: CRI disabled, no version line). doctor: the CRI check
  fails with the fix. ``setup --apply`` refuses in one line, touching nothing; ``--apply --enable-cri`` enables CRI,
  NRI (1.7) and the route; then the same as above; ``--revert`` gives back the file byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.cli.doctor import can_lower_oom_score_adj
from nri_plugin.cri import CriClient
from tests import testenv
from tests.cli.test_doctor import by_name, doctor, failed, node_config, registered_plugin
from tests.conftest import VERSIONS
from tests.fakes.cuda import fake_cuda_lib  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
CONTAINERD_IO = (Path(__file__).parent.parent / "containerd_io.toml").read_bytes()
NRI_SOCKET = Path("/var/run/nri/nri.sock")  # containerd's default (1.7 and 2.x)
DEFAULT_CONFIG = Path("/etc/containerd/config.toml")
#: what a containerd on its defaults creates outside the root, state and socket the tests give it
DEFAULT_LEFTOVERS = (NRI_SOCKET, Path("/opt/containerd"))


def binary(version: str) -> Path:
    return testenv.TEST_ROOT / f"opt/containerd-{version}/usr/bin/containerd"


@contextlib.contextmanager
def daemon(version: str, config: Path | None, where: Path) -> Iterator[str]:
    """containerd ``version`` started as a user's is with ``config`` (None: no --config, so its default
    /etc/containerd/config.toml, which must not exist: a tarball install's defaults); yields its socket."""
    if config is None and DEFAULT_CONFIG.exists():
        pytest.fail(f"{DEFAULT_CONFIG} exists on this machine: the no-config case needs it absent", pytrace=False)
    existed = {p: p.exists() for p in (*DEFAULT_LEFTOVERS, NRI_SOCKET.parent)}
    if existed[NRI_SOCKET]:
        pytest.fail(f"{NRI_SOCKET} exists: another containerd serves NRI at the default socket", pytrace=False)
    where.mkdir(mode=0o700, exist_ok=True)
    sock = where / "c.sock"
    bindir = binary(version).parent
    cmd = [str(binary(version)), *(["--config", str(config)] if config else []), "--address", str(sock), "--root",
           str(where / "root"), "--state", str(where / "state")]
    log = (where / "containerd.log").open("a")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                         env={"PATH": f"{testenv.CRIU.parent}:{bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
                              "HOME": "/root", "TMPDIR": str(where)})
    try:
        testenv.wait_for(lambda: p.poll() is not None or subprocess.run(
            [str(bindir / "ctr"), "--address", str(sock), "version"], capture_output=True).returncode == 0,
            timeout=30, what=f"containerd {version} on {sock} (log {where / 'containerd.log'})")
        assert p.poll() is None, (where / "containerd.log").read_text()[-3000:]
        yield str(sock)
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
        for path, was in existed.items():
            if not was and path.is_socket():
                path.unlink()
        for path, was in existed.items():
            if not was and path.is_dir():
                subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def setup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "setup", *args], capture_output=True,
                          text=True, cwd=testenv.REPO, timeout=300)


#: what the test's own daemons and gpucr's plugin write under root_dir (not setup's business)
RUNTIME_DIRS = ("ctrd", "state", "plugin.log")


def tree(d: Path) -> dict[str, str]:
    """Every path under ``d`` (but RUNTIME_DIRS) with its mode and content hash: what revert must give back."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.relative_to(d).parts[0] in RUNTIME_DIRS:
            continue
        st = p.lstat()
        out[str(p)] = f"{st.st_mode:o} " + (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
    return out


def report(sock: str, config: Path, root: Path, **kw: Any) -> tuple[int, dict[str, dict[str, Any]], dict[str, Any]]:
    args = ["--address", sock, "--containerd-config", str(config), "--config", str(root / "gpucr.toml"),
            "--kubelet-config", str(root / "no-kubelet.yaml"), *[f"--{k}={v}" for k, v in kw.items()]]
    rc, rep, text = doctor(*args)
    return rc, by_name(rep), rep


def applied_and_ready(version: str, config: Path, root: Path, cuda: Path) -> None:
    """The applied config as containerd reads it, NRI served at its socket, the plugin registered, doctor ready."""
    major = int(version.split(".")[0])
    dump = subprocess.run([str(binary(version)), "--config", str(config), "config", "dump"], capture_output=True,
                          text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    eff = tomllib.loads(dump.stdout)
    wrapper = str(root / "setup/front-runc/bin/runc")
    cri = eff["plugins"]["io.containerd.grpc.v1.cri" if major == 1 else "io.containerd.cri.v1.runtime"]
    assert cri["containerd"]["runtimes"]["runc"]["options"]["BinaryName"] == wrapper
    assert eff["plugins"]["io.containerd.nri.v1.nri"]["disable"] is False
    assert "io.containerd.grpc.v1.cri" not in eff["disabled_plugins"]
    with daemon(version, config, root / "ctrd") as sock:
        testenv.wait_for(NRI_SOCKET.is_socket, timeout=20, what=f"containerd's NRI socket {NRI_SOCKET}")
        with CriClient(sock, timeout_s=10) as c:
            assert c.version().runtime_version.lstrip("v").startswith(version)
        with registered_plugin(str(NRI_SOCKET), root / "gpucr.toml", root, f"installs{os.getpid()}", timeout=30):
            rc, c, rep = report(sock, config, root, libcuda=cuda, libnvml=cuda)
    # a stock config leaves pods' oom_score_adj to root: where root cannot lower it (this CI machine, a node in a
    # container) doctor rightly fails that check (tests/cli/test_doctor_oom.py); everything else is ready
    host = set() if can_lower_oom_score_adj() else {"oom_score_adj"}
    assert failed(rep) == host and rc == (1 if host else 0), [x for x in rep["checks"] if x["status"] == "fail"]
    assert c["containerd config"]["status"] == "ok" and c["NRI"]["data"]["socket"] == str(NRI_SOCKET)
    route = c["route runc"]["data"]
    assert route["gpucr"] and route["wrapper"] == wrapper and route["real_criu"] == str(testenv.CRIU)


@pytest.mark.parametrize("version", VERSIONS)
def test_release_tarball_no_config(version: str, root_dir: Path, fake_cuda_lib: Path) -> None:  # noqa: F811
    node_config(root_dir)
    (root_dir / "etc").mkdir()  # the node's /etc, without containerd/ (the tarball makes none)
    config = root_dir / "etc/containerd/config.toml"
    with daemon(version, None, root_dir / "ctrd") as sock:
        if version.startswith("2."):
            testenv.wait_for(NRI_SOCKET.is_socket, timeout=20, what=f"containerd 2.x's NRI socket {NRI_SOCKET}")
        rc, c, rep = report(sock, config, root_dir)
    assert rc == 1 and c["containerd"]["status"] == "ok" and c["containerd config"]["status"] == "info"
    assert "built-in defaults" in c["containerd config"]["detail"]
    if version.startswith("1."):
        assert c["NRI"]["status"] == "fail" and "disables it by default" in c["NRI"]["detail"]
        assert "gpucr setup --apply" in c["NRI"]["fix"]
    else:
        assert c["NRI"]["status"] == "ok"
    assert c["route runc"]["status"] == "fail" and "built-in handler" in c["route runc"]["detail"]
    assert f"gpucr setup --apply --config {config} --runtime runc" in c["route runc"]["fix"]
    before = tree(root_dir)

    r = setup("--apply", "--config", str(config), "--state-dir", str(root_dir / "setup"), "--real-criu",
              str(testenv.CRIU), "--containerd", str(binary(version)), "--prefix", str(root_dir / "lib"))
    assert r.returncode == 0, r.stderr
    assert "created" in r.stderr
    applied_and_ready(version, config, root_dir, fake_cuda_lib)

    r = setup("--revert", "--state-dir", str(root_dir / "setup"))
    assert r.returncode == 0, r.stderr
    assert not any((root_dir / d).exists() for d in ("etc/containerd", "setup", "lib"))
    assert tree(root_dir) == before


@pytest.mark.parametrize("version", VERSIONS)
def test_docker_containerd_io(version: str, root_dir: Path, fake_cuda_lib: Path) -> None:  # noqa: F811
    node_config(root_dir)
    config = root_dir / "containerd/config.toml"
    config.parent.mkdir()
    config.write_bytes(CONTAINERD_IO)
    with daemon(version, config, root_dir / "ctrd") as sock:
        rc, c, rep = report(sock, config, root_dir)
        assert not NRI_SOCKET.exists(), "NRI serves CRI: without CRI containerd opens no NRI socket"
    assert rc == 1
    assert c["containerd"]["status"] == "fail" and "CRI Version" in c["containerd"]["detail"]
    assert c["CRI"]["status"] == "fail" and 'disabled_plugins = ["cri"]' in c["CRI"]["detail"]
    assert f"gpucr setup --apply --enable-cri --config {config}" in c["CRI"]["fix"]
    assert c["NRI"]["fix"] == "fix the CRI check first" and c["route runc"]["fix"] == "fix the CRI check first"
    before = tree(root_dir)
    args = ["--config", str(config), "--state-dir", str(root_dir / "setup"), "--real-criu", str(testenv.CRIU),
            "--containerd", str(binary(version)), "--prefix", str(root_dir / "lib")]

    r = setup("--apply", *args)
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert r.returncode == 1 and len(errors) == 1, r.stderr
    assert "CRI plugin is disabled" in errors[0] and "--enable-cri" in errors[0]
    assert tree(root_dir) == before

    r = setup("--apply", "--enable-cri", *args)
    assert r.returncode == 0, r.stderr
    applied_and_ready(version, config, root_dir, fake_cuda_lib)

    r = setup("--revert", "--state-dir", str(root_dir / "setup"))
    assert r.returncode == 0, r.stderr
    assert config.read_bytes() == CONTAINERD_IO and tree(root_dir) == before

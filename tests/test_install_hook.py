"""install/hook.sh: the OCI hook at the node config's hook_path is a root-owned launcher of a root-owned copy of
gpucr's code (install/code.sh), run the way a runtime runs it; the copy is shared with the CRIU front's routes and
removed when the last of them goes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from nri_plugin.policy import ContainerRecord, load_record, write_record
from nri_plugin.policy.config import NodeConfig
from tests import testenv
from tests.testenv import one_error

HOOK_SH = testenv.INSTALL / "hook.sh"
REAL_CRIU = testenv.TEST_ROOT / "bin/criu"


def hook_sh(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", str(HOOK_SH), *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True)


def run_hook(hook: Path, stage: str, state: dict[str, object], state_dir: Path) -> subprocess.CompletedProcess[str]:
    """As runc runs an OCI hook: the state JSON on stdin, argv as the plugin injects it, no environment, cwd /."""
    return subprocess.run([str(hook), stage, "--state-dir", str(state_dir)], input=json.dumps(state), text=True,
                          capture_output=True, env={}, cwd="/", timeout=30)


def test_default_path_is_the_node_configs_hook_path() -> None:
    assert f"HOOK={NodeConfig().hook_path}\n" in HOOK_SH.read_text()


def test_installed_hook_records_a_container(tmp_path: Path, root_dir: Path) -> None:
    hook, prefix, state_dir = root_dir / "libexec/gpucr/gpucr-hook", root_dir / "lib/gpucr", tmp_path / "state"
    r = hook_sh("install", "--path", str(hook), "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr
    st = hook.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755)
    assert hook.read_text().startswith("#!/usr/bin/python3 -SE\n") and f'sys.path.insert(0, "{prefix}")' in \
        hook.read_text()
    for p in [prefix, *prefix.rglob("*")]:
        s = p.stat()
        assert (s.st_uid, s.st_gid) == (0, 0) and stat.S_IMODE(s.st_mode) in (0o755, 0o644), p
    assert "runs" in hook_sh("status", "--path", str(hook)).stdout
    first = hook.read_bytes()
    assert hook_sh("install", "--path", str(hook), "--prefix", str(prefix)).returncode == 0
    assert hook.read_bytes() == first
    files = {p: p.stat().st_mtime_ns for p in prefix.rglob("*")}
    # a real OCI hook run: createRuntime records pid and cgroup of the container's init, poststop forgets it
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        cid = "c0ffee" * 4
        write_record(state_dir, ContainerRecord(container_id=cid, name="app", pod_id="p", pod_name="pod",
                                                pod_namespace="default", managed=True, reason="annotation"))
        oci = {"ociVersion": "1.0.2", "id": cid, "status": "created", "pid": sleeper.pid, "bundle": str(tmp_path)}
        r = run_hook(hook, "create-runtime", oci, state_dir)
        assert r.returncode == 0 and "error" not in r.stderr, r.stderr
        rec = load_record(state_dir, cid)
        assert rec.pid == sleeper.pid and rec.cgroup, rec
        assert f":{rec.cgroup}\n" in Path(f"/proc/{sleeper.pid}/cgroup").read_text()
        r = run_hook(hook, "poststop", {**oci, "status": "stopped"}, state_dir)
        assert r.returncode == 0 and "record removed" in r.stderr, r.stderr
        assert not (state_dir / "containers" / f"{cid}.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # nothing was written into the copy at run time (it is precompiled)
    assert {p: p.stat().st_mtime_ns for p in prefix.rglob("*")} == files
    r = hook_sh("uninstall", "--path", str(hook))
    assert r.returncode == 0, r.stderr
    assert not hook.exists() and not hook.parent.exists() and not prefix.exists()
    assert hook_sh("status", "--path", str(hook)).returncode == 3


def test_hook_and_front_share_the_copy(tmp_path: Path, root_dir: Path) -> None:
    hook, prefix, route = root_dir / "gpucr-hook", root_dir / "lib", root_dir / "route"
    config = tmp_path / "config.toml"
    config.write_text('version = 3\n[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]\n'
                      "  SystemdCgroup = false\n")
    before = config.read_bytes()
    assert hook_sh("install", "--path", str(hook), "--prefix", str(prefix)).returncode == 0
    front = ["bash", str(testenv.INSTALL / "front.sh")]
    r = subprocess.run([*front, "install", "--config", str(config), "--dir", str(route), "--prefix", str(prefix),
                        "--real-criu", str(REAL_CRIU)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (prefix / "install-users").read_text().split() == [str(hook), str(route / "path/criu")]
    r = hook_sh("uninstall", "--path", str(hook))
    assert r.returncode == 0 and "still used by" in r.stderr and (prefix / "hooks/oci_hook.py").exists()
    assert subprocess.run([str(route / "path/criu"), "--version"], capture_output=True).returncode == 0
    r = subprocess.run([*front, "uninstall", "--config", str(config), "--dir", str(route)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert not prefix.exists() and config.read_bytes() == before


def test_hook_install_refuses_clearly(root_dir: Path) -> None:
    foreign = root_dir / "gpucr-hook"
    foreign.write_text("#!/bin/sh\nexit 0\n")
    line = one_error(hook_sh("install", "--path", str(foreign), "--prefix", str(root_dir / "lib")))
    assert "was not written by install/hook.sh" in line and foreign.read_text() == "#!/bin/sh\nexit 0\n"
    assert "was not written by install/hook.sh" in one_error(hook_sh("uninstall", "--path", str(foreign)))
    assert foreign.exists()
    for mode in (0o777, 0o1777):  # sticky like /tmp too: the front refuses to run from there, so does the install
        open_dir = root_dir / f"open-{mode:o}"
        open_dir.mkdir()
        open_dir.chmod(mode)
        line = one_error(hook_sh("install", "--path", str(open_dir / "gpucr-hook"), "--prefix", str(root_dir / "lib")))
        assert (f"{open_dir} is group- or world-writable (mode {mode:04o}); fix: chmod go-w {open_dir}" in line
                and os.listdir(open_dir) == []), line
    other = root_dir / "other-owned"
    other.mkdir()
    os.chown(other, 65534, 65534)
    line = one_error(hook_sh("install", "--path", str(root_dir / "h"), "--prefix", str(other / "lib")))
    assert f"would be changeable by others: {other} is owned by uid 65534, not root; fix: chown root {other}" \
        in line and not (other / "lib").exists()
    not_ours = root_dir / "pkg"
    not_ours.mkdir()
    line = one_error(hook_sh("install", "--path", str(root_dir / "h"), "--prefix", str(not_ours)))
    assert "was not made by install/front.sh or install/hook.sh" in line
    assert "must run as root" in one_error(hook_sh("install", "--path", "/tmp/x/gpucr-hook", user=65534))
    assert not (root_dir / "lib").exists() and not (root_dir / "h").exists()


@pytest.mark.parametrize("args, words", [(["--path", "relative/hook"], "must be an absolute path"),
                                         (["--bogus"], "unknown option '--bogus'")])
def test_hook_bad_options(args: list[str], words: str) -> None:
    assert words in one_error(hook_sh("install", *args))

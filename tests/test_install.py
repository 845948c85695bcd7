"""install/ scripts: a missing prerequisite stops set-up with one clear line; a failed containerd start shows its log.

These run the real scripts (as root, like `make test`), in throw-away GPUCR_TEST_ROOT / GPUCR_INSTANCE settings so
the shared installation is never touched.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.testenv import CRIU, INSTALL, deps_problem, one_error

pytestmark = pytest.mark.integration


def _run(script: str, *args: str, env: dict[str, str] | None = None, user: int | None = None,
         netns: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", str(INSTALL / script), *args]
    if netns:
        cmd = ["unshare", "--net", *cmd]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def test_not_root_is_one_clear_line(tmp_path: Path) -> None:
    line = one_error(_run("deps.sh", "install", user=65534, env={"GPUCR_TEST_ROOT": str(tmp_path / "r")}), None)
    assert "must run as root" in line


def test_unsupported_distribution_is_one_clear_line(tmp_path: Path) -> None:
    fake = tmp_path / "debian_version"
    fake.write_text("11.9\n")
    r = _run("deps.sh", "install", env={"GPUCR_TEST_ROOT": str(tmp_path / "r"), "GPUCR_DEBIAN_VERSION_FILE": str(fake)})
    line = one_error(r, None)
    assert "unsupported distribution" in line and "11.9" in line
    r = _run("deps.sh", "install", env={"GPUCR_TEST_ROOT": str(tmp_path / "r"),
                                        "GPUCR_DEBIAN_VERSION_FILE": str(tmp_path / "missing")})
    assert "unsupported distribution" in one_error(r, None)


def test_no_network_is_one_clear_line(tmp_path: Path) -> None:
    # a fresh root (nothing installed) inside a network namespace with no route to the package registry
    r = _run("deps.sh", "install", env={"GPUCR_TEST_ROOT": str(tmp_path / "r")}, netns=True)
    assert "no network to the Debian package registry" in one_error(r, None)


def test_second_install_is_quick_and_keeps_criu_42(tmp_path: Path) -> None:
    """`make test` ran install/deps.sh already: a second run only checks (about 0.1 s here), and the CRIU every test
    uses is the 4.2.x it installed, which answers `criu check`."""
    assert deps_problem() is None, deps_problem()
    before = os.path.realpath(CRIU), CRIU.read_bytes()
    start = time.monotonic()
    r = _run("deps.sh", "install")
    assert r.returncode == 0 and "already installed" in r.stderr, r.stderr
    assert time.monotonic() - start < 5
    assert (os.path.realpath(CRIU), CRIU.read_bytes()) == before
    v = subprocess.run([str(CRIU), "--version"], capture_output=True, text=True, check=True).stdout
    assert v.startswith("Version: 4.") and int(v.split(".")[1]) >= 2, v
    r = subprocess.run([str(CRIU), "check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Looks good" in r.stdout + r.stderr, r.stdout + r.stderr


def test_unknown_containerd_version_is_refused() -> None:
    line = one_error(_run("containerd.sh", "start", "1.6"), None)
    assert "unsupported containerd version '1.6'" in line and "1.7.24" in line


def test_failed_containerd_start_prints_log_tail(tmp_path: Path) -> None:
    assert deps_problem() is None, deps_problem()
    bad = tmp_path / "bad.toml"
    bad.write_text("[plugins\nthis is not toml\n")
    env = {"GPUCR_INSTANCE": f"badstart{os.getpid()}", "GPUCR_CONTAINERD_EXTRA_CONFIG": str(bad)}
    try:
        r = _run("containerd.sh", "start", "2.1", env=env)
        assert r.returncode != 0
        assert "last lines of" in r.stderr and "containerd.log" in r.stderr
        # the tail itself is there: containerd's own complaint about the config
        assert "toml" in r.stderr.lower() or "config" in r.stderr.lower(), r.stderr
    finally:
        _run("containerd.sh", "stop", "2.1", env=env)
    assert not any(p.name.startswith(f"ctrd-2.1.9-badstart") for p in Path(os.environ.get(
        "GPUCR_TEST_ROOT", "/var/lib/gpucr-test")).iterdir())

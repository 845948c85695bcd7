"""``gpucr setup``'s refusals and report (the full apply/revert round trip on a live containerd, from the installed
package: tests/package/roundtrip.py, run by .ci/run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nri_plugin.cli.main import main
from tests.testenv import REPO


def _gpucr(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "nri_plugin.cli.main", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_status_says_not_applied(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["setup", "--state-dir", str(tmp_path / "state")]) == 3
    assert "not applied" in capsys.readouterr().out


def test_apply_needs_root(tmp_path: Path) -> None:
    r = _gpucr("setup", "--apply", "--config", str(tmp_path / "c.toml"), "--state-dir", str(tmp_path / "s"),
               user=65534)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "gpucr setup: error: must run as root (it edits containerd's config and installs root-owned routes)"]


def test_apply_without_config_is_one_line_and_touches_nothing(tmp_path: Path) -> None:
    """A config missing with its directories is a wrong --config (a tarball's /etc/containerd/config.toml is missing
    in an existing /etc: gpucr setup creates it, tests/cli/test_setup_installs.py)."""
    state = tmp_path / "state"
    r = _gpucr("setup", "--apply", "--config", str(tmp_path / "no/such/config.toml"), "--state-dir", str(state))
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert r.returncode == 1 and len(errors) == 1 and "does not exist" in errors[0] and "--config" in errors[0]
    assert not state.exists()


def test_missing_config_needs_the_containerd_version(tmp_path: Path) -> None:
    """Creating a config takes its schema from the containerd binary; none runnable: one line, nothing made."""
    (tmp_path / "etc").mkdir()
    state = tmp_path / "state"
    r = _gpucr("setup", "--apply", "--config", str(tmp_path / "etc/containerd/config.toml"), "--state-dir",
               str(state), "--real-criu", "/bin/true", "--containerd", str(tmp_path / "no-containerd"))
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert r.returncode == 1 and len(errors) == 1 and "--containerd PATH" in errors[0], r.stderr
    assert not state.exists() and not (tmp_path / "etc/containerd").exists()


def test_revert_with_nothing_applied_changes_nothing(tmp_path: Path) -> None:
    r = _gpucr("setup", "--revert", "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 0 and "nothing applied" in r.stderr and not (tmp_path / "state").exists()

"""``gpucr plugin``: the event list, and clear errors for bad input (no daemon started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.testenv import REPO


def gpucr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env=env)


def test_events_lists_subscriptions() -> None:
    r = gpucr("plugin", "--logger", "--events")
    assert r.returncode == 0
    lines = r.stdout.split()
    assert lines[0] == "run_pod_sandbox" and "create_container" in lines and lines[-1] == "remove_container"
    assert len(lines) == 11  # everything containerd 1.7/2.1 can deliver (mask 0x7FF)


def test_bad_config_and_bad_socket_fd(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = gpucr("plugin", "--logger", "--config", str(bad), "--events")
    assert r.returncode == 1 and f"invalid plugin config in {bad}" in r.stderr
    r = gpucr("plugin", "--logger", "--config", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "cannot read --config" in r.stderr
    r = gpucr("plugin", env={"NRI_PLUGIN_SOCKET": "nope", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "NRI_PLUGIN_SOCKET='nope' is not a usable socket fd" in r.stderr
    r = gpucr("plugin", "--idx", "7", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 1 and "plugin index '7' must be exactly two digits" in r.stderr


def test_gpucr_policy_plugin_events_and_bad_node_config(tmp_path: Path) -> None:
    r = gpucr("plugin", "--events", "--config", str(tmp_path / "none.toml"))
    assert r.returncode == 1 and "config file" in r.stderr and "does not exist" in r.stderr
    good = tmp_path / "ok.toml"
    good.write_text("manage_gpu_containers = true\n")
    r = gpucr("plugin", "--events", "--config", str(good))
    assert r.returncode == 0 and r.stdout.split() == [
        "create_container", "post_start_container", "stop_container", "remove_container"]  # the last three: timers

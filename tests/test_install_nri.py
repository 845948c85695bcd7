"""install/nri_config.py (gpucr setup's NRI step) on real files: enable NRI with the smallest change, undo it byte for
byte, refuse (one line, file untouched) what it cannot do safely. Runs the script as gpucr setup does."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from nri_plugin.cli.setup import default_runtime
from tests.testenv import INSTALL

NRI = "io.containerd.nri.v1.nri"
V2_OFF = """version = 2
root = "/var/lib/containerd"   # a comment kept as it is

[plugins]
  [plugins."io.containerd.nri.v1.nri"]
    socket_path = "/run/x/nri.sock"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "nvidia"
"""


def _run(cmd: str, config: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/python3", "-S", "-E", str(INSTALL / "nri_config.py"), cmd, str(config),
                           str(state)], capture_output=True, text=True, timeout=30)


def _roundtrip(tmp_path: Path, text: str) -> tuple[str, str]:
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    config.write_text(text)
    r = _run("enable", config, state)
    assert r.returncode == 0, r.stderr
    after = config.read_text()
    doc = tomllib.loads(after)
    assert doc["plugins"][NRI]["disable"] is False
    r2 = _run("revert", config, state)
    assert r2.returncode == 0, r2.stderr
    assert config.read_text() == text and not list(state.iterdir())
    return after, r.stderr


def test_v2_table_without_disable_gets_one_line(tmp_path: Path) -> None:
    after, msg = _roundtrip(tmp_path, V2_OFF)
    added = [ln for ln in after.splitlines() if ln not in V2_OFF.splitlines()]
    assert added == ["    disable = false"] and "a copy of the file" in msg


def test_v2_disable_true_is_flipped(tmp_path: Path) -> None:
    text = V2_OFF.replace('    socket_path', '    disable = true\n    socket_path')
    after, _ = _roundtrip(tmp_path, text)
    assert "disable = true" not in after and after.count("\n") == text.count("\n")


def test_v2_quoted_disable_is_flipped_in_place(tmp_path: Path) -> None:
    """The key's line is found however the key is written (install/toml_edit.py, as for a handler's BinaryName)."""
    text = V2_OFF.replace('    socket_path', '    "disable" = true\n    socket_path')
    after, _ = _roundtrip(tmp_path, text)
    assert '    disable = false\n    socket_path' in after and after.count("\n") == text.count("\n")


def test_v2_without_nri_table_gets_it_appended(tmp_path: Path) -> None:
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause"\n'
    after, _ = _roundtrip(tmp_path, text)
    assert after.startswith(text) and after.endswith('[plugins."io.containerd.nri.v1.nri"]\n  disable = false\n')


def test_v3_default_is_enabled_already(tmp_path: Path) -> None:
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    config.write_text("version = 3\n")
    r = _run("enable", config, state)
    assert r.returncode == 0 and "already enabled" in r.stderr
    assert config.read_text() == "version = 3\n"
    assert _run("revert", config, state).returncode == 0 and config.read_text() == "version = 3\n"


def test_imports_get_a_drop_in_carrying_the_table(tmp_path: Path) -> None:
    text = f'imports = ["{tmp_path}/conf.d/*.toml"]\n' + V2_OFF
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    config.write_text(text)
    r = _run("enable", config, state)
    assert r.returncode == 0 and "drop-in" in r.stderr, r.stderr
    assert config.read_text() == text
    drop = tomllib.loads((tmp_path / "conf.d/gpucr-nri.toml").read_text())
    assert drop["plugins"][NRI] == {"socket_path": "/run/x/nri.sock", "disable": False} and drop["version"] == 2
    assert _run("revert", config, state).returncode == 0
    assert not (tmp_path / "conf.d").exists() and config.read_text() == text


def test_revert_refuses_a_config_edited_since(tmp_path: Path) -> None:
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    config.write_text(V2_OFF)
    assert _run("enable", config, state).returncode == 0
    edited = config.read_text() + "# someone's edit\n"
    config.write_text(edited)
    r = _run("revert", config, state)
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert r.returncode == 1 and len(errors) == 1 and "edited since" in errors[0] and "by hand" in errors[0]
    assert config.read_text() == edited and (state / "nri.json").exists()


def test_dotted_nri_settings_are_refused_untouched(tmp_path: Path) -> None:
    text = 'version = 2\n[plugins]\n  "io.containerd.nri.v1.nri".disable = true\n'
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    config.write_text(text)
    r = _run("enable", config, state)
    assert r.returncode == 1 and "by hand" in r.stderr and config.read_text() == text
    assert not (state / "nri.json").exists()


def test_default_runtime_is_the_cri_default(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(V2_OFF)
    assert default_runtime(config) == "nvidia"
    config.write_text("version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd]\n  default_runtime_name = 'x'\n")
    assert default_runtime(config) == "x"
    config.write_text("version = 2\n")
    assert default_runtime(config) == "runc"

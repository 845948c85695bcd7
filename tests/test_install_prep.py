"""install/config_prep.py (gpucr setup's first step) on real files: the two containerd installs whose config the
other steps cannot edit as it is. Docker's containerd.io package ships ``tests/containerd_io.toml`` (its
``/etc/containerd/config.toml``, as docker/containerd-packaging's common/containerd.toml holds it: CRI disabled, no
version line); a release tarball ships none. Runs the script as gpucr setup does; the same configs on real containerd
1.7 and 2.1: tests/cli/test_setup_installs.py."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from nri_plugin.cli.setup import SetupError, check_cri, read_config
from tests.testenv import INSTALL

CONTAINERD_IO = (Path(__file__).parent / "containerd_io.toml").read_bytes()


def _run(cmd: str, config: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/python3", "-S", "-E", str(INSTALL / "config_prep.py"), cmd, str(config),
                           str(state), *extra], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("major,version", [(1, 2), (2, 3)])
def test_no_config_is_created_with_its_version_and_removed_again(tmp_path: Path, major: int, version: int) -> None:
    config, state = tmp_path / "etc/containerd/config.toml", tmp_path / "state"
    state.mkdir()
    r = _run("prepare", config, state, "--major", str(major))
    assert r.returncode == 0 and "created" in r.stderr, r.stderr
    assert tomllib.loads(config.read_text()) == {"version": version}
    assert config.stat().st_mode & 0o777 == 0o644
    r = _run("revert", config, state)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "etc").exists() and not list(state.iterdir())


def test_a_created_config_edited_since_is_not_removed(tmp_path: Path) -> None:
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    assert _run("prepare", config, state, "--major", "2").returncode == 0
    config.write_text(config.read_text() + "# someone's edit\n")
    r = _run("revert", config, state)
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert r.returncode == 1 and len(errors) == 1 and "edited since" in errors[0] and "by hand" in errors[0]
    assert config.exists() and (state / "config_prep.json").exists()


def test_containerd_io_config_is_refused_without_enable_cri(tmp_path: Path) -> None:
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    config.write_bytes(CONTAINERD_IO)
    r = _run("prepare", config, state, "--major", "1")
    assert r.returncode == 1 and "--enable-cri" in r.stderr
    assert config.read_bytes() == CONTAINERD_IO and not list(state.iterdir())
    with pytest.raises(SetupError) as e:  # gpucr setup refuses it before any step, in one line
        check_cri(config, read_config(config), enable_cri=False)
    msg = str(e.value)
    assert "CRI plugin is disabled" in msg and 'disabled_plugins = ["cri"]' in msg and "--enable-cri" in msg
    assert "\n" not in msg
    check_cri(config, read_config(config), enable_cri=True)


@pytest.mark.parametrize("major,version", [(1, 2), (2, 3)])
def test_containerd_io_config_gets_cri_and_version_and_back(tmp_path: Path, major: int, version: int) -> None:
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    config.write_bytes(CONTAINERD_IO)
    r = _run("prepare", config, state, "--major", str(major), "--enable-cri")
    assert r.returncode == 0, r.stderr
    assert tomllib.loads(config.read_text()) == {"version": version, "disabled_plugins": []}
    changed = [ln for ln in config.read_text().splitlines() if ln not in CONTAINERD_IO.decode().splitlines()]
    assert changed == [f"version = {version}", "disabled_plugins = []"]  # the comments all kept
    assert _run("revert", config, state).returncode == 0
    assert config.read_bytes() == CONTAINERD_IO and not list(state.iterdir())


def test_version_1_config_with_plugin_tables_is_refused_untouched(tmp_path: Path) -> None:
    text = 'disabled_plugins = ["cri"]\n[plugins.cri]\n  sandbox_image = "pause"\n'
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    config.write_text(text)
    r = _run("prepare", config, state, "--major", "1", "--enable-cri")
    assert r.returncode == 1 and "version 1" in r.stderr and "convert it" in r.stderr
    assert config.read_text() == text and not list(state.iterdir())


def test_a_versioned_config_running_cri_is_left_alone(tmp_path: Path) -> None:
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    text = 'version = 2\ndisabled_plugins = ["cri"]  # a version 2 config names plugins by full ID: no effect\n'
    config.write_text(text)
    r = _run("prepare", config, state)
    assert r.returncode == 0 and "needs no preparation" in r.stderr
    assert _run("revert", config, state).returncode == 0 and config.read_text() == text


def test_versionless_config_needs_the_containerd_version(tmp_path: Path) -> None:
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    config.write_text('disabled_plugins = []\n')
    r = _run("prepare", config, state)
    assert r.returncode == 1 and "--containerd PATH" in r.stderr and config.read_text() == 'disabled_plugins = []\n'


def test_full_cri_id_in_a_versioned_config_is_taken_out_alone(tmp_path: Path) -> None:
    text = ('version = 3\n# keep me\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs"]\n')
    config, state = tmp_path / "config.toml", tmp_path / "state"
    state.mkdir()
    config.write_text(text)
    assert _run("prepare", config, state).returncode == 1 and config.read_text() == text
    r = _run("prepare", config, state, "--enable-cri")
    assert r.returncode == 0, r.stderr
    assert config.read_text() == text.replace('"io.containerd.grpc.v1.cri", ', "")
    assert _run("revert", config, state).returncode == 0 and config.read_text() == text

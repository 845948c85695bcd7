"""policy.node_paths: every path of the node config judged, each problem one line naming the key, the path, what
gpucr does without it and the fix; what is unusable is not used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nri_plugin.policy.config import NodeConfig
from nri_plugin.policy.node_paths import check_node_paths
from tests.roottmp import root_tmp  # noqa: F401 (fixture)


def node(root_tmp: Path, **kw: object) -> NodeConfig:
    hook = root_tmp / "libexec/gpucr-hook"
    if not hook.exists():
        hook.parent.mkdir(parents=True)
        hook.write_text("#!/bin/sh\n")
        hook.chmod(0o755)
    base: dict[str, object] = {"state_dir": root_tmp / "run/gpucr", "criu_config_dir": root_tmp / "lib/criu",
                               "runc_criu_config": root_tmp / "etc/runc.conf", "checkpoint_root": root_tmp / "ckpt",
                               "hook_path": str(hook)}
    return NodeConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests need root (they judge ownership)", pytrace=False)


def test_a_sound_node_uses_everything(root_tmp: Path) -> None:
    v = check_node_paths(node(root_tmp))
    assert (v.hooks, v.records, v.criu_config, v.runc_criu_config, v.problems) == (True, True, True, True, ())


def test_missing_hook_one_line_naming_it_and_the_installer(root_tmp: Path) -> None:
    v = check_node_paths(node(root_tmp, hook_path=str(root_tmp / "nohook")))
    assert not v.hooks and v.records and v.criu_config
    (line,) = v.problems
    assert line.startswith(f"hook_path {root_tmp / 'nohook'} is unusable: {root_tmp / 'nohook'} does not exist; "
                           "gpucr injects no OCI hooks")
    assert "fix: install it with `install/hook.sh install`" in line


def test_no_hook_configured_is_no_problem(root_tmp: Path) -> None:
    v = check_node_paths(node(root_tmp, hook_path=""))
    assert not v.hooks and v.problems == ()


def test_the_defaults_name_the_default_hook() -> None:
    """On a node without gpucr's hook installed (this test machine), the defaults say so with the fix."""
    default = NodeConfig()
    if os.path.exists(default.hook_path):
        pytest.fail(f"{default.hook_path} is installed on this machine: this test needs it absent", pytrace=False)
    v = check_node_paths(default)
    assert not v.hooks
    assert [p for p in v.problems if p.startswith("hook_path /usr/libexec/gpucr/gpucr-hook is unusable")]


@pytest.mark.parametrize("key", ["state_dir", "criu_config_dir", "runc_criu_config", "checkpoint_root", "libcuda"])
def test_an_unsafe_path_is_reported_and_left_unused(root_tmp: Path, key: str) -> None:
    bad = root_tmp / "shared"
    bad.mkdir()
    bad.chmod(0o777)
    target = bad / ("lib.so" if key == "libcuda" else "x")
    if key in ("runc_criu_config", "libcuda"):
        target.write_text("")
    cfg = node(root_tmp, **{key: str(target) if key == "libcuda" else target})
    v = check_node_paths(cfg)
    (line,) = v.problems
    assert line.startswith(f"{key} {target} is unusable: {bad} is group- or world-writable (mode 0777); ")
    assert f"fix: chown root:root {bad}; chmod go-w {bad}" in line
    assert v.records == (key != "state_dir") and v.hooks == (key != "state_dir")
    assert v.criu_config == (key != "criu_config_dir") and v.runc_criu_config == (key != "runc_criu_config")


def test_missing_optional_paths_are_fine_but_a_missing_absolute_libcuda_is_not(root_tmp: Path) -> None:
    assert check_node_paths(node(root_tmp)).problems == ()  # state, criu dirs, runc.conf, checkpoint root: absent
    v = check_node_paths(node(root_tmp, libcuda=str(root_tmp / "libcuda.so.1")))
    (line,) = v.problems
    assert line.startswith(f"libcuda {root_tmp / 'libcuda.so.1'} is unusable: ") and "does not exist" in line
    assert check_node_paths(node(root_tmp, libcuda="libcuda.so.1")).problems == ()  # a soname: the loader's job

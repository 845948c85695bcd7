"""install/plugin.sh's refusals, each one error line and nothing touched (the install itself, with containerd
launching the plugin: tests/nri/test_preregistered.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import testenv
from tests.testenv import one_error

PLUGIN_SH = testenv.INSTALL / "plugin.sh"


def plugin_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(PLUGIN_SH), *args], capture_output=True, text=True)


@pytest.mark.parametrize("case", ["foreign-launcher", "foreign-venv", "venv-in-checkout", "bad-index",
                                  "writable-dir"])
def test_refusals_touch_nothing(root_dir: Path, case: str) -> None:
    tmp_path = root_dir  # root's alone: under a world-writable /tmp every case would be refused for that first
    plugins, venv = tmp_path / "plugins", tmp_path / "venv"
    plugins.mkdir()
    args = ["--nri-plugin-dir", str(plugins), "--venv", str(venv), "--log-file", str(tmp_path / "log/p.log")]
    if case == "foreign-launcher":
        (plugins / "10-gpucr").write_text("#!/bin/sh\necho someone else's\n")
        expect = f"{plugins}/10-gpucr exists and was not written by install/plugin.sh"
    elif case == "foreign-venv":
        venv.mkdir()
        expect = f"{venv} exists and was not made by install/plugin.sh"
    elif case == "venv-in-checkout":
        args[3] = str(testenv.REPO / ".plugin-venv")
        expect = f"{testenv.REPO}/.plugin-venv is inside the checkout"
    elif case == "bad-index":
        args += ["--index", "7"]
        expect = "--index 7 must be two digits"
    else:
        plugins.chmod(0o777)
        expect = f"--nri-plugin-dir {plugins}/10-gpucr would be changeable by others: {plugins} is"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    err = one_error(plugin_sh("install", *args))
    assert expect in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not (testenv.REPO / ".plugin-venv").exists()


def test_status_and_uninstall_of_nothing(tmp_path: Path) -> None:
    r = plugin_sh("status", "--nri-plugin-dir", str(tmp_path))
    assert r.returncode == 3 and r.stdout.strip() == f"{tmp_path}/10-gpucr: not installed"
    r = plugin_sh("uninstall", "--nri-plugin-dir", str(tmp_path), "--venv", str(tmp_path / "venv"))
    assert r.returncode == 0 and "is not installed" in r.stderr

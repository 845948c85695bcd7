"""Fixtures of the NRI tests (beside the foundation's tests/conftest.py, which this does not change).

``pre_registered``: a second private containerd of the same version (instance ``$GPUCR_INSTANCE-pre``) with
``gpucr plugin --logger`` placed in its NRI plugin directory as ``33-gpucr-pre`` plus a ``conf.d`` config;
``pre_registered_policy``: the same (instance ``-prp``) with gpucr's policy plugin installed there as ``10-gpucr`` by
``install/plugin.sh install`` (from a root-owned venv, as on a node). containerd only
scans that directory when NRI starts, so the instance is started by install/containerd.sh, the plugin placed, and
containerd restarted with the very command line the script uses (same config, PATH, TMPDIR, pid file), so
``containerd.sh stop`` cleans it up as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import testenv
from tests.testenv import INSTALL, Containerd

PLUGIN_FILE = "33-gpucr-pre"
PLUGIN_CONF = {"annotations": {"gpucr.test/pre": "yes"}, "env": {"GPUCR_PRE": "from-conf"}}


def _script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL / "containerd.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **env})


@contextlib.contextmanager
def pre_instance(containerd: Containerd, suffix: str,
                 place: Callable[[dict[str, Any]], None]) -> Iterator[Containerd]:
    """A private containerd of ``containerd``'s version (instance ``$GPUCR_INSTANCE<suffix>``) restarted after
    ``place(info)`` put plugins into its NRI plugin dir; stopped and cleaned afterwards."""
    env = {"GPUCR_INSTANCE": f"{os.environ.get('GPUCR_INSTANCE', 'gpucr')}{suffix}"}
    version = containerd.version
    r = _script(env, "start", version)
    if r.returncode != 0:
        _script(env, "stop", version)
        pytest.fail(f"could not start the pre-registered instance: {r.stderr}", pytrace=False)
    info = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    d = Path(info["dir"])
    proc: subprocess.Popen[bytes] | None = None
    try:
        place(info)
        old = int((d / "containerd.pid").read_text())
        os.kill(old, 15)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{old}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        prefix = Path(info["ctr"]).parent.parent.parent
        path = info["daemon_path"]  # containerd.sh's own PATH for it (criu, runc, shims)
        with open(info["log"], "ab") as out:
            proc = subprocess.Popen([str(prefix / "usr/bin/containerd"), "--config", str(d / "config.toml")],
                                    env={"PATH": path, "TMPDIR": str(d / "tmp"), "HOME": "/root"}, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=REPO_ROOT)
        (d / "containerd.pid").write_text(str(proc.pid))
        inst = Containerd(info)
        testenv.wait_for(lambda: inst.ctr("version", check=False).returncode == 0, timeout=20,
                         what="restarted containerd to answer")
        yield inst
    finally:
        _script(env, "stop", version)
        if proc is not None:
            proc.wait(20)


@pytest.fixture(scope="module")
def pre_registered(containerd: Containerd) -> Iterator[tuple[Containerd, Path]]:
    logs: list[Path] = []

    def place(info: dict[str, Any]) -> None:
        log = Path(info["dir"]) / "pre-plugin.log"
        logs.append(log)
        plugin = Path(info["nri_plugin_dir"]) / PLUGIN_FILE
        # no PATH, no args, stdio on /dev/null: absolute interpreter, log to a file
        plugin.write_text(f"#!/bin/sh\nexec {sys.executable} -m nri_plugin.cli.main -v plugin --logger --log-file {log}\n")
        plugin.chmod(0o755)
        (Path(info["nri_conf_dir"]) / f"{PLUGIN_FILE}.conf").write_text(json.dumps(PLUGIN_CONF))

    with pre_instance(containerd, "-pre", place) as inst:
        yield inst, logs[0]


@dataclass
class PolicyNode:
    """gpucr's policy plugin installed by install/plugin.sh into a containerd's NRI plugin dir as ``10-gpucr``."""

    ctrd: Containerd
    venv: Path
    log: Path
    state: Path
    criu: Path
    hook: Path


@pytest.fixture(scope="module")
def pre_registered_policy(containerd: Containerd) -> Iterator[PolicyNode]:
    """``install/plugin.sh install`` (a root-owned venv in the instance's dir, the launcher ``10-gpucr``) with a node
    config naming an installed gpucr-hook, then containerd restarted: it launches gpucr's policy plugin itself."""
    made: list[PolicyNode] = []
    with contextlib.ExitStack() as stack:
        def place(info: dict[str, Any]) -> None:
            d = Path(info["dir"])
            hook = stack.enter_context(testenv.installed_hook(d / "libexec"))
            node = PolicyNode(Containerd(info), d / "plugin-venv", d / "gpucr-plugin.log", d / "state", d / "criu",
                              hook)
            conf = d / "node.toml"
            conf.write_text(f'state_dir = "{node.state}"\ncriu_config_dir = "{node.criu}"\nhook_path = "{hook}"\n')
            args = ["--nri-plugin-dir", info["nri_plugin_dir"], "--index", "10", "--venv", str(node.venv)]
            r = subprocess.run(["bash", str(INSTALL / "plugin.sh"), "install", *args, "--log-file", str(node.log),
                                "--config", str(conf)], capture_output=True, text=True)
            if r.returncode != 0:
                pytest.fail(f"install/plugin.sh install failed:\n{r.stderr}", pytrace=False)
            stack.callback(subprocess.run, ["bash", str(INSTALL / "plugin.sh"), "uninstall", *args],
                           capture_output=True)
            made.append(node)

        with pre_instance(containerd, "-prp", place) as inst:
            made[0].ctrd = inst
            yield made[0]


REPO_ROOT = str(Path(__file__).resolve().parent.parent.parent)

"""Fixtures of the NRI tests (beside the foundation's tests/conftest.py, which this does not change).

``pre_registered``: a second private containerd of the same version (instance ``$GPUCR_INSTANCE-pre``) with
``gpucr plugin`` placed in its NRI plugin directory as ``33-gpucr-pre`` plus a ``conf.d`` config. containerd only
scans that directory when NRI starts, so the instance is started by install/containerd.sh, the plugin placed, and
containerd restarted with the very command line the script uses (same config, PATH, TMPDIR, pid file), so
``containerd.sh stop`` cleans it up as usual.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import testenv
from tests.testenv import INSTALL, Containerd

PLUGIN_FILE = "33-gpucr-pre"
PLUGIN_CONF = {"annotations": {"gpucr.test/pre": "yes"}, "env": {"GPUCR_PRE": "from-conf"}}


def _script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL / "containerd.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **env})


@pytest.fixture(scope="module")
def pre_registered(containerd: Containerd) -> Iterator[tuple[Containerd, Path]]:
    env = {"GPUCR_INSTANCE": f"{os.environ.get('GPUCR_INSTANCE', 'gpucr')}-pre"}
    version = containerd.version
    r = _script(env, "start", version)
    if r.returncode != 0:
        _script(env, "stop", version)
        pytest.fail(f"could not start the pre-registered instance: {r.stderr}", pytrace=False)
    info = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    d = Path(info["dir"])
    log = d / "pre-plugin.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        plugin = Path(info["nri_plugin_dir"]) / PLUGIN_FILE
        # no PATH, no args, stdio on /dev/null: absolute interpreter, log to a file
        plugin.write_text(f"#!/bin/sh\nexec {sys.executable} -m nri_plugin.cli.main -v plugin --logger --log-file {log}\n")
        plugin.chmod(0o755)
        (Path(info["nri_conf_dir"]) / f"{PLUGIN_FILE}.conf").write_text(json.dumps(PLUGIN_CONF))
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
        yield inst, log
    finally:
        _script(env, "stop", version)
        if proc is not None:
            proc.wait(20)


REPO_ROOT = str(Path(__file__).resolve().parent.parent.parent)

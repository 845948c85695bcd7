"""Pre-registered mode with gpucr's own policy plugin: ``install/plugin.sh install`` puts ``10-gpucr`` into
containerd's NRI plugin dir, containerd (1.7.24, 2.1.9) launches it, it registers, and a managed CRI container gets
gpucr's adjustment (the CRIU config annotation, the OCI hooks, which run and record it); an unmanaged one is left
alone. The plugin runs from the root-owned venv, never from the checkout."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from nri_plugin.policy import load_record
from tests.nri.conftest import PolicyNode
from tests.nri.harness import bundle_config
from tests.testenv import REPO, wait_for

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]


def test_policy_plugin_launched_by_containerd_adjusts_managed_containers(
        pre_registered_policy: PolicyNode) -> None:
    node = pre_registered_policy
    ctrd = node.ctrd
    launcher = Path(ctrd.info["nri_plugin_dir"]) / "10-gpucr"
    st = launcher.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    text = wait_for(lambda: node.log.exists() and "configured by containerd" in node.log.read_text()
                    and node.log.read_text(), what="the pre-registered policy plugin to register and be configured")
    assert "gpucr plugin 10-gpucr starting (pre-registered)" in text and "10-gpucr: registered" in text, text
    assert f"OCI hooks {node.hook}" in text and " ERROR " not in text, text
    if ctrd.major_minor >= (2, 0):  # 1.7.24 gives a plugin it launched no Synchronize (events still flow)
        wait_for(lambda: "synchronized" in node.log.read_text(), what="the plugin to synchronize")
    # containerd's child runs the venv's Python in isolated mode, importing gpucr from the venv
    pid = int(re.search(r"starting \(pre-registered\), pid (\d+)", text).group(1))  # type: ignore[union-attr]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:5]
    assert argv == [str(node.venv / "bin/python").encode(), b"-I", b"-m", b"nri_plugin.cli.main", b"plugin"], argv
    where = subprocess.run([str(node.venv / "bin/python"), "-I", "-c", "import nri_plugin; print(nri_plugin.__file__)"],
                           capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert where.startswith(str(node.venv)), where
    assert not [p for p in node.venv.rglob("*") if not p.is_symlink() and (p.stat().st_uid != 0
                                                                            or p.stat().st_mode & 0o022)]
    with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
        cid = ctrd.run_container(c, pod_id, cfg, "managed", SLEEP)
        spec = bundle_config(ctrd, cid)
        conf = Path(spec["annotations"]["org.criu.config"])
        assert conf.parent == node.criu and "force-irmap" in conf.read_text()  # gpucr's options
        assert [(h["path"], h["args"][1]) for h in spec["hooks"]["createRuntime"]] == [(str(node.hook),
                                                                                      "create-runtime")]
        _, info = c.container_status(cid, verbose=True)
        rec = load_record(node.state, cid)  # written by the plugin, completed by the hook runc ran
        assert rec.managed and rec.pid == info["info"]["pid"] and rec.criu_config == str(conf)
        plain = ctrd.run_container(c, pod_id, cfg, "plain", SLEEP, annotations={"gpucr.io/checkpoint": "disabled"})
        assert "org.criu.config" not in bundle_config(ctrd, plain).get("annotations", {})
    wait_for(lambda: not (node.state / "containers" / f"{cid}.json").exists(), what="the record to go")
    assert os.path.exists(f"/proc/{pid}")  # still serving

"""``gpucr checkpoint``/``restore`` of a tree with three CUDA processes through real CRIU and the fake driver, with the
node config's ``driver_thp = "always"`` on this host's real THP knob: every CUDA step runs on all processes at once
(the fake's trace), the copies (and only they) run with THP ``always``, the node's mode is back afterwards, and the
summary, its text line and ``gpucr.json`` say which mode ran."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nri_plugin.host.thp import KNOB, read_mode
from tests.ckpt.test_cli_checkpoint import criu_env, gpucr, summary  # noqa: F401 (fixture)
from tests.fakes.cuda import FakeCuda, FakeWorkload, fake_cuda, fake_cuda_lib  # noqa: F401 (fixtures)
from tests.testenv import node_config, wait_for

pytestmark = pytest.mark.criu

def test_three_processes_at_once_with_the_thp_boost(criu_env: dict[str, str], fake_cuda: FakeCuda,
                                                    tmp_path: Path) -> None:
    node_mode = read_mode(KNOB)
    if node_mode is None or not os.access(KNOB, os.W_OK):
        pytest.fail(f"this test needs a writable THP knob at {KNOB} (root, /sys mounted rw)", pytrace=False)
    env = {**criu_env, **node_config(tmp_path, driver_thp="always")}
    w = FakeWorkload(fake_cuda, tmp_path, nproc=3)
    try:
        fake_cuda.trace_steps_slowed(300)
        ck = tmp_path / "ck"
        r = gpucr("checkpoint", "--pid", str(w.root), "--to", str(ck), "--json", env=env)
        s = summary(r)
        assert sorted(p["pid"] for p in s["cuda_processes"]) == sorted(w.pids)
        assert s["driver_stage"] == {"thp": "always", "thp_node": node_mode, "custom_storage": False}
        assert json.loads((ck / "gpucr.json").read_text())["driver_stage"]["thp"] == "always"
        assert read_mode(KNOB) == node_mode
        w.proc.wait(10)
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in w.pids), what="dumped tree to be gone")
        r = gpucr("restore", str(ck), env=env)
        assert f"driver stage: THP always (node: {node_mode})" in r.stdout or node_mode == "always", r.stdout
        assert {fake_cuda.state(p) for p in w.pids} == {"RUNNING"}
        w.advancing()
        fake_cuda.assert_steps_at_once(w.pids, node_mode)
        assert read_mode(KNOB) == node_mode
    finally:
        w.kill()

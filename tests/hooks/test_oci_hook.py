"""gpucr-hook (createRuntime / poststop) on a real process: records pid and cgroup, then cleans up."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hooks import oci_hook
from nri_plugin.policy import ContainerRecord, load_record, write_record
from nri_plugin.policy.lifecycle import cgroup_of, parse_state

CID = "f" * 64


def _run_hook(monkeypatch: pytest.MonkeyPatch, stage: str, state: dict[str, object], state_dir: Path,
              *extra: str) -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(state).encode())))
    return oci_hook.main([stage, "--state-dir", str(state_dir), *extra])


def test_create_runtime_then_poststop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "criu" / f"{CID}.conf"
    conf.parent.mkdir()
    conf.write_text("force-irmap\n")
    write_record(tmp_path, ContainerRecord(container_id=CID, name="train", pod_id="p", pod_name="job",
                                           pod_namespace="ml", managed=True, reason="test", criu_config=str(conf)))
    proc = subprocess.Popen(["sleep", "30"])
    try:
        state = {"ociVersion": "1.0.2", "id": CID, "status": "created", "pid": proc.pid, "bundle": "/b"}
        assert _run_hook(monkeypatch, "create-runtime", state, tmp_path) == 0
        rec = load_record(tmp_path, CID)
        assert rec.pid == proc.pid and rec.cgroup == cgroup_of(proc.pid) and rec.cgroup.startswith("/")
        assert f"pid {proc.pid}" in capsys.readouterr().err
        assert _run_hook(monkeypatch, "poststop", {**state, "status": "stopped"}, tmp_path) == 0
        assert not (tmp_path / "containers" / f"{CID}.json").exists()
        assert conf.exists()  # a restore of one of its checkpoints reads the CRIU config again
        # idempotent: a second poststop is fine
        assert _run_hook(monkeypatch, "poststop", {**state, "status": "stopped"}, tmp_path) == 0
    finally:
        proc.kill()
        proc.wait()


def test_failure_is_logged_and_does_not_fail_the_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    state = {"id": CID, "pid": 1, "status": "created"}
    assert _run_hook(monkeypatch, "create-runtime", state, tmp_path) == 0
    err = capsys.readouterr().err
    assert "error:" in err and "no gpucr record for container" in err
    assert _run_hook(monkeypatch, "create-runtime", state, tmp_path, "--strict") == 1


@pytest.mark.parametrize("raw,match", [("nope", "not JSON"), ("{}", "no container id"), ("[1]", "no container id")])
def test_bad_state_is_named(raw: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_state(raw)


def test_cgroup_of_prefers_v1_freezer_then_v2(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self/mountinfo").write_text(
        "37 31 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text("12:freezer:/k8s/c1\n11:memory:/k8s/c1m\n0::/unified/c1\n")
    assert cgroup_of(7, tmp_path) == "/k8s/c1"
    (tmp_path / "7" / "cgroup").write_text("0::/kubepods/c2\n")
    assert cgroup_of(7, tmp_path) == "/kubepods/c2"

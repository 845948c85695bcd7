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
from nri_plugin.host.proc import cgroup_path
from nri_plugin.handlers.oci_records import parse_state

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
        assert rec.pid == proc.pid and rec.cgroup == cgroup_path(proc.pid) and rec.cgroup.startswith("/")
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

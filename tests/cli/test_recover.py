"""``gpucr recover``: what it says with nothing to do, a bad combination, an unsafe lease dir, and a dead holder's
lease whose processes are gone (rolled back without the driver). The end-to-end cases (a killed ``gpucr checkpoint``
of fake-CUDA processes) are in tests/ckpt/test_lease_faults.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nri_plugin.ckpt.lease import Lease, LeasedProcess, LeaseStore
from nri_plugin.cli.main import main
from nri_plugin.host.proc import start_time


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    conf = tmp_path / "config.toml"
    conf.write_text(f'state_dir = "{tmp_path / "state"}"\nlibcuda = "/nonexistent/libcuda.so.1"\n')
    monkeypatch.setenv("GPUCR_CONFIG", str(conf))
    return tmp_path / "state"


def test_nothing_to_do(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recover"]) == 0
    assert capsys.readouterr().out == f"no lease for this node in {state / 'leases'}\n"


def test_force_needs_a_pid(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recover", "--force"]) == 1
    assert "recover: --force works with --pid only" in capsys.readouterr().err


def test_unsafe_lease_dir_is_one_error_line(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (state / "leases").mkdir(parents=True, mode=0o777)
    os.chmod(state / "leases", 0o777)
    assert main(["recover", "--all"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpucr recover: error: refusing the lease directory") and "fix or remove it" in err


def test_dead_holder_whose_processes_are_gone(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder, work = subprocess.Popen(["true"]), subprocess.Popen(["true"])
    hs, ws = start_time(holder.pid), start_time(work.pid)
    holder.wait()
    work.wait()
    store = LeaseStore(state)
    store.write(Lease(id="x1", holder="gpucr checkpoint", holder_pid=holder.pid, holder_start=hs or 1,
                      what="container abc (pid 7)", container_id="abc", root_pid=work.pid,
                      processes=[LeasedProcess(work.pid, ws or 1)], phase="cuda-checkpoint"))
    assert main(["recover", "ab"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rolled back the lease of container abc (pid 7) (gpucr checkpoint pid ")
    assert "its holder is gone" in out and "1 process(es) gone" in out
    assert not store.entries()

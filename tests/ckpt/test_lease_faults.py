"""Faults survived by ``gpucr checkpoint``: SIGKILL at each phase of the critical section (after lock, during the CUDA
checkpoint, during CRIU's dump, during the CUDA restore), with gpucr's plugin daemon sweeping leases under a real
private containerd (1.7.24 and 2.1.9); ``gpucr recover`` without a daemon; SIGTERM mid-checkpoint.

The workload is the fake CUDA driver's (its counters stop while LOCKED or CHECKPOINTED, as a real CUDA process's
work does), in a fresh v1 freezer cgroup. The CLI stops at the exact phase through the test-only pause point
(``GPUCR_TEST_PAUSE_AT``, :func:`nri_plugin.ckpt.lease.pause_point`); the test checks it really is held there
(the fake reports LOCKED/CHECKPOINTED, the counters stop) before it kills it, so a pass means the sweep undid it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import cgroups
from tests.fakes.cuda import FakeCuda, FakeWorkload, fake_cuda, fake_cuda_lib  # noqa: F401 (fixtures)
from tests.testenv import REPO, Containerd, wait_for

pytestmark = pytest.mark.integration

GPUCR = str(Path(sys.executable).parent / "gpucr")
SWEEP_S = 1.0
#: the sweep's interval plus what a sweep itself takes (CRIU's abort or the runtime's resume, the driver's calls) on a
#: loaded 2-core CI box (tests/front/test_front_lease.py uses these too)
WITHIN_S = SWEEP_S + 4.0
#: pause point -> (the state the fake reports there, the lease's phase)
PHASES = {
    "after-lock": ("LOCKED", "cuda-lock"),
    "checkpointed": ("CHECKPOINTED", "cuda-checkpoint"),
    "criu-post-dump": ("CHECKPOINTED", "criu-dump"),
    "restored": ("LOCKED", "cuda-restore"),
}


@pytest.fixture
def node(tmp_path: Path, fake_cuda: FakeCuda, criu_binary: str) -> dict[str, object]:
    state = tmp_path / "state"
    conf = tmp_path / "config.toml"
    conf.write_text(f'state_dir = "{state}"\ncriu_config_dir = "{tmp_path / "criu"}"\nhook_path = ""\n'
                    f'libcuda = "{fake_cuda.lib}"\nlease_sweep_interval_s = {SWEEP_S}\ndriver_call_timeout_s = 10\n'
                    f'checkpoint_root = "{tmp_path}"\n')
    return {"state": state, "config": conf, "leases": state / "leases", "log": tmp_path / "plugin.log",
            "env": {**fake_cuda.env, "GPUCR_CONFIG": str(conf), "GPUCR_CRIU": criu_binary}}


@pytest.fixture
def freezer() -> Iterator[cgroups.Freezer]:
    """A fresh cgroup on the hierarchy the product freezes through here (v1 freezer, or v2 on the rig's leg)."""
    with cgroups.fresh("lease") as f:
        yield f


@pytest.fixture
def workload(fake_cuda: FakeCuda, tmp_path: Path, freezer: cgroups.Freezer) -> Iterator[FakeWorkload]:
    w = FakeWorkload(fake_cuda, tmp_path, nproc=2)
    try:
        for p in w.pids:
            (freezer.path / "cgroup.procs").write_text(str(p))
        w.advancing()
        yield w
    finally:
        w.kill()


@pytest.fixture
def daemon(containerd: Containerd, node: dict[str, object]) -> Iterator[subprocess.Popen[bytes]]:
    """gpucr's plugin daemon on this containerd's NRI socket, sweeping the test's state dir every second."""
    log = node["log"]
    assert isinstance(log, Path)
    proc = subprocess.Popen([GPUCR, "-v", "plugin", "--socket", containerd.nri_socket, "--config",
                             str(node["config"]), "--log-file", str(log)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: log.exists() and "synchronized" in log.read_text(), what="gpucr plugin to synchronize")
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def start_paused(w: FakeWorkload, fc: FakeCuda, node: dict[str, object], tmp_path: Path,
                 point: str) -> subprocess.Popen[str]:
    """``gpucr checkpoint --leave-running`` of the workload, held at ``point``; checked to be held there."""
    pause = tmp_path / "paused.pid"
    env = {**os.environ, **node["env"],  # type: ignore[dict-item]
           "GPUCR_TEST_PAUSE_AT": point, "GPUCR_TEST_PAUSE_FILE": str(pause)}
    cli = subprocess.Popen([GPUCR, "checkpoint", "--pid", str(w.root), "--to", str(tmp_path / "ck"),
                            "--leave-running"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: pause.exists() or cli.poll() is not None, timeout=60, what=f"gpucr checkpoint to pause at {point}")
    if cli.poll() is not None:
        err = cli.communicate()[1]
        pytest.fail(f"gpucr checkpoint exited ({cli.returncode}) before {point}: {err}")
    assert int(pause.read_text()) == cli.pid
    want, phase = PHASES[point]
    assert all(fc.state(p) == want for p in w.pids), {p: fc.state(p) for p in w.pids}
    leases = list(Path(str(node["leases"])).glob("*.json"))
    assert len(leases) == 1 and f'"phase": "{phase}"' in leases[0].read_text(), [x.read_text() for x in leases]
    return cli


def undone(w: FakeWorkload, fc: FakeCuda, freezer: cgroups.Freezer, node: dict[str, object], frozen: bool = False,
           since: float | None = None) -> None:
    wait_for(lambda: all(fc.state(p) == "RUNNING" for p in w.pids), timeout=SWEEP_S + 20,
             what="the sweep to restore and unlock every process")
    if since is not None:
        took = time.monotonic() - since
        assert took <= WITHIN_S, f"rolled back {took:.1f}s after the kill (sweep interval {SWEEP_S}s)"
    wait_for(lambda: not list(Path(str(node["leases"])).iterdir()), timeout=10, what="the lease to be removed")
    assert cgroups.state(freezer) == ("FROZEN" if frozen else "THAWED")
    if frozen:
        freezer.thaw()
    w.advancing()


@pytest.mark.parametrize("point", list(PHASES))
def test_sigkill_cli_at_each_phase_daemon_rolls_back(point: str, daemon: subprocess.Popen[bytes],
                                                     workload: FakeWorkload, fake_cuda: FakeCuda, freezer: cgroups.Freezer,
                                                     node: dict[str, object], tmp_path: Path) -> None:
    cli = start_paused(workload, fake_cuda, node, tmp_path, point)
    before = workload.counters()
    t0 = time.monotonic()
    cli.kill()
    cli.communicate(timeout=10)  # reaped: the holder is gone
    undone(workload, fake_cuda, freezer, node, since=t0)
    assert all(v > before[n] for n, v in workload.counters().items())
    log = Path(str(node["log"])).read_text()
    line = next((ln for ln in log.splitlines() if "rolled back the lease of pid" in ln), "")
    assert f"pid {workload.root}" in line and "holder is gone" in line, log
    assert all(f"pid {p} restored and unlocked" in line or f"pid {p} unlocked" in line for p in workload.pids), line
    want = "restored and unlocked" if PHASES[point][0] == "CHECKPOINTED" else "unlocked"
    assert f"pid {workload.root} {want}" in line, line


def test_sigkill_cli_in_a_frozen_cgroup_refrozen(daemon: subprocess.Popen[bytes], workload: FakeWorkload,
                                                fake_cuda: FakeCuda, freezer: cgroups.Freezer, node: dict[str, object],
                                                tmp_path: Path) -> None:
    """A caller paused the workload; the killed CLI had thawed it to checkpoint CUDA: the sweep restores and
    unlocks, and leaves the cgroup FROZEN, as found."""
    freezer.freeze()
    cli = start_paused(workload, fake_cuda, node, tmp_path, "checkpointed")
    assert cgroups.state(freezer) == "THAWED"
    t0 = time.monotonic()
    cli.kill()
    cli.communicate(timeout=10)  # reaped: the holder is gone
    undone(workload, fake_cuda, freezer, node, frozen=True, since=t0)


def test_recover_without_daemon(workload: FakeWorkload, fake_cuda: FakeCuda, freezer: cgroups.Freezer,
                                node: dict[str, object], tmp_path: Path) -> None:
    cli = start_paused(workload, fake_cuda, node, tmp_path, "checkpointed")
    env = {**os.environ, **node["env"]}  # type: ignore[dict-item]
    r = subprocess.run([GPUCR, "recover", "--pid", str(workload.root)], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "held by gpucr checkpoint" in r.stdout and "not touched" in r.stdout, r
    assert all(fake_cuda.state(p) == "CHECKPOINTED" for p in workload.pids)  # a living holder is never rolled back
    cli.kill()
    cli.communicate(timeout=10)  # reaped: the holder is gone
    r = subprocess.run([GPUCR, "recover", "--pid", str(workload.root)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r
    assert "rolled back the lease of pid" in r.stdout and "holder is gone" in r.stdout, r.stdout
    assert f"pid {workload.root} restored and unlocked" in r.stdout, r.stdout
    undone(workload, fake_cuda, freezer, node)
    r = subprocess.run([GPUCR, "recover", "--all"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "no lease for this node" in r.stdout, r


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_checkpoint_rolls_back_before_exit(sig: signal.Signals, workload: FakeWorkload,
                                                      fake_cuda: FakeCuda, freezer: cgroups.Freezer, node: dict[str, object],
                                                      tmp_path: Path) -> None:
    cli = start_paused(workload, fake_cuda, node, tmp_path, "checkpointed")
    cli.send_signal(sig)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 1, err
    assert f"interrupted by {sig.name} during phase cuda-checkpoint" in err and "rolled back: 2 CUDA" in err, err
    # rolled back by the CLI itself, before it exited: no daemon runs here
    assert all(fake_cuda.state(p) == "RUNNING" for p in workload.pids)
    assert not list(Path(str(node["leases"])).iterdir())
    undone(workload, fake_cuda, freezer, node)


def test_phase_past_its_deadline_rolls_back_and_names_it(workload: FakeWorkload, fake_cuda: FakeCuda,
                                                         freezer: cgroups.Freezer, node: dict[str, object],
                                                         tmp_path: Path) -> None:
    """Bounded phases: the CLI held in its CUDA checkpoint phase past the node's 2 s deadline rolls back itself."""
    conf = Path(str(node["config"]))
    conf.write_text(conf.read_text() + "cuda_checkpoint_timeout_s = 2\n")
    cli = start_paused(workload, fake_cuda, node, tmp_path, "checkpointed")
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 1, err
    assert "phase cuda-checkpoint of the checkpoint of pid" in err and "ran out of time (2s" in err, err
    assert "rolled back: 2 CUDA" in err, err
    assert all(fake_cuda.state(p) == "RUNNING" for p in workload.pids)
    undone(workload, fake_cuda, freezer, node)


def test_sigkill_restore_during_cuda_restore_recovered(workload: FakeWorkload, fake_cuda: FakeCuda, freezer: cgroups.Freezer,
                                                       node: dict[str, object], tmp_path: Path) -> None:
    """A restore's CUDA half holds a lease too: ``gpucr restore`` killed after CRIU brought the tree back, before
    its CUDA restore, leaves it CHECKPOINTED; ``gpucr recover`` (no daemon) restores and unlocks it."""
    env = {**os.environ, **node["env"]}  # type: ignore[dict-item]
    ck = tmp_path / "ck"
    r = subprocess.run([GPUCR, "checkpoint", "--pid", str(workload.root), "--to", str(ck)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    workload.proc.wait(10)
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in workload.pids), what="the dumped tree to go")
    pause = tmp_path / "restore-paused.pid"
    cli = subprocess.Popen([GPUCR, "restore", str(ck)], env={**env, "GPUCR_TEST_PAUSE_AT": "cuda-restore",
                                                             "GPUCR_TEST_PAUSE_FILE": str(pause)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: pause.exists() or cli.poll() is not None, timeout=60, what="gpucr restore to pause")
    assert pause.exists(), cli.communicate()
    assert all(fake_cuda.state(p) == "CHECKPOINTED" for p in workload.pids)
    leases = list(Path(str(node["leases"])).glob("*.json"))
    assert len(leases) == 1 and '"holder": "gpucr restore"' in leases[0].read_text()
    cli.kill()
    cli.communicate(timeout=10)
    r = subprocess.run([GPUCR, "recover", "--pid", str(workload.root)], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "holder is gone" in r.stdout, r
    assert all(f"pid {p} restored and unlocked" in r.stdout for p in workload.pids), r.stdout
    undone(workload, fake_cuda, freezer, node)


def test_next_checkpoint_sweeps_first(workload: FakeWorkload, fake_cuda: FakeCuda, freezer: cgroups.Freezer,
                                      node: dict[str, object], tmp_path: Path) -> None:
    """No daemon: the next ``gpucr checkpoint`` finds the killed one's lease, rolls it back, then does its work."""
    cli = start_paused(workload, fake_cuda, node, tmp_path, "checkpointed")
    cli.kill()
    cli.communicate(timeout=10)
    env = {**os.environ, **node["env"]}  # type: ignore[dict-item]
    r = subprocess.run([GPUCR, "checkpoint", "--pid", str(workload.root), "--to", str(tmp_path / "ck2"),
                        "--leave-running"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "rolled back the lease of pid" in r.stderr and "holder is gone" in r.stderr, r.stderr
    undone(workload, fake_cuda, freezer, node)

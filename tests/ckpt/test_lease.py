"""nri_plugin.ckpt.lease: the lease file (atomic, private, refused in an unsafe dir), the holder's phases, and the
sweep's rules (a living holder within its deadline is never rolled back; a dead one is; an overrun one past the
grace is killed then rolled back; the cgroup ends as found), with the state-machine driver double of
test_cuda_steps. Real processes stand for holders and workloads (their /proc start times are the identity)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.ckpt.cuda import ProcessState
from nri_plugin.ckpt.cuda_steps import CudaSteps, Suspended
from nri_plugin.ckpt.discovery import CudaProcess
from nri_plugin.ckpt.lease import Lease, LeaseError, LeaseHolder, LeaseStore, pause_point, sweep
from nri_plugin.host.proc import start_time
from tests.ckpt.test_cuda_steps import MockFreezer, SMDriver


@pytest.fixture
def procs() -> Iterator[list[int]]:
    ps = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    yield [p.pid for p in ps]
    for p in ps:
        p.kill()
        p.wait()


def _suspended(pids: list[int], cg: MockFreezer | None, frozen: bool) -> Suspended:
    s = Suspended(pid=pids[0], cgroup=cg, frozen_before=frozen)
    s.procs = [CudaProcess(pid=p, state=ProcessState.RUNNING) for p in pids]
    return s


def test_store_writes_private_whole_files_and_refuses_an_unsafe_dir(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "state")
    le = Lease(id="abc", holder="gpucr checkpoint", holder_pid=os.getpid(), holder_start=start_time(os.getpid()),
               what="pid 1")
    store.write(le)
    assert oct(os.stat(store.dir).st_mode & 0o777) == "0o700"
    assert oct(os.stat(store.path("abc")).st_mode & 0o777) == "0o600"
    assert store.read(store.path("abc")) == le
    assert [p.name for p in store.entries()] == ["abc.json"]  # no temporary file left
    os.chmod(store.dir, 0o777)
    with pytest.raises(LeaseError, match="must be a directory of uid .* mode 0700"):
        store.write(le)
    with pytest.raises(LeaseError, match="fix or remove it"):
        store.entries()
    os.chmod(store.dir, 0o700)
    os.chmod(store.dir.parent, 0o777)  # a state dir others may write to: they could swap the lease dir
    with pytest.raises(LeaseError, match="refusing the state dir .* others may write to it"):
        store.write(le)


def test_holder_records_phases_before_the_lock_and_ends(tmp_path: Path, procs: list[int]) -> None:
    store = LeaseStore(tmp_path)
    h = LeaseHolder(store, holder="gpucr checkpoint", what="pid x", budgets={"cuda-checkpoint": 100.0})
    s = _suspended(procs[:2], MockFreezer(False, []), False)
    h.on_phase("discover", s)  # not a phase: nothing is written before the lock
    assert not store.entries()
    h.on_phase("cuda-lock", s)
    le = store.read(store.path(h.lease.id))
    assert le.phase == "cuda-lock" and le.undo == ["unlock"] and le.holder_pid == os.getpid()
    assert [(p.pid, p.start) for p in le.processes] == [(p, start_time(p)) for p in procs[:2]]
    assert le.cgroup_path == "/sys/fs/cgroup/freezer/test/c1" and le.frozen_before is False
    h.on_phase("cuda-checkpoint", s)
    le = store.read(store.path(h.lease.id))
    assert le.phase == "cuda-checkpoint" and le.undo == ["restore", "unlock"]
    assert 99 < le.deadline - time.time() <= 100
    h.on_phase("done", s)
    assert not store.entries()


def _lease(store: LeaseStore, holder: int, pids: list[int], *, frozen_before: bool = False, deadline: float = 0,
           owner: str = "holder") -> Lease:
    le = Lease(id=f"l{holder}", holder="gpucr checkpoint", holder_pid=holder, holder_start=start_time(holder),
               what=f"pid {pids[0]}", root_pid=pids[0], cgroup_path="/sys/fs/cgroup/freezer/test/c1",
               cgroup_version=1, frozen_before=frozen_before, cgroup_owner=owner, phase="cuda-checkpoint",
               deadline=deadline or time.time() + 60)
    from nri_plugin.ckpt.lease import LeasedProcess
    le.processes = [LeasedProcess(p, start_time(p)) for p in pids]
    store.write(le)
    return le


@pytest.mark.parametrize("frozen_before, owner, frozen_after", [
    (False, "holder", False), (True, "holder", True), (True, "runtime", False)])
def test_sweep_rolls_back_a_dead_holders_lease(tmp_path: Path, procs: list[int], frozen_before: bool, owner: str,
                                               frozen_after: bool) -> None:
    store = LeaseStore(tmp_path)
    holder, *work = procs
    drv = SMDriver(work)
    drv.state[work[0]] = ProcessState.CHECKPOINTED
    drv.state[work[1]] = ProcessState.LOCKED
    log: list[tuple[str, int]] = []
    cg = MockFreezer(False, log)  # the dead holder had thawed it
    _lease(store, holder, work, frozen_before=frozen_before, owner=owner)
    steps = CudaSteps(drv, lambda pid: cg)  # type: ignore[arg-type]
    assert sweep(store, lambda: steps, lambda path, v: cg) == []  # the holder lives, within its deadline
    assert drv.state[work[0]] == ProcessState.CHECKPOINTED and len(store.entries()) == 1
    subprocess.run(["kill", "-9", str(holder)])
    from tests.testenv import wait_for
    wait_for(lambda: start_time(holder) == 0, what="holder gone")
    [res] = sweep(store, lambda: steps, lambda path, v: cg)
    assert all(drv.state[p] == ProcessState.RUNNING for p in work)
    assert cg.is_frozen is frozen_after
    line = res.line()
    assert f"holder is gone (pid {holder})" in line
    assert f"pid {work[0]} restored and unlocked" in line and f"pid {work[1]} unlocked" in line, line
    assert not store.entries()


def test_overrun_holder_is_killed_then_rolled_back(tmp_path: Path, procs: list[int]) -> None:
    store = LeaseStore(tmp_path)
    holder, *work = procs
    drv = SMDriver(work)
    drv.state[work[0]] = ProcessState.LOCKED
    _lease(store, holder, work, deadline=time.time() - 5)
    steps = CudaSteps(drv, lambda pid: None)  # type: ignore[arg-type]
    assert sweep(store, lambda: steps, lambda path, v: None, grace_s=10) == []  # within the grace
    [res] = sweep(store, lambda: steps, lambda path, v: None, grace_s=1)
    assert "past its deadline" in res.reason and f"killed its holder, pid {holder}" in res.reason
    assert drv.state[work[0]] == ProcessState.RUNNING


def test_reused_pids_are_not_touched(tmp_path: Path, procs: list[int]) -> None:
    """A named process whose start time differs is another process now: left alone."""
    store = LeaseStore(tmp_path)
    holder, *work = procs
    le = _lease(store, holder, work)
    le.holder_start += 1  # the holder's pid now belongs to someone else
    le.processes[0] = type(le.processes[0])(work[0], le.processes[0].start + 1)
    store.write(le)
    drv = SMDriver(work)
    drv.state[work[0]] = drv.state[work[1]] = ProcessState.LOCKED
    [res] = sweep(store, lambda: CudaSteps(drv, lambda pid: None), lambda path, v: None)  # type: ignore[arg-type]
    assert drv.state[work[0]] == ProcessState.LOCKED and drv.state[work[1]] == ProcessState.RUNNING
    assert "1 process(es) gone" in res.line()


def test_a_claimed_lease_is_not_rolled_back_twice(tmp_path: Path, procs: list[int]) -> None:
    store = LeaseStore(tmp_path)
    holder, other, work = procs
    _lease(store, holder, [work])
    path = store.path(f"l{holder}")
    claimed = store.dir / f"l{holder}.json.claim-{other}"  # a living sweeper holds it
    path.rename(claimed)
    assert store.claim(claimed) is None


def test_pause_point_is_inert_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUCR_TEST_PAUSE_AT", raising=False)
    pause_point("after-lock")  # returns at once
    pause_point("after-lock", "checkpointed")
    pause_point("after-lock", "")


def test_a_killed_holders_thp_boost_is_given_back_by_the_sweep(tmp_path: Path, procs: list[int]) -> None:
    """A checkpoint SIGKILLed mid-copy with the THP boost held: the holder's lease records the share and the node's
    mode; the sweep restores the processes and the mode, while a live checkpoint sharing the boost keeps it until
    it is done."""
    from nri_plugin.host.thp import ThpStage, read_mode

    knob = tmp_path / "thp-enabled"
    knob.write_text("always [madvise] never\n")
    store = LeaseStore(tmp_path)
    holder, *work = procs
    # the holder's share, written as that process would have (holder-<its pid>-<its start>-<token>)
    other = ThpStage(tmp_path, knob).acquire()  # a live checkpoint that shares the boost
    ours = ThpStage(tmp_path, knob).acquire()
    dead = ours.token.replace(f"holder-{os.getpid()}-{start_time(os.getpid())}-",
                              f"holder-{holder}-{start_time(holder)}-")
    (tmp_path / "thp" / ours.token).rename(tmp_path / "thp" / dead)
    ours.token = dead
    h = LeaseHolder(store, holder="gpucr checkpoint", what="pid x")
    s = _suspended(work, None, False)
    s.thp = ours
    h.on_phase("cuda-checkpoint", s)
    le = store.read(store.path(h.lease.id))
    assert le.thp["original"] == "madvise" and le.thp["token"] == dead
    le.holder_pid, le.holder_start = holder, start_time(holder)
    store.write(le)
    drv = SMDriver(work)
    drv.state[work[0]] = ProcessState.CHECKPOINTED
    steps = CudaSteps(drv, lambda pid: None)  # type: ignore[arg-type]
    subprocess.run(["kill", "-9", str(holder)])
    from tests.testenv import wait_for
    wait_for(lambda: start_time(holder) == 0, what="holder gone")
    thp = ThpStage(tmp_path, knob)
    [res] = sweep(store, lambda: steps, lambda path, v: None, thp=thp)
    assert "THP boost given back (other checkpoints still hold it)" in res.line()
    assert read_mode(knob) == "always" and drv.state[work[0]] == ProcessState.RUNNING
    thp.release(other)
    assert read_mode(knob) == "madvise"


def test_the_sweep_restores_the_mode_of_a_holder_killed_before_its_lease_named_it(tmp_path: Path,
                                                                                    procs: list[int]) -> None:
    from nri_plugin.host.thp import ThpStage, read_mode

    knob = tmp_path / "thp-enabled"
    knob.write_text("always [madvise] never\n")
    ours = ThpStage(tmp_path, knob).acquire()
    holder = procs[0]
    (tmp_path / "thp" / ours.token).rename(tmp_path / "thp" / f"holder-{holder}-{start_time(holder)}-0")
    subprocess.run(["kill", "-9", str(holder)])
    from tests.testenv import wait_for
    wait_for(lambda: start_time(holder) == 0, what="holder gone")
    assert sweep(LeaseStore(tmp_path), lambda: None, lambda path, v: None,  # type: ignore[arg-type,return-value]
                 thp=ThpStage(tmp_path, knob)) == []
    assert read_mode(knob) == "madvise"

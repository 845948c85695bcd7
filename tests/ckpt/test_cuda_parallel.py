"""The CUDA steps on several processes at once, against the fake driver (real processes, real ctypes calls): every
process locked, checkpointed, restored and unlocked concurrently (the fake's trace shows the calls overlapping, each
made slow by the fake's delay hook: no wall-clock bounds), one failure rolling every process back, the THP boost
covering exactly the copies, and the CustomStorage probe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.ckpt.cuda import Driver
from nri_plugin.ckpt.cuda_steps import CudaSteps
from nri_plugin.ckpt.errors import CheckpointError
from nri_plugin.host.thp import ThpStage, read_mode
from tests.fakes.cuda import (  # noqa: F401 (fixtures)
    FakeCuda, FakeWorkload, custom_storage_of, fake_cuda, fake_cuda_lib, overlap,
)

GIB = 1 << 30


@pytest.fixture
def knob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A THP knob of the test's own, which the fake's trace reads too."""
    k = tmp_path / "thp-enabled"
    k.write_text("always [madvise] never\n")
    monkeypatch.setenv("FAKE_CUDA_THP_KNOB", str(k))
    return k


@pytest.fixture
def three(fake_cuda: FakeCuda, tmp_path: Path) -> Iterator[FakeWorkload]:
    w = FakeWorkload(fake_cuda, tmp_path, nproc=3, gpu_bytes=GIB)
    yield w
    w.kill()


def steps_of(fc: FakeCuda, tmp_path: Path, knob: Path, lib: Path | None = None) -> CudaSteps:
    return CudaSteps(Driver(str(lib or fc.lib)), lambda pid: None, mem_available=lambda: 64 * GIB,
                     thp=ThpStage(tmp_path / "state", knob))


def test_every_process_at_once_with_the_boost_around_the_copies_only(fake_cuda: FakeCuda, three: FakeWorkload,
                                                                     tmp_path: Path, knob: Path) -> None:
    fake_cuda.trace_steps_slowed(300)
    steps = steps_of(fake_cuda, tmp_path, knob)
    s = steps.suspend(three.root)
    assert sorted(p.pid for p in s.procs) == sorted(three.pids)
    assert {fake_cuda.state(p) for p in three.pids} == {"CHECKPOINTED"}
    assert read_mode(knob) == "madvise"  # given back once the copies are done
    steps.resume(s)
    assert {fake_cuda.state(p) for p in three.pids} == {"RUNNING"}
    three.advancing()
    fake_cuda.assert_steps_at_once(three.pids, "madvise")  # the copies with huge pages, the lock in the node's mode
    assert read_mode(knob) == "madvise"
    assert steps.stage == {"custom_storage": False, "thp": "always", "thp_node": "madvise"}


def test_one_failing_process_rolls_every_process_back(fake_cuda: FakeCuda, three: FakeWorkload, tmp_path: Path,
                                                      knob: Path) -> None:
    """The first checkpoint call fails (CUDA_ERROR_UNKNOWN, once) while the others copy: one error names that pid
    and the step; the others are restored and unlocked, concurrently; the knob is the node's again."""
    fake_cuda.delay("checkpoint", 300)
    fake_cuda.delay("restore", 300)
    fake_cuda.fail("checkpoint", 999, once=True)
    fake_cuda.start_trace()
    steps = steps_of(fake_cuda, tmp_path, knob)
    with pytest.raises(CheckpointError) as ei:
        steps.suspend(three.root, what="container c1")
    failed = [c for c in fake_cuda.calls("checkpoint") if c.result != 0]
    assert len(failed) == 1
    e = ei.value
    assert e.step == "cuda-checkpoint" and e.pid == failed[0].pid
    assert f"cuda-checkpoint failed for pid {failed[0].pid}" in str(e) and "CUDA_ERROR_UNKNOWN" in str(e)
    assert "rolled back: 3 CUDA process(es) restored and unlocked" in str(e)
    assert {fake_cuda.state(p) for p in three.pids} == {"RUNNING"}
    three.advancing()
    restored = fake_cuda.calls("restore")
    assert sorted(c.pid for c in restored) == sorted(set(three.pids) - {failed[0].pid})
    assert overlap(restored), f"the rollback restored one process after the other: {restored}"
    copied = [c for c in fake_cuda.calls("checkpoint") if c.result == 0]  # the failing call returns at once
    assert len(copied) == 2 and overlap(copied), f"the checkpoints ran one after the other: {copied}"
    assert read_mode(knob) == "madvise"


def test_custom_storage_is_probed_and_recorded(fake_cuda: FakeCuda, fake_cuda_lib: Path, tmp_path: Path,
                                               knob: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Driver 580 (the default fake) lacks cuCheckpointOperationComplete; the variant exports it (and fails it like
    a driver with no such operation pending): the probe tells them apart without calling into a process, and the
    driver stage records it."""
    assert Driver(str(fake_cuda_lib)).custom_storage is False
    cs = FakeCuda(custom_storage_of(fake_cuda_lib), fake_cuda.state_dir, fake_cuda.device)
    for k, v in cs.env.items():
        monkeypatch.setenv(k, v)
    assert Driver(str(cs.lib)).custom_storage is True
    w = FakeWorkload(cs, tmp_path, nproc=2)
    try:
        steps = steps_of(cs, tmp_path, knob)
        steps.resume(steps.suspend(w.root))
        assert steps.stage["custom_storage"] is True
        assert {cs.state(p) for p in w.pids} == {"RUNNING"}
    finally:
        w.kill()

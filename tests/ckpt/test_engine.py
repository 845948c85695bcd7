"""Engine orchestration with a mocked CUDA driver, CRIU and freezer (pytest-mock): order of steps, the frozen-cgroup
dance, and rollback. Every failure case ends with every CUDA process RUNNING (restored and unlocked) and an error
naming the step and the pid."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

from nri_plugin.ckpt import cuda_steps as cuda_steps_mod
from nri_plugin.ckpt import engine as engine_mod
from nri_plugin.ckpt.cuda import CudaError, ProcessState
from nri_plugin.ckpt.criu import CriuError
from nri_plugin.ckpt.discovery import CudaProcess, GpuInventory
from nri_plugin.ckpt.cuda_steps import CudaSteps
from nri_plugin.ckpt.engine import CheckpointError, CheckpointRequest, Engine, RestoreRequest
from nri_plugin.ckpt.layout import CheckpointStore, LayoutError

from tests.ckpt.test_cuda_steps import GIB, UUID0, UUID1, MockFreezer, SMDriver, procs  # noqa: F401 (fixture)


class Setup:
    def __init__(self, mocker: MockerFixture, pids: list[int], tmp: Path, frozen: bool = False) -> None:
        self.pids = pids
        self.driver = SMDriver(pids)
        self.freezer = MockFreezer(frozen, self.driver.log) if frozen is not None else None
        self.criu = mocker.MagicMock()
        self.criu.dump.side_effect = self._dump
        self.criu.version.return_value = (4, 2, 1)
        found = [CudaProcess(p, ProcessState.RUNNING, "python3", {UUID0: GIB}) for p in pids]
        mocker.patch.object(cuda_steps_mod, "discover", side_effect=lambda *a, **k: (
            [CudaProcess(p.pid, self.driver.state[p.pid], p.comm, dict(p.gpus)) for p in found],
            GpuInventory("580.159.04", {UUID0: "NVIDIA H200", UUID1: "NVIDIA H200"})))
        self.store = CheckpointStore()
        self.steps = CudaSteps(self.driver, lambda pid: self.freezer)  # type: ignore[arg-type]
        self.engine = Engine(self.steps, self.criu, self.store)
        self.dir = tmp / "ck"

    def _dump(self, opts: Any, on_notify: Any = None) -> None:
        """What a dump leaves behind: image files in CRIU's dir, then CRIU's post-dump notification (the tasks are
        still there: CRIU kills or resumes them after the answer)."""
        self.driver.log.append(("dump", opts.pid))
        (opts.images_dir / f"core-{opts.pid}.img").write_bytes(b"c" * 100)
        (opts.images_dir / "pages-1.img").write_bytes(b"p" * 4096)
        if on_notify is not None:
            on_notify("post-dump", 0)
        self.driver.log.append(("criu-done", opts.pid))

    def checkpoint(self, **kw: Any) -> Any:
        return self.engine.checkpoint(CheckpointRequest(images_dir=self.dir, pid=self.pids[0], **kw))

    def all_running(self) -> bool:
        return all(s == ProcessState.RUNNING for s in self.driver.state.values())


def test_leave_running_order(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    s = Setup(mocker, procs, tmp_path, frozen=False)
    summary = s.checkpoint(leave_running=True)
    calls = [c for c, _ in s.driver.log]
    assert calls == ["lock", "lock", "checkpoint", "checkpoint", "dump", "criu-done", "restore", "restore", "unlock",
                     "unlock"]
    assert "sync" in summary.timings_s
    assert s.all_running()
    opts = s.criu.dump.call_args.args[0]
    assert opts.leave_running and opts.freeze_cgroup is None and opts.pid == procs[0]
    assert summary.gpu_bytes == 2 * GIB and set(summary.timings_s) >= {"cuda-lock", "cuda-checkpoint", "criu-dump"}
    meta, images = s.store.read_metadata(s.dir)
    assert images == s.dir / "images" and (images / f"core-{procs[0]}.img").exists()
    assert meta.cuda["driver_version"] == "580.159.04" and len(meta.cuda["processes"]) == 2
    assert meta.kernel_release == os.uname().release  # and the CRIU's VERSION answer (the client's cache)
    assert meta.criu_version == "4.2.1" and s.criu.version.called
    # the options a restore must repeat, as the dump used them (runc restore's flags: handlers/runc_restore.py)
    assert meta.extra["criu_dump"] == {"tcp_established": True, "ext_unix_sk": True, "file_locks": True,
                                       "shell_job": True}
    assert (opts.tcp_established, opts.ext_unix_sk, opts.file_locks, opts.shell_job) == (True, True, True, True)


def test_frozen_cgroup_is_thawed_for_cuda_and_refrozen(mocker: MockerFixture, procs: list[int],
                                                       tmp_path: Path) -> None:
    s = Setup(mocker, procs, tmp_path, frozen=True)
    # CRIU puts a cgroup it found frozen back to FROZEN before answering
    s.criu.dump.side_effect = lambda opts, on_notify=None: (s._dump(opts), setattr(s.freezer, "is_frozen", True))
    summary = s.checkpoint(leave_running=True)
    calls = [c for c, _ in s.driver.log]
    assert calls == ["thaw", "lock", "lock", "checkpoint", "checkpoint", "freeze", "dump", "criu-done",
                     "thaw", "restore", "restore", "unlock", "unlock", "freeze"]
    assert s.criu.dump.call_args.args[0].freeze_cgroup == str(s.freezer.path)
    assert s.freezer.is_frozen and s.all_running() and summary.frozen_before


def test_criu_failure_rolls_back(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    s = Setup(mocker, procs, tmp_path, frozen=True)

    def dump(opts: Any, on_notify: Any = None) -> None:
        # the client's first line carries CRIU's last error (the tail follows it)
        raise CriuError("dump of pid 1 failed: Error (criu/cr-dump.c:1): boom", errno=5,
                        log_tail="Error (criu/cr-dump.c:1): boom")

    s.criu.dump.side_effect = dump
    with pytest.raises(CheckpointError) as ei:
        s.checkpoint(leave_running=False)
    assert ei.value.step == "criu-dump" and "boom" in str(ei.value)
    assert s.all_running() and s.freezer.is_frozen
    calls = [c for c, _ in s.driver.log if c != "wait-pending"]
    assert calls[-6:] == ["thaw", "restore", "unlock", "restore", "unlock", "freeze"]


def test_restore_error_after_dump_rolls_back(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    s = Setup(mocker, procs, tmp_path, frozen=False)
    s.driver.fail[("restore", procs[0])] = CudaError("CUDA restore failed: CUDA_ERROR_UNKNOWN", step="restore")
    with pytest.raises(CheckpointError) as ei:
        s.checkpoint(leave_running=True)
    assert ei.value.step == "cuda-restore" and ei.value.pid == procs[0]
    assert s.all_running()


def test_nonexistent_pid(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    s = Setup(mocker, procs, tmp_path)
    with pytest.raises(CheckpointError, match="pid 999999999 does not exist"):
        s.engine.checkpoint(CheckpointRequest(images_dir=s.dir, pid=999999999))


def test_dir_with_checkpoint_is_refused_unless_forced(mocker: MockerFixture, procs: list[int],
                                                      tmp_path: Path) -> None:
    s = Setup(mocker, procs, tmp_path)
    s.checkpoint(leave_running=True)
    with pytest.raises(Exception, match="already holds a checkpoint: choose another dir, or pass --force"):
        s.checkpoint(leave_running=True)
    s.checkpoint(leave_running=True, force=True)
    assert all(oct(p.stat().st_mode & 0o777) == ("0o700" if p.is_dir() else "0o600")
               for p in [s.dir, *s.dir.rglob("*")])


def test_restore_compatibility_says_what_differs(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    s = Setup(mocker, procs, tmp_path)
    s.checkpoint(leave_running=True)
    inv = GpuInventory("580.159.04", {UUID1: "NVIDIA H100 80GB HBM3"})
    mocker.patch.object(engine_mod, "gpu_inventory", return_value=(inv, {}))
    with pytest.raises(CheckpointError, match=f"GPU {UUID0} used at checkpoint is not on this node.*--gpu-map"):
        s.engine.restore(RestoreRequest(images_dir=s.dir))
    with pytest.raises(CheckpointError, match="GPU chip differs: NVIDIA H200 at checkpoint.*NVIDIA H100 80GB HBM3"):
        s.engine.restore(RestoreRequest(images_dir=s.dir, gpu_map={UUID0: UUID1}))
    s.driver.api_version = 12080
    s.driver.supports_remap = False
    with pytest.raises(CheckpointError, match="driver API 12.8 here is older than 13.0"):
        s.engine.restore(RestoreRequest(images_dir=s.dir))
    s.criu.restore.assert_not_called()


def test_corrupt_checkpoint_is_caught_before_criu(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    s = Setup(mocker, procs, tmp_path)
    s.checkpoint(leave_running=True)
    with open(s.dir / "images" / "pages-1.img", "r+b") as f:
        f.truncate(10)
    with pytest.raises(Exception, match="corrupt: images/pages-1.img has 10 bytes, the manifest says 4096"):
        s.engine.restore(RestoreRequest(images_dir=s.dir))
    (s.dir / "gpucr.json").write_text("{not json")
    with pytest.raises(Exception, match="gpucr.json is not valid JSON"):
        s.engine.restore(RestoreRequest(images_dir=s.dir))
    s.criu.restore.assert_not_called()


def test_dir_outside_root_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(root=tmp_path / "root")
    with pytest.raises(Exception, match="outside the configured checkpoint root"):
        store.prepare(tmp_path / "elsewhere", force=False)
    store.prepare(tmp_path / "root" / "ok", force=False)


def test_restore_remaps_gpus(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    s = Setup(mocker, procs, tmp_path)
    s.checkpoint(leave_running=True)
    for pid in procs:
        s.driver.state[pid] = ProcessState.CHECKPOINTED
    s.criu.restore.return_value = mocker.MagicMock(pid=procs[0])
    restore = mocker.spy(s.driver, "restore")
    mocker.patch.object(engine_mod, "gpu_inventory", return_value=(
        GpuInventory("580.159.04", {UUID0: "NVIDIA H200", UUID1: "NVIDIA H200"}), {}))
    out = s.engine.restore(RestoreRequest(images_dir=s.dir, gpu_map={UUID0: UUID1, UUID1: UUID0}))
    assert s.all_running() and out.pid == procs[0]
    assert {c.args[1] and tuple(c.args[1]) for c in restore.call_args_list} == {((UUID0, UUID1), (UUID1, UUID0))}


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "leave-running"])
def test_sealed_at_post_dump_before_criu_lets_the_tasks_go(mocker: MockerFixture, procs: list[int], tmp_path: Path,
                                                           leave_running: bool) -> None:
    """Without leave-running the checkpoint is valid (gpucr.json, renamed into place) when gpucr answers CRIU's
    post-dump, i.e. before CRIU kills the tasks; with leave-running it is sealed once the CUDA processes run again."""
    s = Setup(mocker, procs, tmp_path)
    seen: dict[str, bool] = {}

    def dump(opts: Any, on_notify: Any = None) -> None:
        s._dump(opts, on_notify)
        seen["valid at post-dump"] = (s.dir / "gpucr.json").exists()

    s.criu.dump.side_effect = dump
    summary = s.checkpoint(leave_running=leave_running)
    assert seen["valid at post-dump"] is (not leave_running)
    assert summary.timings_s["sync"] >= 0 and summary.timings_s["seal"] >= 0
    s.store.read_metadata(s.dir)
    assert not list(tmp_path.glob(".ck.*"))


def test_sync_failure_fails_the_dump_and_rolls_back(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    import errno
    s = Setup(mocker, procs, tmp_path)

    def no_space(images_dir: Path) -> int:
        raise LayoutError("cannot write the images to disk") from OSError(errno.ENOSPC, "No space left on device")

    mocker.patch.object(s.store, "sync", side_effect=no_space)
    with pytest.raises(CheckpointError) as ei:
        s.checkpoint(leave_running=False)
    assert ei.value.step == "sync" and len(str(ei.value).splitlines()) == 1
    assert f"checkpoint of pid {procs[0]} failed at step sync" in str(ei.value)
    assert "is full" in str(ei.value) and "rolled back: 2 CUDA process(es)" in str(ei.value)
    assert s.all_running() and list(tmp_path.iterdir()) == []

"""The memory stage of a dump (a private tmpfs, really mounted: these tests run as root like gpucr) and the engine's
use of it: CRIU dumps into it, the images reach the checkpoint dir hashed on the way, the tmpfs is gone on every
exit path; and the page images' sha256 checked in the background on restore, refused before the tasks run."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

from nri_plugin.ckpt import layout, memstage
from nri_plugin.ckpt.engine import CheckpointError, RestoreRequest
from nri_plugin.ckpt.layout import CheckpointDir, LayoutError, _sha256

from tests.ckpt.test_cuda_steps import GIB, procs  # noqa: F401 (fixture)
from tests.ckpt.test_engine import Setup


def _mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/self/mounts").read_text().splitlines())


def test_stage_is_a_detached_private_tmpfs(tmp_path: Path) -> None:
    """Mounted, opened and detached at once: no mount or dir left anywhere, reachable only through gpucr's fd (so
    a SIGKILLed gpucr leaves nothing: the kernel frees it with the last descriptor)."""
    assert os.geteuid() == 0, "gpucr's memory stage mounts a tmpfs: run the tests as root"
    stage, why = memstage.open_stage(tmp_path, 1 << 20, 64 * GIB)
    assert stage is not None and why == ""
    assert not list(tmp_path.iterdir()) and str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    (stage.images / "x").write_bytes(b"x")
    assert os.stat(stage.images).st_dev != os.stat(tmp_path).st_dev
    assert oct(os.stat(stage.images.parent).st_mode & 0o777) == "0o700"
    with open(f"/proc/self/fdinfo/{stage.fd}") as f:
        assert f.read()
    fd = stage.fd
    stage.close()
    assert stage.fd == -1 and not os.path.exists(f"/proc/self/fd/{fd}/images")


def test_stage_refused_without_the_memory(tmp_path: Path) -> None:
    stage, why = memstage.open_stage(tmp_path, 8 * GIB, 4 * GIB)
    assert stage is None and "4.0 GiB available" in why and not list(tmp_path.iterdir())


def test_sweep_removes_the_stage_of_a_dead_gpucr(tmp_path: Path) -> None:
    dead = tmp_path / "mem-999999999"
    dead.mkdir()
    memstage._mount_tmpfs(dead, 1 << 20, huge=False)
    mine = tmp_path / f"mem-{os.getpid()}"
    mine.mkdir()
    assert memstage.sweep(tmp_path) == [dead]
    assert not dead.exists() and not _mounted(dead) and mine.exists()


def test_fill_from_copies_and_hashes_in_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "PIECE_BYTES", 1 << 20)  # a tree of pieces, copied in parallel
    monkeypatch.setattr(layout, "_IO_CHUNK", 64 << 10)
    src = tmp_path / "src"
    src.mkdir()
    (src / "pages-1.img").write_bytes(os.urandom((3 << 20) + 123))  # O_DIRECT chunks and a buffered tail
    (src / "core-1.img").write_bytes(b"core")
    (src / "dump.log").write_text("log")
    cp = CheckpointDir.create(tmp_path / "ck")
    known = cp.fill_from(src)
    assert set(known) == {"images/pages-1.img", "images/core-1.img"}
    for name, entry in known.items():
        p = cp.path / name
        assert p.read_bytes() == (src / p.name).read_bytes() and entry.sha256 == _sha256(p)
    assert (cp.images_dir / "dump.log").read_text() == "log"


class StagedSetup(Setup):
    def __init__(self, mocker: MockerFixture, pids: list[int], tmp: Path, mem_available: int = 64 * GIB) -> None:
        super().__init__(mocker, pids, tmp)
        self.engine.mem_base = tmp / "state"
        self.steps.mem_available = lambda: mem_available
        self.dumped_into: list[Path] = []

    def _dump(self, opts: Any, on_notify: Any = None) -> None:
        self.dumped_into.append(opts.images_dir)
        self.mounted_at_dump = os.stat(opts.images_dir).st_dev != os.stat(self.dir.parent).st_dev
        super()._dump(opts, on_notify)


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "leave-running"])
def test_engine_dumps_into_memory_then_seals_on_disk(mocker: MockerFixture, procs: list[int], tmp_path: Path,
                                                     leave_running: bool) -> None:
    s = StagedSetup(mocker, procs, tmp_path)
    summary = s.checkpoint(leave_running=leave_running)
    assert str(s.dumped_into[0]).startswith("/proc/self/fd/") and s.mounted_at_dump
    assert summary.dump_to == "memory" and "write-images" in summary.timings_s
    assert (summary.downtime_s > 0) is leave_running
    assert not list((tmp_path / "state").iterdir())  # unmounted and removed
    meta, images = s.store.read_metadata(s.dir)
    s.store.finish_verify(s.dir)
    assert (images / "pages-1.img").read_bytes() == b"p" * 4096 and "images/pages-1.img" in meta.manifest
    assert s.all_running() or not leave_running


def test_engine_dumps_to_disk_when_memory_is_short(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    s = StagedSetup(mocker, procs, tmp_path, mem_available=3 * GIB)
    summary = s.checkpoint(leave_running=True)
    assert summary.dump_to.startswith("disk (host memory: 3.0 GiB available")
    assert s.dumped_into[0].parent.name.startswith(".ck.gpucr-tmp-")


def test_engine_write_failure_after_resume(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    s = StagedSetup(mocker, procs, tmp_path)

    def full() -> None:
        raise LayoutError("cannot write the images") from OSError(errno.ENOSPC, "No space left on device")

    mocker.patch.object(layout.ImageCopier, "finish", side_effect=full)
    with pytest.raises(CheckpointError) as ei:
        s.checkpoint(leave_running=True)
    assert ei.value.step == "write-images" and "is full" in str(ei.value)
    assert s.all_running() and not list((tmp_path / "state").iterdir())
    assert not s.dir.exists() and not list(tmp_path.glob(".ck.*"))


def test_changed_pages_refused_at_post_restore(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    s = Setup(mocker, procs, tmp_path)
    s.checkpoint(leave_running=True)
    with open(s.dir / "images" / "pages-1.img", "r+b") as f:  # same size, one byte changed
        f.write(b"q")

    def restore(opts: Any, on_notify: Any = None) -> Any:
        on_notify("post-restore", procs[0])  # raises: CRIU aborts and kills the restored tasks
        raise AssertionError("not reached")

    s.criu.restore.side_effect = restore
    with pytest.raises(CheckpointError, match="pages-1.img does not match its sha256") as ei:
        s.engine.restore(RestoreRequest(images_dir=s.dir))
    assert ei.value.step == "validate"


def test_changed_metadata_image_refused_before_criu(mocker: MockerFixture, procs: list[int], tmp_path: Path) -> None:
    s = Setup(mocker, procs, tmp_path)
    s.checkpoint(leave_running=True)
    core = next((s.dir / "images").glob("core-*.img"))
    core.write_bytes(b"C" * 100)
    with pytest.raises(LayoutError, match="does not match its sha256"):
        s.engine.restore(RestoreRequest(images_dir=s.dir))
    s.criu.restore.assert_not_called()


def test_copier_follows_a_growing_page_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces are copied while CRIU still appends (as it does to pages-N.img); the result is the same file, with the
    manifest digest that a full hash gives."""
    import threading
    import time

    monkeypatch.setattr(layout, "PIECE_BYTES", 64 << 10)
    monkeypatch.setattr(layout, "_IO_CHUNK", 16 << 10)
    monkeypatch.setattr(layout.ImageCopier, "POLL_S", 0.005)
    src = tmp_path / "src"
    src.mkdir()
    cp = CheckpointDir.create(tmp_path / "ck")
    data = os.urandom((1 << 20) + 777)
    copier = layout.ImageCopier(cp, src).follow()
    copied_early: list[int] = []

    def criu() -> None:
        with open(src / "pages-1.img", "wb") as f:
            for i in range(0, len(data), 50_000):
                f.write(data[i:i + 50_000])
                f.flush()
                time.sleep(0.003)
        copied_early.append(len(copier._files.get("pages-1.img", (0, 0, 0, [0], []))[4]))
        (src / "pagemap-1.img").write_bytes(b"map")

    t = threading.Thread(target=criu)
    t.start()
    t.join()
    known = copier.finish()
    assert copied_early[0] > 4  # pieces went out before the dump was over
    assert (cp.images_dir / "pages-1.img").read_bytes() == data
    assert known["images/pages-1.img"] == layout.FileEntry(len(data), _sha256(cp.images_dir / "pages-1.img"))
    assert known["images/pagemap-1.img"].size == 3

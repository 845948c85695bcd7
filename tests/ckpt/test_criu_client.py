"""The CRIU RPC client against the real CRIU (install/deps.sh's 4.2.x, ``criu swrk``): dump and restore of a
multi-process, multi-threaded tree, leave-running, failures that leave the workload running, notifications, version
checks."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu import Criu, CriuError, DumpOptions, Notify, RestoreOptions
from tests.ckpt._workload import NAMES, Workload, ppid, session_members, state, threads
from tests.testenv import REPO, wait_for

pytestmark = pytest.mark.criu


def _snapshot(w: Workload) -> dict[int, int]:
    return {pid: threads(pid) for pid in w.pids}


def test_version(criu_binary: str) -> None:
    v = Criu(criu_binary).version()
    assert v >= (4, 1, 0)
    assert len(v) == 3


def test_dump_and_restore_tree_counters_continue(criu_binary: str, workload: Workload, images: Path) -> None:
    criu = Criu(criu_binary)
    workload.advancing()
    before = _snapshot(workload)
    assert all(n == 3 for n in before.values()), before

    res = criu.dump(DumpOptions(pid=workload.root, images_dir=images))
    assert res.log_file == images / "dump.log" and res.log_file.exists()
    assert (images / "inventory.img").exists()
    workload.wait_gone()  # without leave_running CRIU killed the tree
    at_dump = workload.counters()
    time.sleep(0.3)
    assert workload.counters() == at_dump, "the tree still ran after a dump without leave_running"

    r = criu.restore(RestoreOptions(images_dir=images))
    assert r.pid == workload.root
    assert (images / "restore.log").exists()
    # same pids, same process tree, every thread back
    assert _snapshot(workload) == before
    kids = Path(f"/proc/{r.pid}/task/{r.pid}/children").read_text().split()
    assert sorted(map(int, kids)) == sorted(workload.pids[1:])
    after = workload.advancing()
    for name in NAMES:  # continued from the dumped value, not from 1
        assert after[name] > at_dump[name], (name, at_dump, after)
    first = {n: v for n, v in after.items()}
    assert all(v < at_dump[n] + 200 for n, v in first.items())


def test_restore_sibling_makes_root_our_child(criu_binary: str, workload: Workload, images: Path) -> None:
    criu = Criu(criu_binary)
    criu.dump(DumpOptions(pid=workload.root, images_dir=images))
    workload.wait_gone()
    r = criu.restore(RestoreOptions(images_dir=images, rst_sibling=True))
    assert ppid(r.pid) == os.getpid()
    workload.advancing()
    os.kill(r.pid, 9)
    pid, status = os.waitpid(r.pid, 0)  # ours to reap, exactly as documented
    assert pid == r.pid and os.WIFSIGNALED(status)


def test_restore_without_sibling_reparents_root(criu_binary: str, workload: Workload, images: Path) -> None:
    criu = Criu(criu_binary)
    criu.dump(DumpOptions(pid=workload.root, images_dir=images))
    workload.wait_gone()
    r = criu.restore(RestoreOptions(images_dir=images))
    assert ppid(r.pid) != os.getpid()


def test_leave_running_then_restore_from_images(criu_binary: str, workload: Workload, images: Path) -> None:
    criu = Criu(criu_binary)
    frozen: dict[str, int] = {}

    def at_post_dump(name: str, pid: int) -> None:
        if name == "post-dump":  # tasks are still seized here: the files hold the values in the images
            frozen.update(workload.counters())

    res = criu.dump(DumpOptions(pid=workload.root, images_dir=images, leave_running=True), on_notify=at_post_dump)
    at_dump = frozen
    assert res.notifications[0] == Notify.PRE_DUMP and Notify.POST_DUMP in res.notifications
    moved = workload.advancing()  # still running, every thread
    assert all(state(p) in "RSD" for p in workload.pids)
    # let it run far past the dump, then replace it by the image: the counters go back to the dumped values
    wait_for(lambda: workload.counters()["p"] > at_dump["p"] + 20, what="workload to run past the dump")
    late = workload.counters()
    for pid in workload.pids:
        os.kill(pid, 9)
    workload.wait_gone()
    r = criu.restore(RestoreOptions(images_dir=images))
    assert r.pid == workload.root
    wait_for(lambda: all(v != late[n] for n, v in workload.counters().items()), what="restored counters")
    restored = workload.counters()
    assert restored["p"] < late["p"], (at_dump, moved, late, restored)
    assert restored["p"] > at_dump["p"]


def test_notifications_in_order_with_pids(criu_binary: str, workload: Workload, images: Path) -> None:
    criu = Criu(criu_binary)
    dump_seen: list[tuple[str, int]] = []
    criu.dump(DumpOptions(pid=workload.root, images_dir=images), on_notify=lambda n, p: dump_seen.append((n, p)))
    assert [n for n, _ in dump_seen] == ["pre-dump", "query-ext-files", "post-dump"]
    workload.wait_gone()

    seen: list[tuple[str, int, str]] = []

    def on_restore(name: str, pid: int) -> None:
        root_state = state(workload.root) if os.path.exists(f"/proc/{workload.root}") else "-"
        seen.append((name, pid, root_state))

    r = criu.restore(RestoreOptions(images_dir=images), on_notify=on_restore)
    names = [n for n, _, _ in seen]
    assert names == ["pre-restore", "post-restore", "pre-resume", "post-resume"], seen
    assert r.notifications == names
    assert dict((n, p) for n, p, _ in seen)["post-restore"] == r.pid
    states = {n: s for n, _, s in seen}
    assert states["pre-resume"] == "t"          # still traced by CRIU
    assert states["post-resume"] in "RSD"       # running again: the moment the engine restores CUDA


def test_failed_dump_of_missing_pid(criu_binary: str, images: Path) -> None:
    with pytest.raises(CriuError) as ei:
        Criu(criu_binary).dump(DumpOptions(pid=2**22 - 1, images_dir=images))
    err = ei.value
    assert err.errno == 3  # ESRCH
    assert err.log_file == images / "dump.log" and err.log_file.exists()
    assert f"dump of pid {2**22 - 1}" in str(err)
    assert "criu log tail" in str(err) and err.log_tail and "Error" in err.log_tail


def test_failed_dump_leaves_workload_running(criu_binary: str, workload: Workload, images: Path) -> None:
    with pytest.raises(CriuError) as ei:
        Criu(criu_binary).dump(DumpOptions(pid=workload.root, images_dir=images,
                                           freeze_cgroup="/sys/fs/cgroup/freezer/gpucr-test-does-not-exist"))
    assert "criu log tail" in str(ei.value)
    assert all(state(p) in "RSD" for p in workload.pids)
    workload.advancing()


@pytest.mark.parametrize("stage", ["pre-dump", "post-dump"])
def test_callback_failure_aborts_dump_and_workload_runs(criu_binary: str, workload: Workload, images: Path,
                                                        stage: str) -> None:
    def cb(name: str, pid: int) -> None:
        if name == stage:
            raise RuntimeError("cuda lock failed (test)")

    with pytest.raises(CriuError) as ei:
        Criu(criu_binary).dump(DumpOptions(pid=workload.root, images_dir=images), on_notify=cb)
    assert f"aborted at {stage}: cuda lock failed (test)" in str(ei.value)
    assert isinstance(ei.value.__cause__, RuntimeError)
    assert all(state(p) in "RSD" for p in workload.pids), [state(p) for p in workload.pids]  # not t, T or Z
    workload.advancing()


def test_callback_failure_after_resume_keeps_result(criu_binary: str, workload: Workload, images: Path) -> None:
    criu = Criu(criu_binary)
    criu.dump(DumpOptions(pid=workload.root, images_dir=images))
    workload.wait_gone()

    def cb(name: str, pid: int) -> None:
        if name == "post-resume":
            raise RuntimeError("cuda restore failed (test)")

    with pytest.raises(CriuError) as ei:
        criu.restore(RestoreOptions(images_dir=images), on_notify=cb)
    assert "succeeded, but the post-resume step failed" in str(ei.value)
    assert ei.value.result is not None and ei.value.result.pid == workload.root
    workload.advancing()  # CRIU cannot undo a resumed restore: the tree runs and the caller knows its pid


def test_restore_over_live_pids_explains(criu_binary: str, workload: Workload, images: Path) -> None:
    criu = Criu(criu_binary)
    criu.dump(DumpOptions(pid=workload.root, images_dir=images, leave_running=True))
    with pytest.raises(CriuError) as ei:
        criu.restore(RestoreOptions(images_dir=images))
    msg = str(ei.value)
    assert "File exists" in msg and "still in use" in msg
    assert "rlimit" not in msg.splitlines()[0]  # the cause, not CRIU's first (harmless) error
    workload.advancing()


def test_images_and_log_are_private(criu_binary: str, workload: Workload, images: Path) -> None:
    Criu(criu_binary).dump(DumpOptions(pid=workload.root, images_dir=images, leave_running=True))
    assert stat.S_IMODE(images.stat().st_mode) == 0o700
    assert any(images.iterdir())


def test_missing_images_dir(criu_binary: str, tmp_path: Path) -> None:
    with pytest.raises(CriuError, match="cannot open the images directory .*nope"):
        Criu(criu_binary).restore(RestoreOptions(images_dir=tmp_path / "nope"))


def test_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(CriuError, match="'criu-gpucr-missing' not found on PATH.*CRIU >= 4.1"):
        Criu("criu-gpucr-missing").version()
    with pytest.raises(CriuError, match="does not exist or is not executable"):
        Criu(str(tmp_path / "criu")).version()


# --- CRIU's own plugins are off for our requests --------------------------------------------------------------


@pytest.fixture
def bad_plugins(tmp_path: Path) -> Path:
    """A plugin dir holding a .so that is no shared object: loading it fails the request."""
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "cuda_plugin.so").write_bytes(b"not an ELF file")
    return d


def test_plugins_disabled_even_when_env_names_a_dir(criu_binary: str, workload: Workload, images: Path,
                                                    bad_plugins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRIU_LIBS_DIR", str(bad_plugins))
    Criu(criu_binary).dump(DumpOptions(pid=workload.root, images_dir=images, leave_running=True))
    assert "cuda_plugin" not in (images / "dump.log").read_text()


def test_plugins_dir_is_the_knob(criu_binary: str, workload: Workload, images: Path, bad_plugins: Path) -> None:
    # the same dir passed explicitly is loaded (and fails): proof that the knob we turn off is the one CRIU reads
    with pytest.raises(CriuError, match="cuda_plugin.so"):
        Criu(criu_binary, plugins_dir=bad_plugins).dump(
            DumpOptions(pid=workload.root, images_dir=images, leave_running=True))
    workload.advancing()


# --- a fake peer for the version check and the silence timeout ----------------------------------------------------

FAKE = """#!{python}
import os, socket, sys, time
sys.path.insert(0, {repo!r})
from nri_plugin.ckpt.criu._pb import rpc_pb2 as pb
sk = socket.socket(fileno=int(sys.argv[2]))
sk.recv(4096)
mode = os.environ["FAKE_CRIU_MODE"]
if mode == "old":
    sk.send(pb.criu_resp(type=pb.VERSION, success=True,
                         version=pb.criu_version(major_number=3, minor_number=17, sublevel=1)).SerializeToString())
elif mode == "garbage":
    sk.send(b"\\xff\\xff\\xff")
elif mode == "silent":
    sk.recv(4096)  # answers nothing; returns when the client gives up and closes
"""


@pytest.fixture
def fake_criu(tmp_path: Path) -> str:
    path = tmp_path / "fake-criu"
    path.write_text(FAKE.format(python=sys.executable, repo=str(REPO)))
    path.chmod(0o755)
    return str(path)


def test_version_too_old(fake_criu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "old")
    with pytest.raises(CriuError, match=r"is version 3\.17\.1, gpucr needs CRIU >= 4\.1: install"):
        Criu(fake_criu).version()


def test_garbage_answer(fake_criu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "garbage")
    with pytest.raises(CriuError, match="not a criu_resp"):
        Criu(fake_criu).version()


def test_silent_criu_times_out(fake_criu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CRIU_MODE", "silent")
    start = time.monotonic()
    with pytest.raises(CriuError, match=r"sent nothing for 0\.5 s"):
        Criu(fake_criu, timeout_s=0.5).version()
    assert time.monotonic() - start < 15


def test_restore_with_inherited_stdout_pipe(criu_binary: str, images: Path) -> None:
    """A container's stdio is a pipe the runtime holds: the restored tree gets a new pipe through inherit_fd."""
    import subprocess

    p = subprocess.Popen(["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    assert p.stdout is not None
    key = f"pipe:[{os.fstat(p.stdout.fileno()).st_ino}]"
    try:
        first = int(p.stdout.readline())
        criu = Criu(criu_binary)
        criu.dump(DumpOptions(pid=p.pid, images_dir=images))
        p.wait(10)
        last = int(p.stdout.read().split()[-1] or first)
        wait_for(lambda: not session_members(p.pid), what=f"session {p.pid} to be reaped")
        r_fd, w_fd = os.pipe()
        try:
            res = criu.restore(RestoreOptions(images_dir=images, inherit_fds={key: w_fd}))
            os.close(w_fd)
            w_fd = -1
            with os.fdopen(r_fd, "rb", closefd=False) as r:
                line = int(r.readline())
            assert line == last + 1  # the restored shell writes into our new pipe, counting on
        finally:
            if w_fd >= 0:
                os.close(w_fd)
            os.close(r_fd)
            try:
                os.kill(res.pid, 9)
            except (ProcessLookupError, UnboundLocalError):
                pass
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()


def test_interrupt_in_callback_closes_criu_and_workload_runs(criu_binary: str, workload: Workload,
                                                             images: Path) -> None:
    def cb(name: str, pid: int) -> None:
        if name == "post-dump":  # tasks are seized right now: closing the socket must make CRIU let go
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Criu(criu_binary).dump(DumpOptions(pid=workload.root, images_dir=images), on_notify=cb)
    assert all(state(p) in "RSD" for p in workload.pids), [state(p) for p in workload.pids]
    workload.advancing()
    assert _our_children() == {workload.root}  # criu was reaped, nothing else left behind


def _our_children() -> set[int]:
    kids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        kids.update(map(int, Path(f"/proc/self/task/{tid}/children").read_text().split()))
    return kids


def test_bad_options_fail_before_criu_starts(images: Path) -> None:
    # a binary that does not exist proves criu was never needed to refuse these
    missing = Criu("/nonexistent/criu")
    with pytest.raises(CriuError, match="invalid dump options: pid 0"):
        missing.dump(DumpOptions(pid=0, images_dir=images))
    with pytest.raises(CriuError, match="invalid restore options: inherit fd"):
        missing.restore(RestoreOptions(images_dir=images, inherit_fds={"k": -3}))


def test_plugins_disabled_even_when_user_config_names_a_dir(criu_binary: str, workload: Workload, images: Path,
                                                            bad_plugins: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "user.conf"
    conf.write_text(f"libdir {bad_plugins}\nfile-locks\n")
    monkeypatch.setenv("CRIU_CONFIG_FILE", str(conf))
    Criu(criu_binary).dump(DumpOptions(pid=workload.root, images_dir=images, leave_running=True))
    log = (images / "dump.log").read_text()
    assert "cuda_plugin" not in log
    monkeypatch.setenv("CRIU_CONFIG_FILE", str(tmp_path / "missing.conf"))
    with pytest.raises(CriuError, match=r"cannot read \$CRIU_CONFIG_FILE .*missing.conf"):
        Criu(criu_binary).version()

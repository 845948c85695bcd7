"""gpucr's CRIU-front hooks (``nri_plugin.handlers.front_cuda``) on real processes, cgroups and the fake CUDA driver, without a
runtime: what ``wants`` decides for each kind of dump (managed, unmanaged with or without CUDA state, stale or
corrupt records, node policy), and the clear errors of bad input. The runtime paths are in
tests/front/test_gpufront.py."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.front.errors import HookError
from nri_plugin.front.messages import DUMP, RESTORE, Request
from nri_plugin.handlers.front_cuda import MARKER, CudaFrontHooks, make
from nri_plugin.policy.config import ConfigError, NodeConfig
from nri_plugin.policy.records import ContainerRecord, RecordedPolicy, write_record
from tests import cgroups
from tests.fakes.cuda import FakeCuda, FakeWorkload, fake_cuda, fake_cuda_lib  # noqa: F401 (fixtures)


def hooks(tmp_path: Path, fc: FakeCuda | None = None, **node: object) -> CudaFrontHooks:
    cfg = NodeConfig(state_dir=tmp_path / "state", libcuda=str(fc.lib) if fc else "", **node)  # type: ignore[arg-type]
    return CudaFrontHooks({"log_dir": str(tmp_path / "log"), **({"libnvml": str(fc.lib)} if fc else {})}, node=cfg)


def log_text(tmp_path: Path) -> str:
    p = tmp_path / "log" / "criu-front.log"
    return p.read_text() if p.exists() else ""


def dump(pid: int, images: Path | None = None) -> Request:
    r = Request(b"", DUMP, pid=pid, leave_running=True)
    r.images_dir = str(images) if images else None
    return r


class Cgroup:
    """A fresh cgroup on the product's freezer hierarchy, named like a container id, with sleepers started in it."""

    def __init__(self, freezer: cgroups.Freezer) -> None:
        self.freezer = freezer
        self.dir = freezer.path
        self.cid = freezer.path.name
        self.procs: list[subprocess.Popen[bytes]] = []

    def sleeper(self) -> int:
        p = sleeper(self.dir)
        self.procs.append(p)
        return p.pid


@pytest.fixture
def cgroup() -> Iterator[Cgroup]:
    """A fresh freezer cgroup; its processes are killed and reaped, and it is removed, afterwards."""
    if os.geteuid() != 0:
        pytest.fail("these tests need root (cgroups)", pytrace=False)
    with cgroups.fresh("gf") as f:
        cg = Cgroup(f)
        try:
            yield cg
        finally:
            f.thaw()
            for p in cg.procs:
                p.kill()
                p.wait()


def sleeper(cg: Path | None = None) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(["sleep", "60"])
    if cg is not None:
        (cg / "cgroup.procs").write_text(str(p.pid))
    return p


def test_plain_process_without_record_is_handed_over(tmp_path: Path) -> None:
    p = sleeper()
    try:
        h = hooks(tmp_path)
        assert h.wants(dump(p.pid)) is False
        assert log_text(tmp_path) == ""
    finally:
        p.kill()
        p.wait()


def test_unmanaged_cuda_process_protected_by_default_and_logged(fake_cuda: FakeCuda, tmp_path: Path) -> None:
    w = FakeWorkload(fake_cuda, tmp_path)
    try:
        h = hooks(tmp_path, fake_cuda)
        assert h.wants(dump(w.root)) is True
        assert h.target is not None and h.target.cuda_pids == [w.root] and h.target.record is None
        assert "was not managed by gpucr" in log_text(tmp_path) and "unmanaged_cuda=protect" in log_text(tmp_path)
        h2 = hooks(tmp_path, fake_cuda, unmanaged_cuda="ignore")
        assert h2.wants(dump(w.root)) is False
        assert "(unmanaged_cuda=ignore)" in log_text(tmp_path)
    finally:
        w.kill()


@pytest.mark.criu
def test_managed_record_is_wanted_without_touching_the_driver(tmp_path: Path, cgroup: Cgroup) -> None:
    cid = cgroup.cid
    pid = cgroup.sleeper()
    write_record(tmp_path / "state", ContainerRecord(cid, "web", "pod1", "app", "default", True, "annotation",
                                                     pid=pid, policy=RecordedPolicy(1234)))
    # the driver library does not even exist: wants() must not load it
    h = hooks(tmp_path, None)
    h.libcuda = str(tmp_path / "no-such-libcuda.so")
    cgroup.freezer.freeze()
    try:
        assert h.wants(dump(pid)) is True
        assert h.target is not None and h.target.record is not None and h.target.why.startswith("managed")
    finally:
        cgroup.freezer.thaw()


@pytest.mark.criu
def test_managed_record_without_the_hooks_fields_is_found_from_proc(tmp_path: Path, cgroup: Cgroup) -> None:
    """A record the plugin wrote while it injected no OCI hooks (gpucr-hook missing): no pid, no cgroup. The front
    needs neither: the dumped pid's cgroup in /proc names the container, whose record says managed."""
    pid = cgroup.sleeper()
    write_record(tmp_path / "state", ContainerRecord(cgroup.cid, "web", "pod1", "app", "default", True, "annotation",
                                                     policy=RecordedPolicy(1234)))
    h = hooks(tmp_path, None)
    h.libcuda = str(tmp_path / "no-such-libcuda.so")  # decided without the driver
    assert h.wants(dump(pid)) is True
    t = h.target
    assert t is not None and t.container_id == cgroup.cid and t.cgroup.endswith("/" + cgroup.cid)
    assert t.record is not None and t.record.pid == 0 and t.why == "managed (annotation)"


@pytest.mark.criu
@pytest.mark.parametrize("layout", ["cgroupfs", "systemd"])
def test_managed_record_found_under_every_cgroup_driver(tmp_path: Path, layout: str) -> None:
    """The systemd driver (kubeadm's default) names the container's cgroup ``cri-containerd-<id>.scope`` inside its
    pod's slice: the front must take the id from inside the scope name, or it never finds the plugin's record."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (cgroups)", pytrace=False)
    cid = uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex characters, as kubelet's container ids
    pod = cgroups.unique_name("gf")
    root = cgroups.root()
    top = root / (f"{pod}.slice" if layout == "systemd" else pod)
    leaf = (top / f"{pod}-besteffort-pod{cid[:8]}_1_2.slice" / f"cri-containerd-{cid}.scope" if layout == "systemd"
            else top / f"pod{cid[:8]}" / cid)
    leaf.mkdir(parents=True)
    p = sleeper(leaf)
    try:
        write_record(tmp_path / "state", ContainerRecord(cid, "web", "pod1", "app", "default", True, "annotation",
                                                         pid=p.pid, policy=RecordedPolicy(1234)))
        h = hooks(tmp_path, None)
        h.libcuda = str(tmp_path / "no-such-libcuda.so")  # a managed record decides without the driver
        assert h.wants(dump(p.pid)) is True
        t = h.target
        assert t is not None and t.container_id == cid and t.cgroup == "/" + str(leaf.relative_to(root))
        assert t.record is not None and t.record.container_id == cid and t.why.startswith("managed")
    finally:
        p.kill()
        p.wait()
        for d in (leaf, leaf.parent, top):
            cgroups.rmdir(d)


@pytest.mark.criu
@pytest.mark.parametrize("bad", ["corrupt", "other-format", "stale"])
def test_bad_record_falls_back_to_node_policy(fake_cuda: FakeCuda, tmp_path: Path, cgroup: Cgroup, bad: str) -> None:
    """A record gpucr cannot trust is ignored: the dump falls to the node policy, which protects a CUDA process
    (unmanaged_cuda=protect): gpucr checkpoints it before CRIU would dump it, and rolls back after a failed dump."""
    cid = cgroup.cid
    w = FakeWorkload(fake_cuda, tmp_path)
    try:
        pid = w.root
        (cgroup.dir / "cgroup.procs").write_text(str(pid))
        path = tmp_path / "state" / "containers" / f"{cid}.json"
        write_record(tmp_path / "state", ContainerRecord(cid, "web", "pod1", "app", "default", True, "annotation",
                                                         pid=os.getpid() if bad == "stale" else pid))
        if bad == "corrupt":
            path.write_text("{not json")
        elif bad == "other-format":
            path.write_text(json.dumps({"format": 99}))
        images = tmp_path / "images"
        images.mkdir()
        h = hooks(tmp_path, fake_cuda)
        req = dump(pid, images)
        assert h.wants(req) is True  # protected, not handed over
        assert h.target is not None and h.target.record is None and h.target.cuda_pids == [pid]
        text = log_text(tmp_path)
        assert f"DUMP of pid {pid}: " in text and cid in text, text
        assert {"corrupt": "unreadable or corrupt", "other-format": "has format 99",
                "stale": "is stale"}[bad] in text, text
        assert "applying the node policy (unmanaged_cuda=protect)" in text
        h.before_dump(req)
        assert fake_cuda.state(pid) == "CHECKPOINTED" and not fake_cuda.maps_device(pid)
        assert json.loads((images / MARKER).read_text())["managed"] is False
        h.after_response(req, False)
        assert fake_cuda.state(pid) == "RUNNING"
        w.advancing()
    finally:
        w.kill()


def test_lock_failure_is_rolled_back_with_a_clear_error(fake_cuda: FakeCuda, tmp_path: Path) -> None:
    w = FakeWorkload(fake_cuda, tmp_path, nproc=2)
    try:
        images = tmp_path / "images"
        images.mkdir()
        fake_cuda.fail("lock", 999, once=True)
        h = hooks(tmp_path, fake_cuda)
        req = dump(w.root, images)
        assert h.wants(req)
        with pytest.raises(HookError) as ei:
            h.before_dump(req)
        msg = str(ei.value)
        assert f"GPU-safe dump of container ? (pid {w.root}) failed at step cuda-lock" in msg, msg
        assert "CUDA_ERROR_UNKNOWN" in msg and "rolled back" in msg and "fix: the GPU work did not drain" in msg
        assert [fake_cuda.state(p) for p in w.pids] == ["RUNNING", "RUNNING"]
        assert not (images / MARKER).exists()
        w.advancing()
    finally:
        w.kill()


def test_suspend_marker_resume(fake_cuda: FakeCuda, tmp_path: Path) -> None:
    """The DUMP path without CRIU: before_dump checkpoints and writes the marker (0600); a failed dump rolls back;
    a successful leave-running dump resumes."""
    w = FakeWorkload(fake_cuda, tmp_path)
    try:
        images = tmp_path / "images"
        images.mkdir()
        for success in (False, True):
            h = hooks(tmp_path, fake_cuda)
            req = dump(w.root, images)
            assert h.wants(req)
            h.before_dump(req)
            assert fake_cuda.state(w.root) == "CHECKPOINTED"
            m = json.loads((images / MARKER).read_text())
            assert (images / MARKER).stat().st_mode & 0o777 == 0o600
            assert [p["pid"] for p in m["processes"]] == [w.root] and m["managed"] is False
            h.after_response(req, success)
            assert fake_cuda.state(w.root) == "RUNNING"
            w.advancing()
    finally:
        w.kill()


def test_restore_is_wanted_only_with_the_marker(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    r = Request(b"", RESTORE)
    r.images_dir = str(images)
    h = hooks(tmp_path)
    assert h.wants(r) is False
    (images / MARKER).write_text("{broken")
    assert h.wants(r) is True
    h.on_notify(r, "setup-namespaces", 4242)
    with pytest.raises(HookError, match=f"marker {images / MARKER} is unreadable"):
        h.on_notify(r, "post-resume", None)
    assert h.wants(Request(b"", 42)) is False  # an unknown request type is none of gpucr's business


def test_bad_node_config_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('unmanaged_cuda = "sometimes"\n')
    with pytest.raises(ConfigError, match=f"gpucr's CRIU hooks: {cfg}: unmanaged_cuda = 'sometimes'; accepted: "
                                          "protect, ignore"):
        make({"node_config": str(cfg)})


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch, fail: int | None = None,
                   under: Path | None = None) -> list[str]:
    """Record the paths the hooks fsync (the real fsync runs); with ``fail``, every fsync (of a path in ``under``,
    when given: the lease's own writes fsync too) raises that errno."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        seen.append(path)
        if fail is not None and (under is None or Path(path).is_relative_to(under)):
            raise OSError(fail, os.strerror(fail))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_images_fsynced_at_post_dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At CRIU's post-dump (before it lets the tasks go, and before the runtime hears "done") every image and the
    images dir are fsynced, once."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for n in ("inventory.img", "pages-1.img", "sub/x.img"):
        (images / n).write_bytes(b"x" * 100)
    seen = _record_fsyncs(monkeypatch)
    h = hooks(tmp_path)
    req = dump(os.getpid(), images)
    h.on_notify(req, "pre-dump", None)
    assert seen == []
    h.on_notify(req, "post-dump", None)
    assert set(seen) == {str(images / n) for n in ("inventory.img", "pages-1.img", "sub/x.img")} | {
        str(images / "sub"), str(images)} and seen[-1] == str(images)
    h.after_response(req, True)
    assert len(seen) == 5
    assert "3 image file(s)" in log_text(tmp_path) and "fsynced at post-dump" in log_text(tmp_path)


def test_fsync_before_the_answer_without_notifications(fake_cuda: FakeCuda, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that asked for no notifications: the fsync happens before CRIU's success reaches it; when it fails,
    the runtime gets one error naming the step and the fix, and the CUDA processes are resumed all the same."""
    w = FakeWorkload(fake_cuda, tmp_path)
    try:
        images = tmp_path / "images"
        images.mkdir()
        h = hooks(tmp_path, fake_cuda)
        req = dump(w.root, images)
        assert h.wants(req)
        h.before_dump(req)
        (images / "pages-1.img").write_bytes(b"p" * 4096)
        _record_fsyncs(monkeypatch, fail=5, under=images)
        with pytest.raises(HookError) as ei:
            h.after_response(req, True)
        msg = str(ei.value)
        assert f"(pid {w.root})" in msg and "failed at step sync" in msg and "Input/output error" in msg
        assert "fix: check the filesystem of the runtime's checkpoint dir" in msg and "\n" not in msg
        assert fake_cuda.state(w.root) == "RUNNING"
        w.advancing()
    finally:
        w.kill()


def test_every_cuda_process_of_the_container_at_once(fake_cuda: FakeCuda, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Three CUDA processes: the front locks, checkpoints, restores and unlocks them concurrently (the fake's trace:
    each call slowed by its delay hook, all of a step overlapping), with the node's THP boost (driver_thp =
    "always") around the copies only, and the log line says which mode ran."""
    from nri_plugin.host.thp import KNOB, ThpStage, read_mode

    knob = tmp_path / "thp-enabled"  # the test's own knob (the real one is the CLI test's)
    knob.write_text("always [madvise] never\n")
    monkeypatch.setenv("FAKE_CUDA_THP_KNOB", str(knob))
    w = FakeWorkload(fake_cuda, tmp_path, nproc=3)
    try:
        images = tmp_path / "images"
        images.mkdir()
        fake_cuda.trace_steps_slowed(300)
        h = hooks(tmp_path, fake_cuda, driver_thp="always")
        stage = h.steps().thp
        assert stage is not None and stage.knob == KNOB and stage.state_dir == tmp_path / "state"
        h.steps().thp = ThpStage(tmp_path / "state", knob)
        req = dump(w.root, images)
        assert h.wants(req)
        h.before_dump(req)
        assert {fake_cuda.state(p) for p in w.pids} == {"CHECKPOINTED"}
        h.after_response(req, True)
        assert {fake_cuda.state(p) for p in w.pids} == {"RUNNING"}
        w.advancing()
        fake_cuda.assert_steps_at_once(w.pids, "madvise")
        assert read_mode(knob) == "madvise"
        assert "in parallel (THP always (node: madvise), CustomStorage absent)" in log_text(tmp_path)
    finally:
        w.kill()

"""The front is criu to every caller, not only to runc: a pycriu-style caller (plain Python, a socketpair, ``criu swrk
FD``, RPC requests; not a subreaper) dumps through the relaying front and restores with ``rst_sibling``, and the
restored process is the caller's child, as with the real criu; ``pidfd_store_sk`` is the caller's socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu._pb import rpc_pb2
from nri_plugin.front import _wire
from tests.front.conftest import FrontRoute
from tests.front.recording_hooks import records
from tests.front.test_swrk import Session, _close_sessions  # noqa: F401  (the fixture closes sessions)

pytestmark = pytest.mark.criu
_PR_GET_CHILD_SUBREAPER = 37


def converse(s: Session, req: rpc_pb2.criu_req | bytes) -> tuple[rpc_pb2.criu_resp, list[str]]:
    """Send the request, answer every notify with success (as pycriu does), return the final answer."""
    s.send(req)
    notes = []
    while True:
        resp = s.recv()
        if resp.type != rpc_pb2.NOTIFY:
            return resp, notes
        notes.append(resp.notify.script)
        s.send(rpc_pb2.criu_req(type=rpc_pb2.NOTIFY, notify_success=True))


def ppid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")))


def not_a_subreaper() -> None:
    import ctypes
    val = ctypes.c_int(-1)
    assert ctypes.CDLL(None).prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(val), 0, 0, 0) == 0
    assert val.value == 0, "the test caller must not be a subreaper (the case issue 8 item 9 is about)"


@pytest.fixture
def images(tmp_path: Path) -> Iterator[int]:
    d = tmp_path / "images"
    d.mkdir()
    low = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    fd = os.dup2(low, 333)  # a number the front does not hold: a front that forgot to reopen it would fail
    os.close(low)
    yield fd
    os.close(fd)


def test_restore_with_rst_sibling_leaves_the_tree_the_callers_child(front_route: FrontRoute, tmp_path: Path,
                                                                     images: int) -> None:
    not_a_subreaper()
    record = tmp_path / "record.jsonl"
    victim = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    restored = 0
    try:
        with front_route.configured(hooks="tests.front.recording_hooks:make", record_to=str(record)):
            mark = front_route.log_mark()
            dump = rpc_pb2.criu_req(type=rpc_pb2.DUMP)
            dump.opts.images_dir_fd, dump.opts.pid, dump.opts.log_file = images, victim.pid, "dump.log"
            dump.opts.log_level, dump.opts.notify_scripts = 4, True
            s = Session(front_route)
            resp, _ = converse(s, dump)
            assert resp.type == rpc_pb2.DUMP and resp.success, resp.cr_errmsg
            assert s.finish() == 0
            assert victim.wait(10) == -signal.SIGKILL  # criu killed it (no leave_running); its pid is free again

            rst = rpc_pb2.criu_req(type=rpc_pb2.RESTORE)
            rst.opts.images_dir_fd, rst.opts.log_file, rst.opts.log_level = images, "restore.log", 4
            rst.opts.rst_sibling, rst.opts.notify_scripts = True, True
            s = Session(front_route)
            resp, notes = converse(s, rst)
            assert resp.type == rpc_pb2.RESTORE and resp.success, resp.cr_errmsg
            restored = resp.restore.pid
            assert restored == victim.pid and "post-resume" in notes
            assert s.finish() == 0
            log = front_route.log_when(mark, f"criu pid {s.proc.pid} exited")
        # relayed, with the hooks called, yet the restored tree is this process's child, as with the real criu
        assert "request RESTORE from runtime pid" in log and f"runs as pid {s.proc.pid}" in log
        assert {"point": "notify", "name": "post-resume", "type": "RESTORE"}.items() <= next(
            r for r in records(record) if r.get("name") == "post-resume").items()
        assert ppid_of(restored) == os.getpid()
        os.kill(restored, signal.SIGKILL)
        pid, status = os.waitpid(restored, 0)
        assert pid == restored and os.WIFSIGNALED(status)
        restored = 0
    finally:
        if restored:
            os.kill(restored, signal.SIGKILL)
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def _with_pidfd_store_sk(req: rpc_pb2.criu_req, sk: int) -> bytes:
    """``opts.pidfd_store_sk`` (field 62 of CRIU's criu_opts; gpucr's proto subset lacks it), wire-encoded."""
    opts = req.opts.SerializeToString() + _wire.field_bytes(_wire.varint_field(62, sk))
    return _wire.encode([_wire.varint_field(1, req.type), _wire.Field(2, _wire.LEN, opts)])


@pytest.mark.parametrize("mode", ["handoff", "relay"])
def test_dump_with_pidfd_store_sk(front_route: FrontRoute, tmp_path: Path, images: int, mode: str) -> None:
    """CRIU takes pidfd_store_sk from its peer with pidfd_getfd: the relaying front must hand it the caller's
    socket (a wrong number fails the dump: "Can't steal fd")."""
    victim = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    low = sk.detach()
    store = os.dup2(low, 334)
    os.close(low)
    try:
        dump = rpc_pb2.criu_req(type=rpc_pb2.DUMP)
        dump.opts.images_dir_fd, dump.opts.pid, dump.opts.log_file = images, victim.pid, "dump.log"
        dump.opts.leave_running, dump.opts.log_level = True, 4
        record = tmp_path / "record.jsonl"
        hooks = {"hooks": "tests.front.recording_hooks:make", "record_to": str(record)} if mode == "relay" else {}
        with front_route.configured(**hooks):
            mark = front_route.log_mark()
            s = Session(front_route)
            resp, _ = converse(s, _with_pidfd_store_sk(dump, store))
            assert resp.type == rpc_pb2.DUMP and resp.success, resp.cr_errmsg
            assert s.finish() == 0
            log = front_route.log_when(mark, "exited" if mode == "relay" else "handing swrk")
        if mode == "relay":
            assert "'pidfd_store_sk': 334" in log and [r["point"] for r in records(record)][0] == "before_dump"
        # CRIU binds an unnamed store socket to an abstract name of its own on first use: it was this very socket
        with socket.socket(fileno=os.dup(store)) as caller_sk:
            name = caller_sk.getsockname()
        assert isinstance(name, bytes) and name.startswith(b"\0/criu-pidfd-store-"), name
        assert victim.poll() is None
    finally:
        os.close(store)
        victim.kill()
        victim.wait()


def test_refused_dump_runs_no_criu_and_exits_1(front_route: FrontRoute, tmp_path: Path, images: int) -> None:
    """A hook that refuses before the dump: the caller gets the explanation, the front exits 1, no criu ran."""
    victim = subprocess.Popen(["sleep", "1000"], start_new_session=True, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with front_route.configured(hooks="tests.front.recording_hooks:make", record_to=str(tmp_path / "r.jsonl"),
                                    fail_before_dump="no GPU lock today"):
            dump = rpc_pb2.criu_req(type=rpc_pb2.DUMP)
            dump.opts.images_dir_fd, dump.opts.pid, dump.opts.log_file = images, victim.pid, "dump.log"
            s = Session(front_route)
            s.send(dump)
            resp = s.recv()
            assert not resp.success and resp.cr_errmsg.endswith("no GPU lock today")
            t0 = time.monotonic()
            assert s.proc.wait(10) == 1 and time.monotonic() - t0 < 10
        assert not (Path(f"/proc/self/fd/{images}") / "pstree.img").exists()
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()

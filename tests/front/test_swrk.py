"""The front against the real CRIU, with this test process playing the runtime (no containerd): fd rewrite,
pass-through, exit status and the bad-input cases."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu._pb import rpc_pb2
from tests.front.conftest import REAL_CRIU, FrontRoute

pytestmark = pytest.mark.criu
#: criu_resp{type: VERSION, success: true, version{major_number: 3, minor_number: 17, sublevel: 1}}
OLD_VERSION_ANSWER = "080a10015206080310112001"
_open: list[Session] = []


@pytest.fixture(params=["handoff", "relay"])
def mode(request: pytest.FixtureRequest) -> str:
    """``handoff``: no hooks, so the front execs the real criu on the runtime's socket (relay = auto, the default);
    ``relay``: relay = always, the path gpucr's hooks use."""
    return str(request.param)


def mode_env(mode: str) -> dict[str, str]:
    return {"GPUCR_FRONT_RELAY": "always" if mode == "relay" else "auto"}


@pytest.fixture(autouse=True)
def _close_sessions() -> Iterator[None]:
    yield
    while _open:
        s = _open.pop()
        s.ours.close()
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.wait()


class Session:
    """A `criu swrk N` run of the front, this process on the other end of the socket (as runc would be)."""

    def __init__(self, route: FrontRoute, env: dict[str, str] | None = None) -> None:
        self.ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([str(route.criu), "swrk", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                     env={**os.environ, **(env or {})})
        theirs.close()
        self.ours.settimeout(30)
        _open.append(self)

    def send(self, req: rpc_pb2.criu_req | bytes) -> None:
        self.ours.send(req if isinstance(req, bytes) else req.SerializeToString())

    def recv(self) -> rpc_pb2.criu_resp:
        return rpc_pb2.criu_resp.FromString(self.ours.recv(1 << 20))

    def finish(self, timeout: float = 30) -> int:
        self.ours.shutdown(socket.SHUT_WR)
        self.ours.settimeout(timeout)
        assert self.ours.recv(1 << 20) == b""  # the front mirrors criu's half-close
        rc = self.proc.wait(timeout)
        self.ours.close()
        return rc


def test_version_through_the_front(front_route: FrontRoute, mode: str) -> None:
    mark = front_route.log_mark()
    s = Session(front_route, mode_env(mode))
    s.send(rpc_pb2.criu_req(type=rpc_pb2.VERSION))
    resp = s.recv()
    assert resp.type == rpc_pb2.VERSION and resp.success
    assert (resp.version.major_number, resp.version.minor_number) >= (4, 1)
    assert s.finish() == 0
    log = front_route.log_when(mark, f"criu pid {s.proc.pid} exited" if mode == "relay" else "cached answer")
    me = os.getpid()
    if mode == "relay":
        # the real criu runs as the process the caller started (the front's own pid); a helper relays
        assert f"request VERSION from runtime pid {me}:" in log
        assert f"criu swrk {s.proc.args[2]} runs as pid {s.proc.pid}" in log
        assert re.search(r"VERSION success=True version=[4-9]\.\d+", log) and f"criu pid {s.proc.pid} exited" in log
    else:
        # answered with the real criu's own answer, cached per binary (no criu start on runc's VERSION call)
        assert f"VERSION from runtime pid {me}: answered with {REAL_CRIU}'s cached answer" in log


def test_dump_with_fd_numbers_of_the_caller(front_route: FrontRoute, tmp_path: Path, mode: str) -> None:
    """CRIU resolves images_dir_fd in its peer: a relaying front must reopen this process's fd and renumber it;
    a handing-off front leaves this process as criu's peer."""
    victim = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    images = tmp_path / "images"
    images.mkdir()
    # a high fd number the front is unlikely to hold itself: the naive relay would hand CRIU /proc/<front>/fd/N
    low = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    img_fd = os.dup2(low, 333)
    os.close(low)
    try:
        req = rpc_pb2.criu_req(type=rpc_pb2.DUMP)
        req.opts.images_dir_fd, req.opts.work_dir_fd = img_fd, img_fd
        req.opts.pid, req.opts.leave_running, req.opts.log_file, req.opts.log_level = victim.pid, True, "dump.log", 4
        req.opts.notify_scripts = True
        mark = front_route.log_mark()
        s = Session(front_route, mode_env(mode))
        s.send(req)
        notes = []
        while True:
            resp = s.recv()
            if resp.type != rpc_pb2.NOTIFY:
                break
            notes.append(resp.notify.script)
            s.send(rpc_pb2.criu_req(type=rpc_pb2.NOTIFY, notify_success=True))
        assert resp.type == rpc_pb2.DUMP and resp.success, (resp, (images / "dump.log").read_text()[-2000:])
        assert s.finish() == 0
        assert "pre-dump" in notes and "post-dump" in notes
        assert (images / "pstree.img").exists() and (images / "dump.log").exists()
        assert victim.poll() is None  # leave_running
        if mode == "relay":
            assert "fds={'images_dir_fd': 333, 'work_dir_fd': 333}" in front_route.log_since(mark)
    finally:
        os.close(img_fd)
        victim.kill()
        victim.wait()


def test_garbage_gets_a_clear_error_and_no_hang(front_route: FrontRoute, mode: str) -> None:
    mark = front_route.log_mark()
    s = Session(front_route, mode_env(mode))
    s.send(b"GET / HTTP/1.1\r\n\r\n")
    resp = s.recv()
    assert not resp.success and resp.cr_errmsg.startswith("gpucr criu front: cannot decode the runtime's request")
    assert s.proc.wait(10) == 1
    assert "garbage from runtime pid" in front_route.log_since(mark)


def test_unknown_request_type_is_relayed_to_criu(front_route: FrontRoute, mode: str) -> None:
    mark = front_route.log_mark()
    s = Session(front_route, mode_env(mode))
    s.send(bytes.fromhex("0863"))  # criu_req{type=99}
    raw = s.ours.recv(1 << 20)
    t0 = time.monotonic()
    rc = s.proc.wait(30)
    assert time.monotonic() - t0 < 30
    log = front_route.log_when(mark, f"criu pid {s.proc.pid} exited" if mode == "relay" else "handing swrk")
    # whatever CRIU answered reached us unchanged, and the front exited with criu's own status
    assert raw, "criu's answer to an unknown request type was not relayed"
    assert rpc_pb2.criu_resp.FromString(raw).success is False
    if mode == "relay":
        assert "request UNKNOWN(99)" in log and f"criu pid {s.proc.pid} exited" in log and rc != 0
    else:
        assert "UNKNOWN(99) from runtime pid" in log and "handing swrk" in log


def test_real_criu_missing(front_route: FrontRoute, mode: str) -> None:
    s = Session(front_route, env={"GPUCR_REAL_CRIU": "/nonexistent/criu", **mode_env(mode)})
    s.send(rpc_pb2.criu_req(type=rpc_pb2.VERSION))
    resp = s.recv()
    assert not resp.success
    assert resp.cr_errmsg == ("gpucr criu front: cannot run the real criu /nonexistent/criu: No such file or "
                              "directory; install CRIU >= 4.1 or set real_criu in /etc/gpucr/front.conf (or "
                              "GPUCR_REAL_CRIU)")
    assert s.proc.wait(10) == 1
    r = subprocess.run([str(front_route.criu), "--version"], capture_output=True, text=True,
                       env={**os.environ, "GPUCR_REAL_CRIU": "/nonexistent/criu"})
    assert r.returncode == 1 and "cannot run the real criu /nonexistent/criu" in r.stderr


def test_pass_through_is_the_real_criu(front_route: FrontRoute) -> None:
    for args in (["--version"], ["check"]):
        real = subprocess.run([str(REAL_CRIU), *args], capture_output=True, text=True)
        front = subprocess.run([str(front_route.criu), *args], capture_output=True, text=True)
        assert (front.returncode, front.stdout) == (real.returncode, real.stdout), args
    assert subprocess.run([str(front_route.criu), "check"], capture_output=True, text=True).stdout.strip() == "Looks good."


def test_recursion_onto_itself_is_refused(front_route: FrontRoute, tmp_path: Path) -> None:
    r = subprocess.run([str(front_route.criu), "--version"], capture_output=True, text=True, timeout=20,
                       env={**os.environ, "GPUCR_REAL_CRIU": str(front_route.criu)})
    assert r.returncode == 1
    assert f"real_criu {front_route.criu} is the CRIU front itself" in r.stderr
    # a wrapper script that leads back to the front: caught on the second round, no loop
    loop = tmp_path / "criu-wrapper"
    loop.write_text(f"#!/bin/sh\nexec {front_route.criu} \"$@\"\n")
    loop.chmod(0o755)
    r = subprocess.run([str(front_route.criu), "--version"], capture_output=True, text=True, timeout=20,
                       env={**os.environ, "GPUCR_REAL_CRIU": str(loop)})
    assert r.returncode == 1
    assert "leads back to the front" in r.stderr


def test_real_criu_too_old(front_route: FrontRoute, tmp_path: Path, mode: str) -> None:
    """An old criu (3.17 is bookworm's, which fails on kernels >= 6.13) is refused with one clear error before any
    request reaches it. The stand-in answers only a VERSION request, as CRIU 3.17 does: the front must not get
    further (any other request makes it exit 99 without an answer)."""
    old = tmp_path / "criu-3.17"
    old.write_text("#!/usr/bin/python3\nimport socket, sys\n"
                   "s = socket.socket(fileno=int(sys.argv[2]))\n"
                   "if s.recv(4096) != b'\\x08\\x0a': sys.exit(99)\n"
                   f"s.send(bytes.fromhex('{OLD_VERSION_ANSWER}'))\n"
                   "while s.recv(4096): pass\n")
    old.chmod(0o755)
    for req in (rpc_pb2.criu_req(type=rpc_pb2.VERSION), rpc_pb2.criu_req(type=rpc_pb2.RESTORE)):
        s = Session(front_route, env={"GPUCR_REAL_CRIU": str(old), "GPUCR_FRONT_LOG_DIR": str(tmp_path / "log"),
                                      **mode_env(mode)})
        s.send(req)
        resp = s.recv()
        assert resp.type == req.type and not resp.success
        assert resp.cr_errmsg == (f"gpucr criu front: the real criu ({old}) is version 3.17; gpucr needs CRIU >= 4.1 "
                                  "(install a newer criu and point real_criu in /etc/gpucr/front.conf at it)")
        assert s.proc.wait(10) == 1
    # cached in the route's root-only cache dir, not in the log dir
    assert (front_route.cache_dir / "criu-version.cache").read_text() == (
        f"{old} {old.stat().st_mtime_ns} {old.stat().st_size} {OLD_VERSION_ANSWER}\n")
    assert front_route.cache_dir.stat().st_mode & 0o777 == 0o700 and not (tmp_path / "log/criu-version.cache").exists()


@pytest.mark.parametrize("relay", ["auto", "always"])
def test_startup_imports_stay_small(front_route: FrontRoute, tmp_path: Path, relay: str) -> None:
    """The front starts twice per runc operation: neither path may pull in protobuf or the heavy stdlib modules
    (rpc_pb2 alone cost 56 ms; typing, dataclasses, enum, logging and socket add more)."""
    front = front_route.criu  # the launcher in the route's root-only code copy (the front refuses a checkout under /tmp)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with (tmp_path / "stderr").open("w") as err:
        p = subprocess.Popen(["/usr/bin/python3", "-S", "-E", "-X", "importtime", str(front), "swrk",
                              str(theirs.fileno())], pass_fds=(theirs.fileno(),), stderr=err,
                             env={**os.environ, "GPUCR_REAL_CRIU": str(REAL_CRIU), "GPUCR_FRONT_RELAY": relay,
                                  "GPUCR_FRONT_LOG_DIR": str(tmp_path / "log"),
                                  "GPUCR_FRONT_CACHE_DIR": str(front_route.cache_dir)})
        theirs.close()
        with ours:
            ours.send(rpc_pb2.criu_req(type=rpc_pb2.VERSION).SerializeToString())
            assert rpc_pb2.criu_resp.FromString(ours.recv(1 << 16)).success
            ours.shutdown(socket.SHUT_WR)
            assert p.wait(30) == 0
    loaded = {ln.rsplit("|", 1)[1].strip() for ln in (tmp_path / "stderr").read_text().splitlines()
              if ln.startswith("import time:") and "|" in ln}
    assert "nri_plugin.front.runtime" in loaded and ("nri_plugin.front.swrk" in loaded) == (relay == "always")
    heavy = {"google.protobuf", "typing", "dataclasses", "enum", "logging", "socket", "inspect", "re", "json",
             "ctypes", "importlib.util"}
    assert not heavy & loaded, sorted(heavy & loaded)


def test_half_close_right_after_the_request(front_route: FrontRoute, mode: str) -> None:
    """A caller that shuts its writing side right after the request still gets CRIU's answer, then EOF."""
    s = Session(front_route, mode_env(mode))
    s.send(rpc_pb2.criu_req(type=rpc_pb2.VERSION))
    s.ours.shutdown(socket.SHUT_WR)
    resp = s.recv()
    assert resp.type == rpc_pb2.VERSION and resp.success
    assert s.ours.recv(1 << 16) == b""
    assert s.proc.wait(30) == 0


def test_request_after_a_cached_version_answer_goes_to_the_real_criu(front_route: FrontRoute) -> None:
    mark = front_route.log_mark()
    s = Session(front_route, mode_env("handoff"))
    for _ in range(2):
        s.send(rpc_pb2.criu_req(type=rpc_pb2.VERSION))
        resp = s.recv()
        assert resp.type == rpc_pb2.VERSION and resp.success and resp.version.major_number >= 4
    assert s.finish() == 0
    log = front_route.log_since(mark)
    assert "answered with" in log and "VERSION after VERSION from runtime pid" in log and "handing swrk" in log


def test_real_criu_gets_default_signal_dispositions(front_route: FrontRoute, tmp_path: Path, mode: str) -> None:
    """Python ignores SIGPIPE and SIGXFSZ and an ignored signal survives exec; the real criu must not inherit that
    (runc would start it with defaults). The stand-in records its SigIgn mask and answers VERSION."""
    probe = tmp_path / "criu-probe"
    out = tmp_path / "sigign"
    probe.write_text("#!/bin/sh\n"
                     f"grep SigIgn /proc/self/status >> {out}\n"
                     f"exec {REAL_CRIU} \"$@\"\n")
    probe.chmod(0o755)
    env = {"GPUCR_REAL_CRIU": str(probe), "GPUCR_FRONT_LOG_DIR": str(tmp_path / "log"), **mode_env(mode)}
    s = Session(front_route, env)
    s.send(rpc_pb2.criu_req(type=rpc_pb2.CHECK))  # not VERSION: goes to criu in both modes
    assert s.recv().type == rpc_pb2.CHECK
    s.finish()
    r = subprocess.run([str(front_route.criu), "--version"], capture_output=True, text=True,
                       env={**os.environ, "GPUCR_REAL_CRIU": str(probe)})
    assert r.returncode == 0
    masks = [int(line.split()[1], 16) for line in out.read_text().splitlines()]
    assert len(masks) >= 3  # version cache probe (first call), the CHECK session, the pass-through
    for mask in masks:
        assert not mask & (1 << (13 - 1)) and not mask & (1 << (25 - 1)), hex(mask)

"""The relay's decisions (sans-I/O): routing, the hook points and what the runtime gets when gpucr says no."""

from __future__ import annotations

from typing import Any

import pytest

from nri_plugin.ckpt.criu._pb import rpc_pb2
from nri_plugin.front import messages as m
from nri_plugin.front.errors import HookError
from nri_plugin.front.hooks import FrontHooks, NoHooks
from nri_plugin.front.relay import ANSWER_VERSION, HAND_OVER, REFUSE, RELAY, TO_CRIU, TO_RUNTIME, Relay, first_move
from nri_plugin.front.relay import version_problem


class Recorder:
    """A FrontHooks that records every call and can fail at a chosen point."""

    def __init__(self, fail_at: str | None = None, exc: Exception | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_at, self.exc = fail_at, exc or HookError("cuda lock of pid 4242 timed out; container left running")

    def _maybe_fail(self, point: str) -> None:
        if self.fail_at == point:
            raise self.exc

    def wants(self, request: m.Request) -> bool:
        self.calls.append(("wants", request.type_name))
        self._maybe_fail("wants")
        return True

    def before_dump(self, request: m.Request) -> None:
        self.calls.append(("before_dump", request.pid, request.freeze_cgroup, request.leave_running))
        self._maybe_fail("before_dump")

    def on_notify(self, request: m.Request, name: str, pid: int | None) -> None:
        self.calls.append(("notify", name, pid))
        self._maybe_fail(name)

    def after_response(self, request: m.Request, success: bool) -> None:
        self.calls.append(("after", request.type_name, success))
        self._maybe_fail("after")


def dump_req() -> bytes:
    r = rpc_pb2.criu_req(type=rpc_pb2.DUMP)
    r.opts.images_dir_fd, r.opts.work_dir_fd, r.opts.pid, r.opts.leave_running = 8, 9, 4242, True
    r.opts.freeze_cgroup = "/sys/fs/cgroup/freezer/p/c1"
    return r.SerializeToString()


def notify(name: str, pid: int | None = None) -> bytes:
    r = rpc_pb2.criu_resp(type=rpc_pb2.NOTIFY, success=True)
    r.notify.script = name
    if pid is not None:
        r.notify.pid = pid
    return r.SerializeToString()


def final(t: int = rpc_pb2.DUMP, success: bool = True) -> bytes:
    return rpc_pb2.criu_resp(type=t, success=success, cr_errmsg="Error (criu/util.c:1533): rlimit").SerializeToString()


def test_no_hooks_implements_the_whole_protocol() -> None:
    points = {k for k in vars(FrontHooks) if not k.startswith("_")}
    assert points == {"wants", "before_dump", "on_notify", "after_response"}
    assert points <= {k for k in vars(NoHooks) if not k.startswith("_")}
    assert points <= {k for k in vars(Recorder) if not k.startswith("_")}
    n = NoHooks()
    req = m.decode_request(dump_req())
    assert n.wants(req) is False
    assert n.before_dump(req) is None and n.on_notify(req, "x", 1) is None and n.after_response(req, True) is None


def test_dump_sequence_passes_through_with_hooks_called() -> None:
    rec = Recorder()
    relay = Relay(rec)
    req = relay.accept_request(dump_req())
    assert rpc_pb2.criu_req.FromString(relay.forward_request({"images_dir_fd": 20, "work_dir_fd": 21})).opts.images_dir_fd == 20
    assert relay.before_forward() is None
    for name in ["pre-dump", "network-lock", "query-ext-files", "post-dump", "network-unlock"]:
        data = notify(name)
        route = relay.from_criu(data)
        assert (route.to, route.data) == (TO_RUNTIME, data)
    data = final()
    route = relay.from_criu(data)
    assert (route.to, route.data) == (TO_RUNTIME, data)  # untouched: CRIU's rlimit line in cr_errmsg is normal
    assert rec.calls == [("before_dump", 4242, "/sys/fs/cgroup/freezer/p/c1", True),
                         ("notify", "pre-dump", None), ("notify", "network-lock", None),
                         ("notify", "query-ext-files", None), ("notify", "post-dump", None),
                         ("notify", "network-unlock", None), ("after", "DUMP", True)]
    assert req.type == m.DUMP and relay.final is not None and relay.final.success


def test_restore_and_version_do_not_call_before_dump() -> None:
    for t in (rpc_pb2.RESTORE, rpc_pb2.VERSION):
        rec = Recorder(fail_at="before_dump")
        relay = Relay(rec)
        relay.accept_request(rpc_pb2.criu_req(type=t).SerializeToString())
        assert relay.before_forward() is None
        assert rec.calls == []


def test_failing_before_dump_answers_the_runtime() -> None:
    relay = Relay(Recorder(fail_at="before_dump"))
    relay.accept_request(dump_req())
    answer = relay.before_forward()
    assert answer is not None
    resp = rpc_pb2.criu_resp.FromString(answer)
    assert resp.type == rpc_pb2.DUMP and not resp.success and resp.cr_errno == 125
    assert resp.cr_errmsg == ("gpucr criu front: before DUMP of pid 4242: cuda lock of pid 4242 timed out; "
                              "container left running")


def test_unexpected_hook_exception_is_explained_too() -> None:
    relay = Relay(Recorder(fail_at="before_dump", exc=RuntimeError("boom")))
    relay.accept_request(dump_req())
    resp = rpc_pb2.criu_resp.FromString(relay.before_forward() or b"")
    assert resp.cr_errmsg.endswith("RuntimeError: boom")


def test_failing_notify_tells_criu_and_explains_the_final_answer() -> None:
    relay = Relay(Recorder(fail_at="pre-dump"))
    relay.accept_request(dump_req())
    route = relay.from_criu(notify("pre-dump"))
    assert route.to == TO_CRIU
    ans = rpc_pb2.criu_req.FromString(route.data)
    assert ans.type == rpc_pb2.NOTIFY and not ans.notify_success
    criu_err = rpc_pb2.criu_resp(type=rpc_pb2.DUMP, success=False, cr_errno=0,
                                 cr_errmsg="Error (criu/action-scripts.c:120): RPC notify failed").SerializeToString()
    out = rpc_pb2.criu_resp.FromString(relay.from_criu(criu_err).data)
    assert not out.success
    assert out.cr_errmsg.startswith("gpucr criu front: at pre-dump of DUMP: cuda lock")
    assert out.cr_errmsg.endswith("; criu: Error (criu/action-scripts.c:120): RPC notify failed")


def test_failing_after_hook_turns_success_into_failure() -> None:
    relay = Relay(Recorder(fail_at="after"))
    relay.accept_request(dump_req())
    out = rpc_pb2.criu_resp.FromString(relay.from_criu(final()).data)
    assert not out.success and "after DUMP" in out.cr_errmsg


@pytest.mark.parametrize(("major", "minor", "ok"), [(4, 1, True), (4, 2, True), (5, 0, True), (3, 17, False), (4, 0, False)])
def test_version_gate(major: int, minor: int, ok: bool) -> None:
    relay = Relay(None, real_criu="/usr/sbin/criu")
    relay.accept_request(bytes.fromhex("080a"))
    v = rpc_pb2.criu_resp(type=rpc_pb2.VERSION, success=True)
    v.version.major_number, v.version.minor_number = major, minor
    out = rpc_pb2.criu_resp.FromString(relay.from_criu(v.SerializeToString()).data)
    assert out.success is ok
    if not ok:
        assert out.cr_errmsg == (f"gpucr criu front: the real criu (/usr/sbin/criu) is version {major}.{minor}; gpucr "
                                 "needs CRIU >= 4.1 (install a newer criu and point real_criu in /etc/gpucr/front.conf at it)")


def test_unknown_type_and_undecodable_criu_messages_are_relayed_as_is() -> None:
    relay = Relay()
    relay.accept_request(bytes.fromhex("0863"))
    assert relay.before_forward() is None
    assert relay.forward_request({}) == bytes.fromhex("0863")
    route = relay.from_criu(b"\xff\xfe garbage")
    assert (route.to, route.data) == (TO_RUNTIME, b"\xff\xfe garbage")
    assert route.note and "undecodable" in route.note


def test_garbage_and_missing_answers() -> None:
    relay = Relay(real_criu="/x/criu")
    with pytest.raises(m.MessageError):
        relay.accept_request(b"GET / HTTP/1.1\r\n")
    g = rpc_pb2.criu_resp.FromString(Relay.garbage_answer(ValueError("bad")))
    assert not g.success and "cannot decode the runtime's request" in g.cr_errmsg
    relay.accept_request(dump_req())
    miss = rpc_pb2.criu_resp.FromString(relay.missing_answer("was killed by signal 9"))
    assert miss.cr_errmsg == "gpucr criu front: criu (/x/criu) was killed by signal 9 before answering the DUMP request"


class Wants(NoHooks):
    def wants(self, request: m.Request) -> bool:
        return True


class WantsFails(NoHooks):
    def wants(self, request: m.Request) -> bool:
        raise RuntimeError("state dir unreadable")


VERSION_REQ = m.decode_request(rpc_pb2.criu_req(type=rpc_pb2.VERSION).SerializeToString())
DUMP_REQ = m.decode_request(dump_req())
RESTORE_REQ = m.decode_request(rpc_pb2.criu_req(type=rpc_pb2.RESTORE, opts=rpc_pb2.criu_opts(
    images_dir_fd=9, rst_sibling=True)).SerializeToString())
VERSION_WITH_OPTS = m.decode_request(rpc_pb2.criu_req(type=rpc_pb2.VERSION, opts=rpc_pb2.criu_opts(
    images_dir_fd=-1)).SerializeToString())


@pytest.mark.parametrize(("req", "version", "hooks", "always", "move"), [
    (VERSION_REQ, (4, 1), None, False, ANSWER_VERSION),
    (VERSION_REQ, (4, 1), Wants(), False, ANSWER_VERSION),    # go-criu's check never reaches the hooks
    (VERSION_REQ, None, None, False, HAND_OVER),               # no cached answer: the real criu answers
    (VERSION_REQ, (4, 1), None, True, RELAY),
    (VERSION_WITH_OPTS, (4, 1), None, False, HAND_OVER),       # not the plain check: not ours to answer
    (DUMP_REQ, (4, 1), None, False, HAND_OVER),                # no hooks configured
    (DUMP_REQ, (4, 1), NoHooks(), False, HAND_OVER),
    (DUMP_REQ, (4, 1), Wants(), False, RELAY),
    (DUMP_REQ, (4, 1), WantsFails(), False, RELAY),            # the safe side: the hooks meet it again
    (DUMP_REQ, (4, 1), NoHooks(), True, RELAY),
    (DUMP_REQ, None, Wants(), False, RELAY),                   # version unknown: criu itself will tell
    (DUMP_REQ, (3, 17), Wants(), False, REFUSE),
    (VERSION_REQ, (4, 0), None, False, REFUSE),
    (RESTORE_REQ, (4, 2), Wants(), False, RELAY),
    (RESTORE_REQ, (4, 2), NoHooks(), False, HAND_OVER),
    (None, (4, 1), Wants(), False, RELAY),                     # garbage: the relay answers it
    (None, (3, 17), None, False, RELAY),
])
def test_first_move(req: m.Request | None, version: tuple[int, int] | None, hooks: FrontHooks | None,
                    always: bool, move: str) -> None:
    got, problem = first_move(req, version, hooks, always, "/usr/sbin/criu")
    assert got == move
    assert (problem is not None) == (move == REFUSE)
    if problem:
        assert problem == version_problem(version, "/usr/sbin/criu")


def test_version_problem() -> None:
    assert version_problem(None, "/c") is None and version_problem((4, 1), "/c") is None
    assert version_problem((3, 19), "/c") is not None

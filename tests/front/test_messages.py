"""CRIU RPC summaries and byte-exact patches, checked against protobuf's own reading of the same bytes
(``nri_plugin/ckpt/criu/proto/rpc.proto``, CRIU 4.1.1's field numbers)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nri_plugin.ckpt.criu._pb import rpc_pb2
from nri_plugin.front import _wire
from nri_plugin.front import messages as m


def dump_request() -> rpc_pb2.criu_req:
    """A DUMP shaped like runc 1.1.5's under containerd (criu-front.md section 3)."""
    req = rpc_pb2.criu_req(type=rpc_pb2.DUMP)
    o = req.opts
    o.images_dir_fd, o.work_dir_fd, o.pid, o.leave_running, o.notify_scripts = 8, 9, 4242, True, True
    o.freeze_cgroup = "/sys/fs/cgroup/freezer/parent/c1"
    o.config_file, o.root, o.log_file, o.log_level = "/etc/criu/runc.conf", "/run/bundle/rootfs", "dump.log", 4
    o.manage_cgroups, o.orphan_pts_master, o.empty_ns = True, True, 0x40000000
    o.ext_mnt.add(key="/data", val="/data")
    o.ext_mnt.add(key="/proc/keys", val="/dev/null")
    return req


def test_types_match_the_proto() -> None:
    for value, name in m.REQ_TYPE_NAMES.items():
        assert rpc_pb2.criu_req_type.Name(value) == name


def test_decode_dump_request() -> None:
    r = m.decode_request(dump_request().SerializeToString())
    assert (r.type, r.type_name, r.pid, r.leave_running) == (m.DUMP, "DUMP", 4242, True)
    assert r.freeze_cgroup == "/sys/fs/cgroup/freezer/parent/c1"
    assert r.fds == {"images_dir_fd": 8, "work_dir_fd": 9}
    assert r.log_file == "dump.log" and r.has_opts


def test_decode_version_request_golden() -> None:
    r = m.decode_request(bytes.fromhex("080a"))
    assert (r.type_name, r.has_opts, r.fds, r.pid) == ("VERSION", False, {}, None)


def test_rewrite_fds_keeps_everything_else() -> None:
    req = dump_request()
    out = m.rewrite_request(req.SerializeToString(), {"images_dir_fd": 17, "work_dir_fd": 18})
    back = rpc_pb2.criu_req.FromString(out)
    assert (back.opts.images_dir_fd, back.opts.work_dir_fd) == (17, 18)
    req.opts.images_dir_fd, req.opts.work_dir_fd = 17, 18
    assert back == req
    assert out == req.SerializeToString()  # same order, same bytes


def test_rewrite_status_fd_and_missing_pid() -> None:
    req = rpc_pb2.criu_req(type=rpc_pb2.DUMP)
    req.opts.images_dir_fd, req.opts.status_fd = 5, 6
    r = m.decode_request(req.SerializeToString())
    assert r.fds == {"images_dir_fd": 5, "status_fd": 6} and r.pid is None
    back = rpc_pb2.criu_req.FromString(m.rewrite_request(r.raw, {"images_dir_fd": 20, "status_fd": 21}, pid=99))
    assert (back.opts.images_dir_fd, back.opts.status_fd, back.opts.pid) == (20, 21, 99)


def test_images_dir_path_form_is_not_an_fd() -> None:
    req = rpc_pb2.criu_req(type=rpc_pb2.DUMP)
    req.opts.images_dir_fd, req.opts.images_dir = -1, "/ckpt"
    assert m.decode_request(req.SerializeToString()).fds == {}


def test_unknown_fields_survive_rewrite() -> None:
    # field 200 in opts and field 99 in the request: from a newer runc/CRIU than this module knows
    opts = dump_request().opts.SerializeToString() + bytes.fromhex("c00c01") + bytes.fromhex("ca0c0378797a")
    data = bytes.fromhex("0801") + _wire.field_bytes(_wire.Field(2, _wire.LEN, opts)) + bytes.fromhex("98060a")
    out = m.rewrite_request(data, {"images_dir_fd": 30})
    assert out.count(bytes.fromhex("ca0c0378797a")) == 1 and out.endswith(bytes.fromhex("98060a"))
    back = rpc_pb2.criu_req.FromString(out)
    assert back.opts.images_dir_fd == 30 and back.opts.freeze_cgroup == "/sys/fs/cgroup/freezer/parent/c1"
    assert len(out) == len(data)  # same width varint: only the fd byte changed
    assert sum(a != b for a, b in zip(out, data)) == 1


def test_unknown_request_type_decodes() -> None:
    r = m.decode_request(bytes.fromhex("0863"))  # type 99
    assert r.type_name == "UNKNOWN(99)"
    assert m.rewrite_request(r.raw, {}) == r.raw


@pytest.mark.parametrize("data", [b"hello world", b"\x12\x00", b"", b"\xff\xff\xff",
                                  bytes.fromhex("080a1001808080801007")])  # field 2^29: bench/fuzz.py found it
def test_garbage_request(data: bytes) -> None:
    with pytest.raises(m.MessageError, match="request from the runtime"):
        m.decode_request(data)


def test_decode_responses() -> None:
    n = rpc_pb2.criu_resp(type=rpc_pb2.NOTIFY, success=True)
    n.notify.script, n.notify.pid = "post-restore", 321
    r = m.decode_response(n.SerializeToString())
    assert r.is_notify and (r.notify_script, r.notify_pid) == ("post-restore", 321)
    d = rpc_pb2.criu_resp(type=rpc_pb2.RESTORE, success=True, cr_errmsg="Error (criu/util.c:1533): rlimit")
    d.restore.pid = 77
    r = m.decode_response(d.SerializeToString())
    assert (r.type_name, r.success, r.restore_pid, r.cr_errmsg) == ("RESTORE", True, 77, "Error (criu/util.c:1533): rlimit")
    v = rpc_pb2.criu_resp(type=rpc_pb2.VERSION, success=True)
    v.version.major_number, v.version.minor_number, v.version.sublevel = 4, 1, 1
    assert m.decode_response(v.SerializeToString()).version == (4, 1)


def test_explain_failure_puts_gpucr_in_front() -> None:
    d = rpc_pb2.criu_resp(type=rpc_pb2.DUMP, success=True, cr_errmsg="Error: rlimit")
    d.dump.restored = False
    out = rpc_pb2.criu_resp.FromString(m.explain_failure(d.SerializeToString(), "gpucr: cuda lock failed", 125))
    assert not out.success and out.cr_errno == 125 and out.HasField("dump")
    assert out.cr_errmsg == "gpucr: cuda lock failed; criu: Error: rlimit"
    f = rpc_pb2.criu_resp.FromString(m.encode_failure(m.DUMP, "gpucr: no", 125))
    assert (f.type, f.success, f.cr_errno, f.cr_errmsg) == (rpc_pb2.DUMP, False, 125, "gpucr: no")


def test_notify_answer() -> None:
    a = rpc_pb2.criu_req.FromString(m.encode_notify_answer(False))
    assert a.type == rpc_pb2.NOTIFY and a.HasField("notify_success") and not a.notify_success


def test_repeated_opts_merge_like_protobuf_and_all_must_decode() -> None:
    # found by bench/fuzz.py: a request with two opts fields, the first garbage, was accepted (only the last was
    # read) and then failed in rewrite_request, which rewrites both
    garbage = bytes.fromhex("0801" "1203" "08ffff" "1204" "08031005")  # DUMP, opts{truncated}, opts{fd 3, pid 5}
    with pytest.raises(m.MessageError, match="criu_opts"):
        m.decode_request(garbage)
    a = rpc_pb2.criu_opts(images_dir_fd=3, pid=5, status_fd=9)
    b = rpc_pb2.criu_opts(images_dir_fd=4, leave_running=True)
    data = (rpc_pb2.criu_req(type=rpc_pb2.DUMP).SerializeToString() + b"\x12" + bytes([a.ByteSize()])
            + a.SerializeToString() + b"\x12" + bytes([b.ByteSize()]) + b.SerializeToString())
    merged = rpc_pb2.criu_req()
    merged.ParseFromString(data)  # protobuf's reading: the two messages merged, the last value winning
    req = m.decode_request(data)
    assert (req.pid, req.leave_running, req.fds) == (merged.opts.pid, merged.opts.leave_running,
                                                     {"images_dir_fd": 4, "status_fd": 9})
    assert merged.opts.images_dir_fd == 4 and merged.opts.status_fd == 9
    again = m.decode_request(m.rewrite_request(data, {"images_dir_fd": 40, "status_fd": 90}))
    assert again.fds == {"images_dir_fd": 40, "status_fd": 90} and again.pid == 5


_KEYS = st.sampled_from([0x08, 0x10, 0x12, 0x18, 0x1a, 0x2a, 0x0a]) | st.integers(0, 255)


@settings(max_examples=300, deadline=None)
@given(st.lists(_KEYS | st.binary(min_size=1, max_size=6) | st.just(_wire.encode_varint(1 << 29 << 3)),
                max_size=12).map(lambda parts: b"".join(bytes([p]) if isinstance(p, int) else p for p in parts)))
def test_what_decodes_can_be_rewritten(data: bytes) -> None:
    # the relay rewrites every request it accepted and explains every answer it decoded: neither may then fail
    # (bench/fuzz.py runs this property over many more inputs)
    try:
        req = m.decode_request(data)
    except m.MessageError:
        pass
    else:
        fds = {k: 100 + i for i, k in enumerate(req.fds)}
        again = m.decode_request(m.rewrite_request(data, fds, 4321 if req.has_opts and req.pid is None else None))
        assert again.fds == fds and again.type == req.type
    try:
        resp = m.decode_response(data)
    except m.MessageError:
        return
    failed = m.decode_response(m.explain_failure(data, "gpucr: why", 125))
    assert not failed.success and failed.type == resp.type and failed.cr_errmsg.startswith("gpucr: why")

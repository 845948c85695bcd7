"""Pure codec tests of nri_plugin.ckpt.criu.rpc: golden bytes (including bytes captured from CRIU 4.1.1),
request building from options, option validation, reply checks, garbage input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import nri_plugin.ckpt.criu as criu_pkg
from nri_plugin.ckpt.criu import CgroupMode, CriuError, DumpOptions, JoinNamespace, NetworkLock, RestoreOptions, rpc
from nri_plugin.ckpt.criu._pb import rpc_pb2 as pb

# captured from `criu swrk` (CRIU 4.1.1, Debian trixie build) on 2026-11-28
CRIU_VERSION_4_1_1 = bytes.fromhex("080a10015206080410012001")
CRIU_NOTIFY_PRE_DUMP = bytes.fromhex("080610012a0a0a087072652d64756d70")
CRIU_DUMP_OK = bytes.fromhex(
    "080110011a0208004a5e4572726f722028637269752f7574696c2e633a31353333293a20726c696d69743a2043616e277420736574"
    "757020524c494d49545f4e4f46494c4520666f722073656c663a204f7065726174696f6e206e6f74207065726d69747465640a")
CRIU_DUMP_ESRCH = bytes.fromhex(
    "080110001a02080038034a5e4572726f722028637269752f7574696c2e633a31353333293a20726c696d69743a2043616e277420"
    "736574757020524c494d49545f4e4f46494c4520666f722073656c663a204f7065726174696f6e206e6f74207065726d69747465640a")

IMG = Path("/ckpt/img")


def _opts(data: bytes) -> pb.criu_opts:
    req = pb.criu_req()
    req.ParseFromString(data)
    return req.opts


def test_package_exports() -> None:
    for name in criu_pkg.__all__:
        assert hasattr(criu_pkg, name), name
    assert {"Criu", "DumpOptions", "RestoreOptions", "CriuError"} <= set(criu_pkg.__all__)


@pytest.mark.parametrize("data, golden", [
    (rpc.version_request(), b"\x08\x0a"),
    (rpc.notify_answer(True), b"\x08\x06\x18\x01"),
    (rpc.notify_answer(False), b"\x08\x06\x18\x00"),
])
def test_golden_requests(data: bytes, golden: bytes) -> None:
    assert data == golden


def test_parse_captured_replies() -> None:
    v = rpc.parse_reply(CRIU_VERSION_4_1_1)
    assert (v.type, v.success, v.version, v.version_text) == ("VERSION", True, (4, 1, 1), "4.1.1")
    assert rpc.check_version(v, "criu") == (4, 1, 1)
    n = rpc.parse_reply(CRIU_NOTIFY_PRE_DUMP)
    assert (n.type, n.notify, n.notify_pid) == ("NOTIFY", "pre-dump", None)
    ok = rpc.parse_reply(CRIU_DUMP_OK)
    assert ok.success and ok.dump_restored is False and ok.errmsg and "rlimit" in ok.errmsg  # errmsg even on success
    assert rpc.check_final(ok, "DUMP", "dump of pid 1") is ok
    bad = rpc.parse_reply(CRIU_DUMP_ESRCH)
    with pytest.raises(CriuError, match=r"criu failed the dump of pid 7 \(errno 3\): Error \(criu/util.c") as ei:
        rpc.check_final(bad, "DUMP", "dump of pid 7")
    assert ei.value.errno == 3 and ei.value.criu_errmsg == bad.errmsg


def test_check_final_wrong_type() -> None:
    with pytest.raises(CriuError, match="answered the restore .* with a DUMP response instead of RESTORE"):
        rpc.check_final(rpc.parse_reply(CRIU_DUMP_OK), "RESTORE", "restore of x")


@pytest.mark.parametrize("major, minor, ok", [(4, 1, True), (4, 2, True), (5, 0, True), (4, 0, False), (3, 19, False)])
def test_version_floor(major: int, minor: int, ok: bool) -> None:
    data = pb.criu_resp(type=pb.VERSION, success=True,
                        version=pb.criu_version(major_number=major, minor_number=minor)).SerializeToString()
    reply = rpc.parse_reply(data)
    if ok:
        assert rpc.check_version(reply, "/x/criu") == (major, minor, 0)
    else:
        with pytest.raises(CriuError, match=rf"criu at /x/criu is version {major}\.{minor}, gpucr needs CRIU >= 4\.1"):
            rpc.check_version(reply, "/x/criu")


def test_version_missing() -> None:
    data = pb.criu_resp(type=pb.VERSION, success=True).SerializeToString()
    with pytest.raises(CriuError, match="without a version"):
        rpc.check_version(rpc.parse_reply(data), "criu")


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x08", b"\x12\x05abc", b"", b"\x08\x01"])
def test_garbage_replies(data: bytes) -> None:
    with pytest.raises(CriuError, match="not a criu_resp"):
        rpc.parse_reply(data)


def test_dump_request_defaults() -> None:
    req = pb.criu_req()
    req.ParseFromString(rpc.dump_request(DumpOptions(pid=42, images_dir=IMG), images_dir_fd=7))
    assert req.type == pb.DUMP
    o = req.opts
    assert (o.pid, o.images_dir_fd, o.log_file, o.log_level, o.notify_scripts) == (42, 7, "dump.log", 4, True)
    assert not o.HasField("work_dir_fd") and not o.leave_running and not o.manage_cgroups
    assert not o.HasField("ghost_limit") and not o.HasField("freeze_cgroup") and not o.HasField("config_file")


def test_dump_request_all_options() -> None:
    o = _opts(rpc.dump_request(DumpOptions(
        pid=42, images_dir=IMG, leave_running=True, log_level=2,
        external_mounts={"/data": "data", "/etc/hosts": "hosts"}, external=["unix[1234]"],
        cgroups_mode=CgroupMode.SOFT, tcp_established=True, ext_unix_sk=True, file_locks=True, link_remap=True,
        ghost_limit=64 << 20, force_irmap=True, irmap_scan_paths=["/usr"], shell_job=True,
        freeze_cgroup="/sys/fs/cgroup/freezer/x", orphan_pts_master=True, root="/rootfs", empty_ns=0x40000000,
        network_lock=NetworkLock.SKIP, timeout_s=30, config_file="/etc/criu/runc.conf", skip_mounts=["/proc/x"],
    ), images_dir_fd=5, work_dir_fd=6, log_file="d.log"))
    assert list(o.external) == ["mnt[/data]:data", "mnt[/etc/hosts]:hosts", "unix[1234]"]
    assert o.manage_cgroups and o.manage_cgroups_mode == pb.SOFT
    assert (o.tcp_established, o.ext_unix_sk, o.file_locks, o.link_remap, o.force_irmap, o.shell_job) == (True,) * 6
    assert (o.ghost_limit, o.freeze_cgroup, o.orphan_pts_master, o.root, o.empty_ns) == (
        64 << 20, "/sys/fs/cgroup/freezer/x", True, "/rootfs", 0x40000000)
    assert (o.network_lock, o.timeout, o.config_file, o.work_dir_fd, o.log_file, o.log_level) == (
        pb.SKIP, 30, "/etc/criu/runc.conf", 6, "d.log", 2)
    assert list(o.irmap_scan_paths) == ["/usr"] and list(o.skip_mnt) == ["/proc/x"] and o.leave_running


def test_restore_request_options() -> None:
    o = _opts(rpc.restore_request(RestoreOptions(
        images_dir=IMG, rst_sibling=True, inherit_fds={"pipe:[99]": 4}, cgroup_roots={None: "/a", "memory": "/b"},
        join_ns=[JoinNamespace("net", "/proc/1/ns/net"), JoinNamespace("uts", "/proc/1/ns/uts", "x")],
        external_mounts={"data": "/host/data"}, manage_cgroups=True, lsm_profile="apparmor:unconfined",
    ), images_dir_fd=3))
    assert o.rst_sibling and o.log_file == "restore.log" and o.manage_cgroups and not o.HasField("manage_cgroups_mode")
    assert [(i.key, i.fd) for i in o.inherit_fd] == [("pipe:[99]", 4)]
    assert [(c.HasField("ctrl"), c.ctrl, c.path) for c in o.cg_root] == [(False, "", "/a"), (True, "memory", "/b")]
    assert [(j.ns, j.ns_file, j.HasField("extra_opt")) for j in o.join_ns] == [
        ("net", "/proc/1/ns/net", False), ("uts", "/proc/1/ns/uts", True)]
    assert list(o.external) == ["mnt[data]:/host/data"] and o.lsm_profile == "apparmor:unconfined"


def test_restore_inherit_fds_renumbered() -> None:
    o = _opts(rpc.restore_request(RestoreOptions(images_dir=IMG, inherit_fds={"k": 4}), images_dir_fd=3,
                                  inherit_fds={"k": 9}))
    assert [(i.key, i.fd) for i in o.inherit_fd] == [("k", 9)]


@pytest.mark.parametrize("opts, fd, log, match", [
    (DumpOptions(pid=0, images_dir=IMG), 3, "dump.log", "pid 0 is not a process id"),
    (DumpOptions(pid=-5, images_dir=IMG), 3, "dump.log", "pid -5 is not a process id"),
    (DumpOptions(pid=1, images_dir=IMG), -1, "dump.log", "images_dir_fd -1 is negative"),
    (DumpOptions(pid=1, images_dir=IMG), 3, "logs/dump.log", "must be a bare file name"),
    (DumpOptions(pid=1, images_dir=IMG, log_level=9), 3, "dump.log", "log level 9"),
    (DumpOptions(pid=1, images_dir=IMG, external_mounts={"/a]": "x"}), 3, "dump.log", "external mount"),
    (DumpOptions(pid=1, images_dir=IMG, external_mounts={"/a": ""}), 3, "dump.log", "external mount"),
    (DumpOptions(pid=1, images_dir=IMG, ghost_limit=-1), 3, "dump.log", "ghost limit -1"),
    (DumpOptions(pid=1, images_dir=IMG, timeout_s=0), 3, "dump.log", "timeout 0 s"),
])
def test_invalid_dump_options(opts: DumpOptions, fd: int, log: str, match: str) -> None:
    with pytest.raises(CriuError, match=f"invalid dump options: .*{match}"):
        rpc.dump_request(opts, images_dir_fd=fd, log_file=log)


def test_invalid_restore_options() -> None:
    with pytest.raises(CriuError, match="invalid restore options: inherit fd 'k':-1"):
        rpc.restore_request(RestoreOptions(images_dir=IMG, inherit_fds={"k": -1}), images_dir_fd=3)


def test_unknown_fields_survive_a_round_trip() -> None:
    # a newer runc/CRIU field (number 200) that our subset does not define must be re-encoded untouched
    raw = rpc.dump_request(DumpOptions(pid=3, images_dir=IMG), images_dir_fd=4)
    opts_extra = b"\xc0\x0c\x01"  # field 200, varint 1
    req = pb.criu_req()
    req.ParseFromString(raw)
    inner = req.opts.SerializeToString() + opts_extra
    data = pb.criu_req(type=pb.DUMP).SerializeToString() + b"\x12" + bytes([len(inner)]) + inner
    again = pb.criu_req()
    again.ParseFromString(data)
    again.opts.pid = 9
    assert opts_extra in again.SerializeToString()


@given(name=st.text(max_size=40), pid=st.integers(min_value=0, max_value=2**31 - 1))
def test_notify_round_trip(name: str, pid: int) -> None:
    data = pb.criu_resp(type=pb.NOTIFY, success=True, notify=pb.criu_notify(script=name, pid=pid)).SerializeToString()
    r = rpc.parse_reply(data)
    assert (r.type, r.notify, r.notify_pid) == ("NOTIFY", name, pid)


def test_notify_names_match_criu() -> None:
    assert [n.value for n in rpc.Notify][:3] == ["pre-stream", "pre-dump", "network-lock"]
    assert rpc.Notify.POST_RESUME == "post-resume"


def test_front_can_import_messages_without_the_client() -> None:
    import subprocess
    import sys

    code = ("import sys; import nri_plugin.ckpt.criu._pb.rpc_pb2; "
            "print(sorted(m for m in sys.modules if m.startswith('nri_plugin.ckpt.criu.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "nri_plugin.ckpt.criu.client" not in out and "nri_plugin.ckpt.criu.rpc" not in out


def test_parse_request_for_a_front() -> None:
    raw = rpc.dump_request(DumpOptions(pid=5, images_dir=IMG, external_mounts={"/d": "d"}), images_dir_fd=8,
                           work_dir_fd=9)
    req = rpc.parse_request(raw + b"\xf8\x01\x07")  # + unknown top-level field 31 = 7 (a newer runtime's)
    assert req.type == pb.DUMP and req.opts.images_dir_fd == 8 and req.opts.work_dir_fd == 9
    req.opts.images_dir_fd, req.opts.work_dir_fd = 3, 4  # what a front rewrites (SO_PEERCRED fd numbers)
    out = req.SerializeToString()
    assert out.endswith(b"\xf8\x01\x07") or b"\xf8\x01\x07" in out
    again = rpc.parse_request(out)
    assert (again.opts.images_dir_fd, again.opts.work_dir_fd, list(again.opts.external)) == (3, 4, ["mnt[/d]:d"])
    assert rpc.parse_request(rpc.version_request()).type == pb.VERSION
    with pytest.raises(CriuError, match="not a criu_req"):
        rpc.parse_request(b"\xff\xff")
    with pytest.raises(CriuError, match="without type"):
        rpc.parse_request(b"")


def test_options_record_is_json() -> None:
    import json

    from nri_plugin.ckpt.criu.options import as_record

    rec = as_record(DumpOptions(pid=3, images_dir=IMG, cgroups_mode=CgroupMode.SOFT, external_mounts={"/a": "b"}))
    assert rec["images_dir"] == "/ckpt/img" and rec["cgroups_mode"] == "SOFT" and rec["external_mounts"] == {"/a": "b"}
    r2 = as_record(RestoreOptions(images_dir=IMG, cgroup_roots={None: "/x"}, join_ns=[JoinNamespace("net", "/n")]))
    assert r2["cgroup_roots"] == {"": "/x"} and r2["join_ns"] == [{"ns": "net", "ns_file": "/n", "extra_opt": None}]
    json.dumps(rec)
    json.dumps(r2)

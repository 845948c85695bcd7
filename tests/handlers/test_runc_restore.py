"""The runc wrapper's restore half: a shim's ``runc create`` mapped onto ``runc restore`` (argv mapping) and its check of a pod's shared pid namespace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nri_plugin.handlers.runc_restore import RuncArgsError, parse_create, restore_argv


def test_containerd_shim_create_maps_to_restore() -> None:
    c = parse_create(["--root", "/r", "--log", "/b/log.json", "--log-format", "json", "--systemd-cgroup", "create",
                      "--bundle", "/b", "--pid-file", "/b/init.pid", "--console-socket", "/s.sock", "--no-pivot",
                      "--no-new-keyring", "cid"])
    assert (c.root, c.bundle, c.log, c.container_id) == ("/r", "/b", "/b/log.json", "cid")
    assert restore_argv("/usr/bin/runc", c, "/img", "/work") == [
        "/usr/bin/runc", "--root", "/r", "--log", "/b/log.json", "--log-format", "json", "--systemd-cgroup",
        "restore", "--detach", "--no-subreaper", "--bundle", "/b", "--image-path", "/img", "--work-path", "/work",
        "--pid-file", "/b/init.pid", "--console-socket", "/s.sock", "--no-pivot", "cid"]


def test_equals_forms_and_defaults() -> None:
    c = parse_create(["--root=/r", "create", "--bundle=/b", "--pid-file=/p", "cid"])
    assert (c.root, c.bundle, c.pid_file, c.console_socket) == ("/r", "/b", "/p", None)


@pytest.mark.parametrize("args, match", [
    (["create", "--preserve-fds", "2", "cid"], "cannot take extra fds"),
    (["create", "--bogus", "cid"], "no runc restore counterpart"),
    (["start", "cid"], "expected the create command"),
    (["create", "a", "b"], "one container id"),
])
def test_unmappable_creates_are_refused(args: list[str], match: str) -> None:
    with pytest.raises(RuncArgsError, match=match):
        parse_create(args)


def test_shared_pid_ns_only_for_a_bundle_joining_one(tmp_path: Path) -> None:
    """A bundle with its own pid namespace needs nothing; one joining a namespace by path gets the pids checked
    there (here: the tree's pid 1 is this namespace's init, taken). (The spec is read once, by the wrapper's
    ``_spec``, which fails the create when it is unreadable.)"""
    from nri_plugin.handlers.runc_restore import CreateArgs, _shared_pid_ns
    from tests.ckpt.test_pidns import _entry, pstree

    c = CreateArgs(bundle=str(tmp_path), container_id="c1")
    spec: dict = {"linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}}
    assert _shared_pid_ns(c, spec, str(tmp_path)) == ""
    spec["linux"]["namespaces"][0]["path"] = "/proc/self/ns/pid"
    Path(tmp_path, "pstree.img").write_bytes(pstree(_entry(os.getpid(), 0, 1, 1, [os.getpid()])))
    assert f"container c1: the checkpoint's pid(s) [{os.getpid()}] are taken" in _shared_pid_ns(c, spec, str(tmp_path))

"""The runc wrapper's restore half: a shim's ``runc create`` mapped onto ``runc restore`` (pure argv mapping)."""

from __future__ import annotations

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

"""The runc wrapper's restore half: a shim's ``runc create`` mapped onto ``runc restore`` (argv mapping), its check
of a pod's shared pid namespace, and the route through a chaining runtime (which way, the inner runc's lookup)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nri_plugin.ckpt.layout import CRIU_DUMP, dump_record
from nri_plugin.handlers.runc_restore import (
    DEFAULT_RESTORE_FLAGS, RuncArgsError, parse_create, restore_argv, restore_flags,
)


def test_containerd_shim_create_maps_to_restore() -> None:
    c = parse_create(["--root", "/r", "--log", "/b/log.json", "--log-format", "json", "--systemd-cgroup", "create",
                      "--bundle", "/b", "--pid-file", "/b/init.pid", "--console-socket", "/s.sock", "--no-pivot",
                      "--no-new-keyring", "cid"])
    assert (c.root, c.bundle, c.log, c.container_id) == ("/r", "/b", "/b/log.json", "cid")
    assert restore_argv("/usr/bin/runc", c, "/img", "/work") == [
        "/usr/bin/runc", "--root", "/r", "--log", "/b/log.json", "--log-format", "json", "--systemd-cgroup",
        "restore", "--detach", "--no-subreaper", "--bundle", "/b", "--image-path", "/img", "--work-path", "/work",
        "--pid-file", "/b/init.pid", "--console-socket", "/s.sock", "--no-pivot", "cid"]


def test_restore_flags_follow_the_dump_record() -> None:
    """The flags the dump recorded (a direct dump: all four; a task-API dump: file locks plus its CRIU config's);
    without a record the permissive three, never --shell-job; they go before the container id."""
    direct = dump_record({"tcp_established": True, "ext_unix_sk": True, "file_locks": True, "shell_job": True,
                          "link_remap": True})
    assert restore_flags({CRIU_DUMP: direct}) == ["--tcp-established", "--ext-unix-sk", "--file-locks",
                                                  "--shell-job"]
    assert restore_flags({CRIU_DUMP: dump_record({"file_locks": True})}) == ["--file-locks"]
    assert restore_flags({}) == list(DEFAULT_RESTORE_FLAGS) == ["--tcp-established", "--ext-unix-sk", "--file-locks"]
    assert restore_flags({CRIU_DUMP: "junk"}) == list(DEFAULT_RESTORE_FLAGS)
    c = parse_create(["create", "--bundle", "/b", "cid"])
    assert restore_argv("runc", c, "/i", "/w", ["--file-locks"])[-2:] == ["--file-locks", "cid"]


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


def test_restore_route_auto_direct_only_for_runc() -> None:
    """A target named runc restores directly; any other (nvidia-container-runtime) through its own create;
    front.conf's restore_route forces either; a bad value is refused."""
    from nri_plugin.handlers.runc_restore import restore_route

    assert restore_route("/usr/sbin/runc", {}) == "direct"
    assert restore_route("/usr/bin/nvidia-container-runtime", {}) == "chain"
    assert restore_route("/usr/bin/nvidia-container-runtime", {"restore_route": "direct"}) == "direct"
    assert restore_route("/usr/sbin/runc", {"restore_route": "chain"}) == "chain"
    with pytest.raises(RuncArgsError, match="expected auto, direct or chain"):
        restore_route("/usr/sbin/runc", {"restore_route": "sometimes"})


def _exe(path: Path, body: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


def test_real_runc_skips_the_routes_own_dirs(tmp_path: Path) -> None:
    """The inner runc never resolves to the route's chain/runc or bin/runc wrapper (no loop): the first runc on
    PATH outside them, in PATH order."""
    from nri_plugin.handlers.runc_restore import real_runc

    route = tmp_path / "route"
    chain, wrapper, real = (_exe(route / "chain/runc"), _exe(route / "bin/runc"), _exe(tmp_path / "sys/runc"))
    path = f"{route / 'chain'}:{route / 'path'}:{route / 'bin'}:{tmp_path / 'sys'}"
    assert real_runc(path, [str(route / "chain"), str(route / "bin")]) == str(real)
    assert real_runc(path, []) == str(chain)
    assert wrapper.exists()


def test_inner_runc_passes_other_commands_to_the_real_runc(tmp_path: Path) -> None:
    """chain/runc for anything but the create of the container the wrapper named (another command, another id, no
    id at all) execs the real runc with the arguments unchanged, and without the route's chain dir on PATH."""
    import subprocess
    import sys

    route = tmp_path / "route"
    _exe(route / "chain/runc")
    log = tmp_path / "args"
    _exe(tmp_path / "sys/runc", f'#!/bin/sh\necho "$PATH|$GPUCR_RESTORE_CHAIN_ID|$*" >> {log}\n')
    code = ("import sys; from nri_plugin.handlers.runc_restore import inner_main; "
            f"sys.exit(inner_main({str(route / 'path/criu')!r}, sys.argv[1:]))")
    path = f"{route / 'chain'}:{tmp_path / 'sys'}"
    for args, chain_id in ((["state", "c1"], "c1"), (["create", "--bundle", "/b", "c2"], "c1"),
                           (["create", "--bundle", "/b", "c1"], "")):
        env = {**os.environ, "PATH": path, "GPUCR_RESTORE_CHAIN_ID": chain_id}
        r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    sys_dir = tmp_path / "sys"
    assert log.read_text().splitlines() == [f"{sys_dir}||state c1", f"{sys_dir}||create --bundle /b c2",
                                            f"{sys_dir}||create --bundle /b c1"]


def test_symlinked_bind_sources_are_resolved_in_the_bundle(tmp_path: Path) -> None:
    """A bind mount whose source is a symlink (as NVIDIA's CDI specs name some driver files) gets the file it names,
    in config.json, before runc restore hands it to CRIU; other mounts and fields stay as they were."""
    from nri_plugin.handlers.runc_restore import resolve_bind_sources

    real = tmp_path / "driver" / "nvidia_icd.json"
    real.parent.mkdir()
    real.write_text("{}")
    link = tmp_path / "nvidia_icd.json"
    link.symlink_to(real)
    plain = tmp_path / "plain"
    plain.write_text("x")
    spec = {"ociVersion": "1.1.0", "mounts": [
        {"destination": "/etc/vulkan/icd.d/nvidia_icd.json", "source": str(link), "options": ["ro", "rbind"]},
        {"destination": "/data", "source": str(plain), "type": "bind", "options": ["rw"]},
        {"destination": "/proc", "source": "proc", "type": "proc"},
        {"destination": "/x", "source": str(link), "type": "tmpfs"}]}
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(spec))
    changed = resolve_bind_sources(str(bundle), spec)
    assert changed == [f"/etc/vulkan/icd.d/nvidia_icd.json: {link} -> {real}"]
    after = json.loads((bundle / "config.json").read_text())
    assert after["mounts"][0]["source"] == str(real)
    assert [m["source"] for m in after["mounts"][1:]] == [str(plain), "proc", str(link)]
    assert after["ociVersion"] == "1.1.0"
    assert resolve_bind_sources(str(bundle), after) == []


@pytest.mark.parametrize("hooks, found", [
    ({"prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["nvidia-container-runtime-hook",
                                                                             "prestart"]}]},
     "/usr/bin/nvidia-container-runtime-hook"),
    ({"createRuntime": [{"path": "/usr/local/nvidia/toolkit/nvidia-container-toolkit"}]},
     "/usr/local/nvidia/toolkit/nvidia-container-toolkit"),
    ({"createContainer": [{"path": "/usr/bin/nvidia-cdi-hook", "args": ["nvidia-cdi-hook", "update-ldcache"]}],
      "createRuntime": [{"path": "/usr/libexec/gpucr/gpucr-hook"}]}, None),
    ({}, None),
])
def test_legacy_nvidia_hook_is_found_cdi_hooks_are_not(hooks: dict, found: str | None) -> None:
    """NVIDIA's legacy-mode hook (it mounts the driver outside the spec) is what a restore refuses; CDI's hooks
    (nvidia-cdi-hook, run by runc at create only) and gpucr's own are not."""
    from nri_plugin.handlers.runc_restore import legacy_nvidia_hook

    assert legacy_nvidia_hook({"hooks": hooks}) == found

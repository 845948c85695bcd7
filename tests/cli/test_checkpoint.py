"""``gpucr checkpoint``/``restore`` as a user meets them, without containerd: a bad CONTAINER reference or an
unreachable runtime is one error line and exit status 1, with nothing created and CRIU never run (a recording
``criu`` proves it); the node config is obeyed and must be trusted; ``-v``/``-vv`` log; and the pure rules behind
them (reference matching) as tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nri_plugin.cli._resolve import MIN_PREFIX, _Candidate, _match
from tests.testenv import node_config

GPUCR = str(Path(sys.executable).parent / "gpucr")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The CLI's env: its config confines checkpoints to tmp_path; ``criu`` records that it ran."""
    criu = tmp_path / "criu"
    criu.write_text(f"#!/bin/sh\necho ran >> {tmp_path}/criu-ran\nexit 1\n")
    criu.chmod(0o755)
    return {**node_config(tmp_path), "GPUCR_CRIU": str(criu), "GPUCR_LIBCUDA": "/nonexistent/libcuda.so.1"}


def gpucr(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GPUCR, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=60)


def one_error_line(r: subprocess.CompletedProcess[str], command: str = "checkpoint") -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr)
    assert lines[0].startswith(f"gpucr {command}: error: ") and "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize("ref, says", [
    ("", "'' is not a container id, id prefix or name"),
    ("/", "'/' is not a container id, id prefix or name"),
    ("../x", "is not a container id"),
    ("0", "cannot ask containerd which container '0' is: CRI ListContainers failed on"),
    ("s", "cannot ask containerd which container 's' is: CRI ListContainers failed on"),
    ("countr-typo", "CRI ListContainers failed on"),
])
def test_bad_reference_or_unreachable_runtime_is_one_line(tmp_path: Path, env: dict[str, str], ref: str,
                                                          says: str) -> None:
    sock = tmp_path / "no-containerd.sock"
    r = gpucr("checkpoint", ref, "--to", str(tmp_path / "ck"), "--address", str(sock), env=env)
    line = one_error_line(r)
    assert says in line, line
    if "CRI" in says:
        assert str(sock) in line and "UNAVAILABLE" in line  # the runtime's error, not "not found"
    assert not (tmp_path / "ck").exists() and not (tmp_path / "criu-ran").exists()
    assert os.path.exists("/proc/1")


def test_untrusted_or_bad_config_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    cfg = Path(env["GPUCR_CONFIG"])
    os.chmod(cfg, 0o666)
    r = gpucr("checkpoint", "--pid", "999999999", "--to", str(tmp_path / "ck"), env=env)
    assert f"config file {cfg} is owned by uid 0 with mode 0666" in one_error_line(r)
    os.chmod(cfg, 0o644)
    os.chown(cfg, 65534, 65534)
    r = gpucr("restore", str(tmp_path / "ck"), env=env)
    assert "is owned by uid 65534" in one_error_line(r, "restore")
    os.chown(cfg, 0, 0)
    cfg.write_text('lock_timeout_ms = "soon"\n')
    r = gpucr("checkpoint", "--pid", "999999999", "--to", str(tmp_path / "ck"), env=env)
    assert "lock_timeout_ms must be a positive number" in one_error_line(r)
    r = gpucr("checkpoint", "--pid", "999999999", "--to", str(tmp_path / "ck"), "--config", str(tmp_path / "none.toml"),
              env=env)
    assert f"config file {tmp_path / 'none.toml'} does not exist" in one_error_line(r)
    assert not (tmp_path / "ck").exists() and not (tmp_path / "criu-ran").exists()


def test_checkpoint_root_from_the_config(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    env = {**env, **node_config(tmp_path, checkpoint_root=str(root))}
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pid = str(sleeper.pid)
        for to, says in ((tmp_path / "ck", "is outside the configured checkpoint root"),
                         (root / ".." / "ck", "contains '..'"), (root, "or is the root itself")):
            r = gpucr("checkpoint", "--pid", pid, "--to", str(to), env=env)
            assert says in one_error_line(r)
        (root / "link").symlink_to(tmp_path)
        r = gpucr("checkpoint", "--pid", pid, "--to", str(root / "link" / "ck"), env=env)
        assert f"(really {tmp_path / 'ck'}) is outside the configured checkpoint root" in one_error_line(r)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    r = gpucr("restore", str(tmp_path), env=env)
    assert "outside the configured checkpoint root" in one_error_line(r, "restore")
    assert not (tmp_path / "ck").exists() and not (tmp_path / "criu-ran").exists()


def test_verbosity(tmp_path: Path, env: dict[str, str]) -> None:
    """No flag: only the error; -v: INFO milestones (the config's lock timeout in use); -vv: DEBUG; one line each."""
    env = {**env, **node_config(tmp_path, lock_timeout_ms=4321)}
    args = ["--pid", "999999999", "--to", str(tmp_path / "ck")]
    quiet = gpucr("checkpoint", *args, env=env)
    assert "pid 999999999 does not exist" in one_error_line(quiet)
    info = gpucr("checkpoint", "-v", *args, env=env)
    assert "INFO checkpoint of pid 999999999 to" in info.stderr and "lock timeout 4321 ms" in info.stderr
    assert "DEBUG" not in info.stderr
    for argv in (["checkpoint", "-vv", *args], ["-v", "checkpoint", "-v", *args]):
        debug = gpucr(*argv, env=env)
        assert "DEBUG node config" in debug.stderr and "lock_timeout_ms 4321" in debug.stderr, debug.stderr
    journal = gpucr("checkpoint", "-v", *args, env={**env, "JOURNAL_STREAM": "8:1"})
    assert any(ln.startswith("<6>nri_plugin.cli.checkpoint: INFO: checkpoint of pid") for ln in
               journal.stderr.splitlines()), journal.stderr
    r = gpucr("checkpoint", "-v", *args, "--lock-timeout-ms", "77", env=env)
    assert "lock timeout 77 ms" in r.stderr  # the flag wins over the config


C = [_Candidate("a1b2c3d4e5", "web", "k8s.io", True), _Candidate("a1b2ffff00", "db", "k8s.io", True),
     _Candidate("ctr-one", "ctr-one", "default", False), _Candidate("0abc0abc", "a1b2", "k8s.io", True)]


@pytest.mark.parametrize("ref, ids", [
    ("a1b2c3d4e5", ["a1b2c3d4e5"]),          # exact id
    ("web", ["a1b2c3d4e5"]),                 # exact name
    ("a1b2c", ["a1b2c3d4e5"]),               # unique prefix
    ("a1b2", ["0abc0abc"]),                  # an exact name wins over an (ambiguous) prefix
    ("a1b", []),                             # too short to be a prefix
    ("0", []), ("s", []), ("c", []),
    ("ctr-o", ["ctr-one"]),                  # task API containers: the id is the name
    ("a1b2f", ["a1b2ffff00"]),
    ("a1b2c3d4e5x", []),
])
def test_match(ref: str, ids: list[str]) -> None:
    assert sorted(c.id for c in _match(ref, C)) == ids
    assert MIN_PREFIX == 4


def test_match_ambiguous() -> None:
    assert sorted(c.id for c in _match("a1b2", C[:3])) == ["a1b2c3d4e5", "a1b2ffff00"]


def test_init_and_gpucrs_own_ancestors_are_refused(tmp_path: Path, env: dict[str, str]) -> None:
    for pid, says in (("1", "pid 1 is this system's init"), (str(os.getpid()), "a process that started it")):
        r = gpucr("checkpoint", "--pid", pid, "--to", str(tmp_path / "ck"), env=env)
        assert f"{says}: refusing to checkpoint it" in one_error_line(r)
    assert not (tmp_path / "ck").exists() and not (tmp_path / "criu-ran").exists()


def test_images_only_goes_with_via_runtime(tmp_path: Path, env: dict[str, str]) -> None:
    r = gpucr("checkpoint", "--pid", str(os.getpid()), "--images-only", "--to", str(tmp_path / "ck"), env=env)
    assert "--images-only goes with --via-runtime" in one_error_line(r)
    assert not (tmp_path / "ck").exists() and not (tmp_path / "criu-ran").exists()

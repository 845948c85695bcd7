"""The front runs as root: it refuses to start, with one line naming the path and the fix, when its code, its
configuration or its caches could be changed by anyone but root; and it touches nothing then."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu._pb import rpc_pb2
from nri_plugin.front import trust
from nri_plugin.front.errors import FrontError
from tests.front.conftest import REAL_CRIU, FrontRoute

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def safe_dir(front_route: FrontRoute, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A root-owned 0755 directory whose ancestors are root's (the route's parent, not /tmp)."""
    d = front_route.root / f"trust-{request.node.name}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_front(criu: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(criu), *args], capture_output=True, text=True, timeout=30, env={**os.environ, **env})


def swrk_version(criu: Path, env: dict[str, str]) -> tuple[int, rpc_pb2.criu_resp | None, str]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    p = subprocess.Popen([str(criu), "swrk", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                         stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    theirs.close()
    with ours:
        ours.settimeout(30)
        ours.send(rpc_pb2.criu_req(type=rpc_pb2.VERSION).SerializeToString())
        raw = ours.recv(1 << 16)
        ours.shutdown(socket.SHUT_WR)
        _, err = p.communicate(timeout=30)
    return p.returncode, rpc_pb2.criu_resp.FromString(raw) if raw else None, err


def test_the_rigs_own_layout_is_trusted(front_route: FrontRoute) -> None:
    """The route's code copy and its dir pass; otherwise every other front test would fail. (Not the checkout: a clone
    under a world-writable /tmp is rightly refused, and the front only ever runs from an installed copy.)"""
    assert trust.code_problem(str(front_route.criu), str(front_route.root / "lib/nri_plugin")) is None
    assert trust.path_problem(str(front_route.conf), "the configuration file") is None


def test_world_writable_config_is_one_line_and_touches_nothing(front_route: FrontRoute, safe_dir: Path) -> None:
    conf = safe_dir / "front.conf"
    log_dir, cache = safe_dir / "log", safe_dir / "cache"
    conf.write_text(f"real_criu = {REAL_CRIU}\nlog_dir = {log_dir}\ncache_dir = {cache}\n")
    conf.chmod(0o666)
    env = {"GPUCR_FRONT_CONF": str(conf)}
    r = run_front(front_route.criu, env, "--version")
    want = (f"gpucr criu front: refusing to start: the configuration file {conf} is not safe: {conf} is group- or "
            f"world-writable (mode 0666); fix: chmod go-w {conf} (or install the front with install/front.sh)\n")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", want)  # the real criu never ran (no version printed)
    rc, resp, err = swrk_version(front_route.criu, env)
    assert rc == 1 and err == want
    assert resp is not None and not resp.success and resp.cr_errmsg == want.strip()
    assert not log_dir.exists() and not cache.exists()
    conf.chmod(0o644)
    os.chown(conf, 65534, 65534)  # owned by nobody: same refusal, naming the owner
    r = run_front(front_route.criu, env, "--version")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and f"{conf} is owned by uid 65534, not root" in r.stderr
    os.chown(conf, 0, 0)
    r = run_front(front_route.criu, env, "--version")
    assert r.returncode == 0 and "Version:" in r.stdout


def test_config_under_a_writable_directory_is_refused(front_route: FrontRoute, safe_dir: Path) -> None:
    sub = safe_dir / "conf.d"
    sub.mkdir()
    conf = sub / "front.conf"
    conf.write_text(f"real_criu = {REAL_CRIU}\n")
    conf.chmod(0o644)
    sub.chmod(0o1777)  # sticky and world-writable, as /tmp: not acceptable either
    r = run_front(front_route.criu, {"GPUCR_FRONT_CONF": str(conf)}, "--version")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert f"the configuration file {conf} is not safe: {sub} is group- or world-writable (mode 1777)" in r.stderr


def test_writable_code_is_refused(front_route: FrontRoute, safe_dir: Path) -> None:
    """A copy of the front whose package has a group-writable directory: refused before anything runs."""
    code = safe_dir / "code"
    shutil.copytree(REPO / "hooks", code / "hooks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "nri_plugin", code / "nri_plugin", ignore=shutil.ignore_patterns("__pycache__"))
    for p in [code, *code.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (code / "hooks/criu_front.py").chmod(0o755)
    env = {"GPUCR_REAL_CRIU": str(REAL_CRIU), "GPUCR_FRONT_LOG_DIR": str(safe_dir / "log"),
           "GPUCR_FRONT_CACHE_DIR": str(safe_dir / "cache")}
    assert run_front(code / "hooks/criu_front.py", env, "--version").returncode == 0
    bad = code / "nri_plugin/ckpt"
    bad.chmod(0o775)
    r = run_front(code / "hooks/criu_front.py", env, "--version")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (f"gpucr criu front: refusing to start: the CRIU front's code {code / 'nri_plugin'} is not "
                        f"safe: {bad} is group- or world-writable (mode 0775); fix: chmod go-w {bad} (or install "
                        "the front with install/front.sh)\n")
    bad.chmod(0o755)
    (code / "nri_plugin/front/relay.py").chmod(0o646)
    r = run_front(code / "hooks/criu_front.py", env, "--version")
    assert r.returncode == 1 and "nri_plugin/front/relay.py is group- or world-writable (mode 0646)" in r.stderr
    assert not (safe_dir / "log").exists()


def test_planted_cache_is_refused(front_route: FrontRoute, safe_dir: Path) -> None:
    """A world-writable cache file (it names what a root process trusts) is refused, not read."""
    cache = safe_dir / "cache"
    env = {"GPUCR_REAL_CRIU": str(REAL_CRIU), "GPUCR_FRONT_LOG_DIR": str(safe_dir / "log"),
           "GPUCR_FRONT_CACHE_DIR": str(cache)}
    rc, resp, _ = swrk_version(front_route.criu, env)
    assert rc == 0 and resp is not None and resp.success  # creates the cache dir 0700 and the cache 0600
    assert cache.stat().st_mode & 0o777 == 0o700
    planted = cache / "criu-version.cache"
    assert planted.stat().st_mode & 0o777 == 0o600
    planted.write_text("a forged answer 080a1001\n")
    planted.chmod(0o666)
    rc, resp, err = swrk_version(front_route.criu, env)
    want = (f"gpucr criu front: refusing to start: the cache file {planted} is not safe: {planted} is group- or "
            f"world-writable (mode 0666); fix: chmod go-w {planted} (or install the front with install/front.sh)")
    assert rc == 1 and err == want + "\n" and resp is not None and not resp.success and resp.cr_errmsg == want
    assert want in (safe_dir / "log/criu-front.log").read_text()
    planted.unlink()
    cache.chmod(0o755)  # a cache dir others can read or enter is not root-only
    rc, _, err = swrk_version(front_route.criu, env)
    assert rc == 1 and err == (f"gpucr criu front: refusing to start: the cache dir {cache} is not root-only "
                               f"(mode 0755); fix: chmod 0700 {cache}\n")


def test_read_cache_rules(safe_dir: Path) -> None:
    cache = safe_dir / "c"
    assert trust.read_cache(str(cache), "x") is None and cache.stat().st_mode & 0o777 == 0o700
    trust.write_cache(str(cache), "x", "hello\n")
    assert trust.read_cache(str(cache), "x") == "hello\n" and (cache / "x").stat().st_mode & 0o777 == 0o600
    (cache / "y").symlink_to(cache / "x")
    with pytest.raises(FrontError, match="is a symlink"):
        trust.read_cache(str(cache), "y")
    os.chown(cache / "x", 65534, 65534)
    with pytest.raises(FrontError, match="owned by uid 65534"):
        trust.read_cache(str(cache), "x")
    assert trust.read_cache(None, "x") is None
    (safe_dir / "file").write_text("")
    assert trust.read_cache(str(safe_dir / "file/cache"), "x") is None  # cannot exist: no caching, no refusal
    trust.write_cache(str(safe_dir / "file/cache"), "x", "y")


def test_tmp_is_not_a_place_for_code(tmp_path: Path) -> None:
    f = tmp_path / "mod.py"
    f.write_text("")
    f.chmod(0o644)
    problem = trust.path_problem(str(f), "the CRIU front's code")
    assert problem and "/tmp is group- or world-writable (mode 1777)" in problem

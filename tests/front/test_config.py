"""Where the front finds the real criu: precedence, the file format, refusals; and its start-up import budget."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

import nri_plugin.front as front_pkg
from nri_plugin.front import config
from nri_plugin.front.errors import FrontError


def test_package_all_names_submodules() -> None:
    for name in front_pkg.__all__:
        importlib.import_module(f"nri_plugin.front.{name}")


def test_parse_conf() -> None:
    assert config.parse_conf("# c\n\nreal_criu = /usr/sbin/criu\nlog_dir='/var/log/x'\nhooks = \"a.b:c\"\n") == {
        "real_criu": "/usr/sbin/criu", "log_dir": "/var/log/x", "hooks": "a.b:c"}
    with pytest.raises(FrontError, match=r"front.conf:2: expected 'key = value', got 'oops'"):
        config.parse_conf("a = 1\noops\n", "front.conf")


def test_precedence(tmp_path: Path) -> None:
    beside = tmp_path / "path"
    beside.mkdir()
    (beside / "front.conf").write_text("real_criu = /opt/criu\nlog_dir = /l\nhooks = m:f\nrelay = always\nx = 1\n")
    argv0 = str(beside / "criu")
    cfg = config.load({}, argv0, check=False)
    assert (cfg.real_criu, cfg.log_dir, cfg.hooks, cfg.relay_always, cfg.values["x"]) == ("/opt/criu", "/l", "m:f", True, "1")
    assert cfg.conf_file == str(beside / "front.conf")
    cfg = config.load({"GPUCR_REAL_CRIU": "/e/criu", "GPUCR_FRONT_RELAY": "auto"}, argv0, check=False)
    assert cfg.real_criu == "/e/criu" and not cfg.relay_always
    other = tmp_path / "other.conf"
    other.write_text("real_criu = /other/criu\n")
    assert config.load({"GPUCR_FRONT_CONF": str(other)}, argv0, check=False).real_criu == "/other/criu"
    with pytest.raises(FrontError, match=r"refusing to start: the configuration file .* /tmp is group- or world-wr"):
        config.load({"GPUCR_FRONT_CONF": str(other)}, argv0)  # tmp_path lies under /tmp
    nowhere = tmp_path / "empty"
    nowhere.mkdir()
    if not os.path.exists(config.SYSTEM_CONF):
        cfg = config.load({}, str(nowhere / "criu"))
        assert (cfg.real_criu, cfg.log_dir, cfg.hooks) == (config.DEFAULT_REAL_CRIU, config.DEFAULT_LOG_DIR, None)
        assert cfg.cache_dir == config.DEFAULT_CACHE_DIR == "/var/lib/gpucr/front"
    cfg = config.load({"GPUCR_FRONT_CACHE_DIR": "/c", "GPUCR_FRONT_LOG_DIR": "/l"}, argv0, check=False)
    assert (cfg.cache_dir, cfg.values["cache_dir"], cfg.values["log_dir"]) == ("/c", "/c", "/l")


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(FrontError, match="must be an absolute path"):
        config.load({"GPUCR_REAL_CRIU": "criu"}, str(tmp_path / "criu"))
    with pytest.raises(FrontError, match="relay = 'sometimes'"):
        config.load({"GPUCR_FRONT_RELAY": "sometimes"}, str(tmp_path / "criu"))
    with pytest.raises(FrontError, match="leads back to the front"):
        config.load({"GPUCR_REAL_CRIU": "/usr/sbin/criu", config.ACTIVE_ENV: "1"}, str(tmp_path / "criu"))
    with pytest.raises(FrontError, match="expected 'module:callable'"):
        config.load_hooks("nocolon", {})
    with pytest.raises(FrontError, match="cannot load the front's hooks 'no.such.module:f': ModuleNotFoundError"):
        config.load_hooks("no.such.module:f", {})


def test_a_retired_hooks_module_names_its_replacement() -> None:
    """A front.conf written before the hooks moved (``hooks = nri_plugin.gpufront:make``): one line, the fix."""
    with pytest.raises(FrontError) as ei:
        config.load_hooks("nri_plugin.gpufront:make", {}, where="/r/path/front.conf")
    assert str(ei.value) == ("hooks = nri_plugin.gpufront:make in /r/path/front.conf names a module gpucr no longer "
                             "ships; fix: set hooks = nri_plugin.handlers.front_cuda:make there (install/front.sh "
                             "writes it)")


def test_front_log_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nri_plugin.front._log import FrontLog
    log = FrontLog(str(tmp_path / "log"))
    log.info("DUMP from runtime pid 7: no gpucr work\nsecond line")
    log.error("boom")
    lines = (tmp_path / "log/criu-front.log").read_text().splitlines()
    assert len(lines) == 2  # one event per line, newlines escaped
    stamp, rest = lines[0].split(" ", 1)
    assert stamp.endswith("Z") and "T" in stamp
    assert rest == f"gpucr-criu-front[{os.getpid()}]: INFO: DUMP from runtime pid 7: no gpucr work\\nsecond line"
    assert lines[1].endswith(": ERROR: boom")
    assert (tmp_path / "log/criu-front.log").stat().st_mode & 0o777 == 0o600
    bad = FrontLog(str(tmp_path / "log/criu-front.log/x"))  # not a directory: falls back to stderr
    bad.warning("still heard")
    assert bad.problem and "still heard" in capsys.readouterr().err

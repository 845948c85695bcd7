"""The node's CRIU binary (one rule for setup, the CLI and the plugin) and ``criu --version``, asked once per
installed binary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu import Criu, CriuError, binary
from nri_plugin.ckpt.criu.binary import cli_version, node_criu, parse_cli_version


@pytest.mark.parametrize("out,version", [
    ("Version: 4.2.1\n", "4.2.1"), ("Version: 4.1\nGitID: v4.1-12-gdeadbee\n", "4.1"), ("criu\n", None), ("", None),
])
def test_parse_cli_version(out: str, version: str | None) -> None:
    assert parse_cli_version(out) == version


def test_cli_version_of_the_real_criu_matches_its_version_answer(criu_binary: str) -> None:
    v = Criu(criu_binary).version()
    assert cli_version(criu_binary) == ".".join(map(str, v[:2] if v[2] == 0 else v))


def test_asked_once_per_installed_binary(tmp_path: Path) -> None:
    count = tmp_path / "count"
    fake = tmp_path / "criu"
    fake.write_text(f"#!/bin/sh\necho x >> {count}\necho 'Version: 4.1'\n")
    fake.chmod(0o755)
    assert cli_version(str(fake)) == "4.1" and cli_version(str(fake)) == "4.1"
    assert count.read_text().count("x") == 1
    fake.write_text(f"#!/bin/sh\necho x >> {count}\necho 'Version: 4.2.1'\necho 'GitID: v4.2.1'\n")  # upgraded
    st = fake.stat()
    os.utime(fake, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cli_version(str(fake)) == "4.2.1" and count.read_text().count("x") == 2


def test_broken_or_missing_criu_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CriuError, match=r"cannot run criu '/nonexistent/criu'.*set criu_path in /etc/gpucr"):
        cli_version("/nonexistent/criu")
    bad = tmp_path / "criu"
    bad.write_text("#!/bin/sh\necho 'criu: broken' >&2\nexit 1\n")
    bad.chmod(0o755)
    with pytest.raises(CriuError, match=r"printed no version \(exit 1: criu: broken\): install gpucr-criu"):
        cli_version(str(bad))


def test_node_criu_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert node_criu("/opt/criu") == "/opt/criu"  # the node config's criu_path wins
    monkeypatch.setattr(binary, "GPUCR_CRIU", tmp_path / "absent")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "criu").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "criu").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert node_criu("") == str(tmp_path / "bin" / "criu")  # then criu on PATH
    monkeypatch.setattr(binary, "GPUCR_CRIU", tmp_path / "bin" / "criu")
    assert node_criu("") == str(tmp_path / "bin" / "criu")
    monkeypatch.setattr(binary, "GPUCR_CRIU", tmp_path / "absent")
    monkeypatch.setattr(binary, "SBIN", str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    with pytest.raises(CriuError, match="no criu found.*install the gpucr-criu package"):
        node_criu("")

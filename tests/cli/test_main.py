"""The gpucr console script: subcommands listed, JSON output, errors as one line and exit status 1."""

from __future__ import annotations

import json
import subprocess
import sys

from nri_plugin import __version__
from nri_plugin.cli.main import SUBCOMMANDS, main


def test_help_lists_every_subcommand() -> None:
    r = subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for name in SUBCOMMANDS:
        assert f"    {name}" in r.stdout


def test_no_command_prints_help_and_fails(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([]) == 2
    assert "usage: gpucr" in capsys.readouterr().out


def test_version_json(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["version"]) == 0
    assert json.loads(capsys.readouterr().out) == {"gpucr": __version__}


def test_unreachable_runtime_is_one_error_line(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    rc = main(["cri", "--address", str(tmp_path / "nothing.sock"), "--timeout", "2", "version"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("gpucr cri: error: CRI Version") and "nothing.sock" in err[0]

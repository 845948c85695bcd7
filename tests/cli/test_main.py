"""The gpucr console script: subcommands listed, JSON output, errors as one line and exit status 1."""

from __future__ import annotations

import argparse
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


def test_a_command_loads_only_its_own_module() -> None:
    """`gpucr checkpoint` starts without the daemon's asyncio and the CRI client (its start is on the checkpoint's
    critical path); `restore` is checkpoint's module; --help still lists every command (above)."""
    code = ("import atexit, json, sys; from nri_plugin.cli.main import main\n"
            "atexit.register(lambda: print(json.dumps(sorted(m for m in sys.modules\n"
            "                                                if m.startswith('nri_plugin.cli.') or m == 'asyncio'))))\n"
            "main(sys.argv[1:])\n")
    for argv, module in ((["-v", "checkpoint", "--help"], "checkpoint"), (["restore", "--help"], "checkpoint"),
                         (["import", "--help"], "export")):
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        loaded = json.loads(r.stdout.strip().splitlines()[-1])
        assert f"nri_plugin.cli.{module}" in loaded
        assert "asyncio" not in loaded and "nri_plugin.cli.plugin" not in loaded and "nri_plugin.cli.cri" not in loaded


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    return set(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


def test_every_command_names_the_module_that_registers_it() -> None:
    """The command -> module map that lets a command load alone covers every command (a new one registered under
    another name would otherwise load every module again)."""
    from nri_plugin.cli.main import _module_of, build_parser

    for command in _commands(build_parser()):
        assert _module_of([command]) is not None, command
        assert command in _commands(build_parser([command])), command

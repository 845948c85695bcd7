"""host.paths.root_path_problem on real files: what root may run or trust (the rule install/code.sh enforces)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from nri_plugin.host.paths import DIR, EXEC, FILE, root_path_problem

NOBODY = 65534


def _exe(p: Path, mode: int = 0o755) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("#!/bin/sh\n")
    p.chmod(mode)
    return p


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests need root (they chown files)", pytrace=False)


def test_a_root_owned_executable_is_fine(tmp_path: Path) -> None:
    assert root_path_problem(str(_exe(tmp_path / "bin/hook")), EXEC) is None


CASES: dict[str, tuple[Callable[[Path], Path], str, str, bool]] = {
    # name: (make the path, the component at fault (relative), why, unsafe)
    "missing": (lambda t: t / "bin/hook", "bin/hook", "does not exist", False),
    "not executable": (lambda t: _exe(t / "bin/hook", 0o644), "bin/hook", "is not executable (mode 0644)", False),
    "a directory": (lambda t: (t / "bin/hook").mkdir(parents=True) or t / "bin/hook", "bin/hook",
                    "is not a regular file", False),
    "owned by nobody": (lambda t: (os.chown(_exe(t / "bin/hook"), NOBODY, 0), t / "bin/hook")[1], "bin/hook",
                        f"is owned by uid {NOBODY}, not root", True),
    "group-writable": (lambda t: _exe(t / "bin/hook", 0o775), "bin/hook", "is group- or world-writable (mode 0775)",
                       True),
    "parent world-writable": (lambda t: (_exe(t / "bin/hook"), (t / "bin").chmod(0o777), t / "bin/hook")[2], "bin",
                              "is group- or world-writable (mode 0777)", True),
    "parent owned by nobody": (lambda t: (_exe(t / "bin/hook"), os.chown(t / "bin", NOBODY, 0), t / "bin/hook")[2],
                               "bin", f"is owned by uid {NOBODY}, not root", True),
    "link to an unsafe place": (lambda t: (_exe(t / "evil/hook"), (t / "evil").chmod(0o777),
                                           (t / "bin").mkdir(), (t / "bin/hook").symlink_to(t / "evil/hook"),
                                           t / "bin/hook")[4], "evil", "is group- or world-writable (mode 0777)", True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsafe_or_missing_executables_are_named(tmp_path: Path, case: str) -> None:
    make, component, why, unsafe = CASES[case]
    p = root_path_problem(str(make(tmp_path)), EXEC)
    assert p is not None and (p.component, p.why, p.unsafe) == (str(tmp_path / component), why, unsafe)
    assert str(p) == f"{tmp_path / component} {why}"


def test_a_sticky_root_dir_above_is_accepted_but_not_as_the_path_itself(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert root_path_problem(str(_exe(sticky / "hook")), EXEC) is None
    p = root_path_problem(str(sticky), DIR)
    assert p is not None and p.unsafe and p.component == str(sticky)


def test_a_missing_optional_path_is_judged_by_its_parents(tmp_path: Path) -> None:
    assert root_path_problem(str(tmp_path / "state/sub"), DIR, required=False) is None
    (tmp_path / "state").mkdir(mode=0o777)
    (tmp_path / "state").chmod(0o777)
    p = root_path_problem(str(tmp_path / "state/sub"), DIR, required=False)
    assert p is not None and p.component == str(tmp_path / "state") and p.unsafe
    f = tmp_path / "conf"
    f.mkdir()
    p = root_path_problem(str(f), FILE, required=False)
    assert p is not None and p.why == "is not a regular file" and not p.unsafe
    assert root_path_problem("relative/path", DIR) is not None

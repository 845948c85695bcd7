"""host.paths.root_path_problem on real files: what root may run or trust (the rule install/code.sh enforces)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from nri_plugin.host.paths import DIR, EXEC, FILE, root_path_problem
from tests.roottmp import root_tmp  # noqa: F401 (fixture)

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


def test_a_root_owned_executable_is_fine(root_tmp: Path) -> None:
    assert root_path_problem(str(_exe(root_tmp / "bin/hook")), EXEC) is None


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
def test_unsafe_or_missing_executables_are_named(root_tmp: Path, case: str) -> None:
    make, component, why, unsafe = CASES[case]
    p = root_path_problem(str(make(root_tmp)), EXEC)
    assert p is not None and (p.component, p.why, p.unsafe) == (str(root_tmp / component), why, unsafe)
    assert str(p) == f"{root_tmp / component} {why}"


def test_a_sticky_world_writable_dir_above_is_refused(root_tmp: Path) -> None:
    """As the CRIU front judges its own files: /tmp's sticky bit does not make what lies below it root's alone."""
    sticky = root_tmp / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    p = root_path_problem(str(_exe(sticky / "hook")), EXEC)
    assert p is not None and p.unsafe and (p.component, p.why) == (str(sticky), "is group- or world-writable "
                                                                                 "(mode 1777)")
    p = root_path_problem("/tmp/gpucr-no-such-hook", EXEC, required=False)
    assert p is not None and p.component == "/tmp" and p.unsafe


def test_a_missing_optional_path_is_judged_by_its_parents(root_tmp: Path) -> None:
    assert root_path_problem(str(root_tmp / "state/sub"), DIR, required=False) is None
    (root_tmp / "state").mkdir(mode=0o777)
    (root_tmp / "state").chmod(0o777)
    p = root_path_problem(str(root_tmp / "state/sub"), DIR, required=False)
    assert p is not None and p.component == str(root_tmp / "state") and p.unsafe
    f = root_tmp / "conf"
    f.mkdir()
    p = root_path_problem(str(f), FILE, required=False)
    assert p is not None and p.why == "is not a regular file" and not p.unsafe
    assert root_path_problem("relative/path", DIR) is not None

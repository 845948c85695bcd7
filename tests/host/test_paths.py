"""host.paths on real files: what root may run or trust (root_path_problem; place_problem, the rule install/code.sh
enforces and the CRIU front applies to itself)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import nri_plugin.host.paths
from nri_plugin.host.paths import DIR, EXEC, FILE, place_problem, root_path_problem
from tests.roottmp import root_tmp  # noqa: F401 (fixture)

NOBODY = 65534
PATHS_PY = Path(nri_plugin.host.paths.__file__)


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


def test_place_problem_is_the_same_rule_from_the_deepest_existing_dir(root_tmp: Path) -> None:
    """install/code.sh asks this of --dir/--prefix/--path before creating them: the front's rule, on what exists."""
    assert place_problem(str(root_tmp / "not/yet/made")) is None
    sticky = root_tmp / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert place_problem(str(sticky / "a/b")) == (f"{sticky} is group- or world-writable (mode 1777); fix: "
                                                  f"chmod go-w {sticky}")
    link = root_tmp / "link"
    link.symlink_to(sticky)  # judged through the link too
    assert place_problem(str(link / "a")) == (f"{link} is group- or world-writable (mode 1777); fix: "
                                              f"chmod go-w {link}")
    (root_tmp / "owned").mkdir()
    os.chown(root_tmp / "owned", NOBODY, 0)
    assert place_problem(str(root_tmp / "owned/x")) == (f"{root_tmp / 'owned'} is owned by uid {NOBODY}, not root; "
                                                        f"fix: chown root {root_tmp / 'owned'}")
    # as install/code.sh runs it: the checkout's file, by the system Python, with nothing on its path
    r = subprocess.run(["/usr/bin/python3", "-S", "-E", str(PATHS_PY), str(sticky / "a")], capture_output=True,
                       text=True)
    assert (r.returncode, r.stdout) == (1, f"{place_problem(str(sticky))}\n")
    r = subprocess.run(["/usr/bin/python3", "-S", "-E", str(PATHS_PY), str(root_tmp / "a")], capture_output=True,
                       text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
